"""Throw-away Prometheus and Alertmanager processes on 127.0.0.1, and reading Prometheus's HTTP API.

For tests and local checks of the shipped ``deploy/prometheus`` configuration: each instance gets a
free port, its own config file and data folder under a working directory, and is stopped by its
PID (checked against its config path, so we never signal a process we did not start). Binaries are
Debian's ``prometheus`` and ``prometheus-alertmanager`` packages (``deploy/local/setup.sh``).
"""

from __future__ import annotations

import json
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from monitor.errors import ServiceError
from monitor.services import process

HOST = "127.0.0.1"
PROMETHEUS_BINARIES = ("prometheus",)
# Debian renames the upstream `alertmanager` binary; an upstream tarball on PATH works as well.
ALERTMANAGER_BINARIES = ("prometheus-alertmanager", "alertmanager")
_INSTALL_HINT = "install Debian's prometheus and prometheus-alertmanager packages (bash deploy/local/setup.sh)"


@dataclass(frozen=True)
class RunningService:
    """A started Prometheus or Alertmanager: where it answers, and how to stop it."""

    name: str
    url: str
    port: int
    pid: int
    workdir: Path
    config_file: Path
    log_file: Path

    def stop(self, *, timeout_s: float = 30.0) -> None:
        """SIGTERM (then SIGKILL after ``timeout_s``); harmless when it has already exited."""
        process.terminate(self.pid, str(self.config_file), timeout_s=timeout_s)

    def running(self) -> bool:
        return process.is_alive(self.pid, str(self.config_file))

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_file.exists():
            return ""
        return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> RunningService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def find_binary(candidates: Sequence[str]) -> str:
    """The first of ``candidates`` on PATH (or in /usr/bin); a ``ServiceError`` saying how to install it."""
    for name in candidates:
        found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").is_file() else None)
        if found:
            return found
    raise ServiceError(f"none of {', '.join(candidates)} found: {_INSTALL_HINT}")


def prometheus_config(
    scrape: Mapping[str, Sequence[str]],
    *,
    interval_s: float = 15.0,
    alertmanagers: Sequence[str] = (),
    labels: Mapping[str, str] | None = None,
) -> str:
    """A minimal prometheus.yml: one job per ``scrape`` key with its host:port targets.

    ``labels`` are added to every target (e.g. ``{"role": "all"}`` as in ``deploy/prometheus``).
    JSON is valid YAML, so the text is built with ``json.dumps`` and needs no YAML library.
    """
    interval = _duration(interval_s)
    config: dict = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(targets), "labels": dict(labels or {})}]}
            for job, targets in scrape.items()
        ],
    }
    if alertmanagers:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]}
    return json.dumps(config, indent=2) + "\n"


def start_prometheus(
    config_text: str,
    rules: Sequence[Path],
    workdir: Path,
    *,
    port: int | None = None,
    binary: str | None = None,
    timeout_s: float = 30.0,
) -> RunningService:
    """Start Prometheus with ``config_text`` and the rule files ``rules``; return once /-/ready answers.

    ``rules`` become the config's ``rule_files`` as absolute paths (a config with rule_files of its
    own, whose relative paths would resolve against ``workdir``, is refused when ``rules`` is not
    empty). The config is written to ``workdir/prometheus.yml`` and the TSDB to
    ``workdir/prometheus-data``; with ``port=None`` a free port is picked.
    """
    if rules:
        config_text = _with_rule_files(config_text, rules)
    exe = binary or find_binary(PROMETHEUS_BINARIES)

    def command(config: Path, data: Path, listen: str) -> list[str]:
        return [exe, f"--config.file={config}", f"--storage.tsdb.path={data}", f"--web.listen-address={listen}",
                "--web.enable-lifecycle", "--log.level=info"]

    return _start("prometheus", command, config_text, workdir, port=port, timeout_s=timeout_s)


def start_alertmanager(
    config_text: str,
    workdir: Path,
    *,
    port: int | None = None,
    binary: str | None = None,
    timeout_s: float = 30.0,
) -> RunningService:
    """Start a single Alertmanager (no HA cluster port) with ``config_text``; return once /-/ready answers."""
    exe = binary or find_binary(ALERTMANAGER_BINARIES)

    def command(config: Path, data: Path, listen: str) -> list[str]:
        # An empty cluster address turns gossip off: no second port, no peers to wait for.
        return [exe, f"--config.file={config}", f"--storage.path={data}", f"--web.listen-address={listen}",
                "--cluster.listen-address=", "--log.level=info"]

    return _start("alertmanager", command, config_text, workdir, port=port, timeout_s=timeout_s)


def _start(
    name: str,
    command: Callable[[Path, Path, str], list[str]],
    config_text: str,
    workdir: Path,
    *,
    port: int | None,
    timeout_s: float,
) -> RunningService:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / f"{name}.yml"
    config.write_text(config_text)
    data = workdir / f"{name}-data"
    data.mkdir(exist_ok=True)
    # A port picked here can be taken before the service binds it; only then is a retry worth it.
    attempts = 1 if port is not None else 3
    for attempt in range(attempts):
        chosen = port if port is not None else process.free_port()
        log = workdir / f"{name}.log"
        log.write_text("")
        pid = process.spawn(command(config, data, f"{HOST}:{chosen}"), log, workdir / f"{name}.pid")
        service = RunningService(name, f"http://{HOST}:{chosen}", chosen, pid, workdir, config, log)
        try:
            _wait_ready(service, timeout_s)
            return service
        except ServiceError:
            service.stop(timeout_s=5)
            if attempt + 1 < attempts and "address already in use" in service.log_tail():
                continue
            raise
    raise AssertionError("unreachable")


def _wait_ready(service: RunningService, timeout_s: float) -> None:
    def ready() -> bool:
        if not service.running():
            raise ServiceError(f"{service.name} exited; last log lines:\n{service.log_tail()}")
        with urllib.request.urlopen(f"{service.url}/-/ready", timeout=2) as reply:  # noqa: S310 - our own URL
            return reply.status == 200

    try:
        process.wait_until(ready, timeout_s, f"{service.name} at {service.url}", interval_s=0.1)
    except ServiceError as exc:
        if service.running():
            raise ServiceError(f"{exc}; last log lines:\n{service.log_tail()}") from exc
        raise


# -- the HTTP API ----------------------------------------------------------------------------------

def query_vector(url: str, promql: str, *, timeout_s: float = 5.0) -> list[tuple[dict[str, str], float]]:
    """Evaluate ``promql`` now on the Prometheus at ``url``: (labels, value) per series.

    A scalar result comes back as one entry with no labels.
    """
    address = f"{url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    try:
        with urllib.request.urlopen(address, timeout=timeout_s) as reply:  # noqa: S310
            body = json.load(reply)
    except urllib.error.HTTPError as exc:  # 400/422: a bad expression; the body says why
        body = _json_or_none(exc.read())
        if body is None:
            raise ServiceError(f"Prometheus query {promql!r} failed: HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ServiceError(f"Prometheus at {url} did not answer query {promql!r}: {exc}") from exc
    if body.get("status") != "success":
        raise ServiceError(f"Prometheus query {promql!r} failed: {body.get('errorType')}: {body.get('error')}")
    data = body["data"]
    if data["resultType"] == "scalar":
        return [({}, float(data["result"][1]))]
    if data["resultType"] != "vector":
        raise ServiceError(f"Prometheus query {promql!r} gave a {data['resultType']}, not an instant vector")
    return [(item["metric"], float(item["value"][1])) for item in data["result"]]


def query(url: str, promql: str, *, timeout_s: float = 5.0) -> float | None:
    """The value of ``promql`` now: None when no series matches; an error when several do (aggregate them)."""
    result = query_vector(url, promql, timeout_s=timeout_s)
    if not result:
        return None
    if len(result) > 1:
        raise ServiceError(f"Prometheus query {promql!r} returned {len(result)} series; aggregate it (e.g. sum(...))")
    return result[0][1]


# -- which series a PromQL expression reads ------------------------------------------------------------

# Aggregations, set and binary operators, modifiers and literals: words that are not series names.
_KEYWORDS = frozenset(
    "sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk limit_ratio "
    "by without on ignoring group_left group_right bool and or unless offset atan2 start end inf nan".split()
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\[\[[^\]]*\]\]|\$\w+")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE)
_NAME_MATCHER = re.compile(r"""__name__\s*=\s*("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')""")
_IDENTIFIER = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?")


def promql_metric_names(expr: str) -> set[str]:
    """The series names ``expr`` selects, e.g. ``{"monitor_errors_total"}`` for
    ``sum by (stage) (rate(monitor_errors_total{kind!="x"}[5m]))``.

    Skips function names (a word followed by ``(``), keywords and aggregations, label names and
    values inside ``{}``, label lists of ``by``/``on``/..., durations and Grafana's ``$variables``;
    reads ``{__name__="x"}`` selectors. Meant for checking dashboards and rules against
    ``monitor.telemetry.METRIC_NAMES``, not for validating PromQL (promtool does that).
    """
    names: set[str] = set()
    # __name__ matchers first, while their quoted values are still there.
    for selector in re.findall(r"\{[^{}]*\}", expr):
        for quoted in _NAME_MATCHER.findall(selector):
            names.add(quoted[1:-1])
    text = _GRAFANA_VARIABLE.sub(" ", expr)
    text = _STRING.sub('""', text)
    text = re.sub(r"\{[^{}]*\}", " ", text)      # label matchers
    text = re.sub(r"\[[^\[\]]*\]", " ", text)    # ranges and subqueries: [5m], [1h:1m]
    text = _LABEL_LIST.sub(" ", text)
    for match in _IDENTIFIER.finditer(text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def _duration(seconds: float) -> str:
    return f"{int(seconds * 1000)}ms" if seconds < 1 or seconds != int(seconds) else f"{int(seconds)}s"


def _with_rule_files(config_text: str, rules: Sequence[Path]) -> str:
    """``config_text`` with ``rule_files`` set to the absolute paths of ``rules`` (YAML or JSON text)."""
    missing = [str(r) for r in rules if not Path(r).is_file()]
    if missing:
        raise ServiceError(f"rule files not found: {', '.join(missing)}")
    paths = [str(Path(r).resolve()) for r in rules]
    own = "the Prometheus config has its own rule_files; pass rules=[] or drop them from it"
    if config_text.lstrip().startswith("{"):  # JSON, as prometheus_config() writes it
        config = json.loads(config_text)
        if "rule_files" in config:
            raise ServiceError(own)
        return json.dumps({**config, "rule_files": paths}, indent=2) + "\n"
    if re.search(r"^rule_files\s*:", config_text, flags=re.MULTILINE):
        raise ServiceError(own)
    # Block YAML: a top-level key appended at the end; JSON strings are valid YAML scalars.
    return config_text.rstrip("\n") + "\nrule_files:\n" + "".join(f"  - {json.dumps(p)}\n" for p in paths)


def _json_or_none(raw: bytes) -> dict | None:
    try:
        return json.loads(raw)
    except ValueError:
        return None
