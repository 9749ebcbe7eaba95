"""CPU inference tuning as data: which weights (float32, bfloat16, int8) and how many threads run a
model fastest on this machine, decided from measured rates and remembered per machine and model.

No torch here: ``monitor.classifier`` measures; this module identifies the CPU, decides, keys and
stores the choice, and judges whether a model may run with int8 weights at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

log = logging.getLogger(__name__)

WeightDtype = Literal["float32", "bfloat16", "int8"]
WEIGHT_DTYPES: tuple[WeightDtype, ...] = ("float32", "bfloat16", "int8")
#: A lower-precision or different-thread choice must beat the baseline by this much, or the baseline
#: (exact fp32, torch's own thread count) stays: two short timings closer than this are noise.
MARGIN = 0.05
#: Entries kept in the cache file (newest last); every retrained model adds one.
CACHE_ENTRIES = 64
INT8_FILE = "cpu_int8.json"
#: int8 weights are allowed when they predict the fp32 label for at least this share of the test
#: split and move the task metric by less than half a point.
MIN_INT8_AGREEMENT = 0.99
MAX_INT8_METRIC_MOVE = 0.005

K = TypeVar("K")


@dataclass(frozen=True)
class CpuIdentity:
    """What a timing depends on: the CPU model, its instruction-set flags, its physical cores."""

    model_name: str
    flags: frozenset[str] = frozenset()
    physical_cores: int | None = None

    @property
    def flags_hash(self) -> str:
        return hashlib.sha256(" ".join(sorted(self.flags)).encode()).hexdigest()[:12]

    def features(self) -> dict[str, bool]:
        """The flags that decide low-precision speed (for logs and benchmarks; never for the choice)."""
        has = self.flags.__contains__
        return {"bf16": has("avx512_bf16") or has("amx_bf16") or has("bf16"),  # "bf16": Arm's name
                "amx": has("amx_bf16") or has("amx_int8") or has("amx_tile"),
                "vnni": has("avx512_vnni") or has("avx_vnni")}


def parse_cpuinfo(text: str) -> CpuIdentity:
    """The first processor's model name and flags, and the number of distinct (package, core) pairs."""
    model = re.search(r"^(?:model name|Model Name|cpu model|Processor)\s*:\s*(.+)$", text, re.MULTILINE)
    flags = re.search(r"^(?:flags|Features)\s*:\s*(.*)$", text, re.MULTILINE)
    cores: set[tuple[str, str]] = set()
    for block in text.split("\n\n"):
        package = re.search(r"^physical id\s*:\s*(\S+)", block, re.MULTILINE)
        core = re.search(r"^core id\s*:\s*(\S+)", block, re.MULTILINE)
        if package and core:
            cores.add((package.group(1), core.group(1)))
    return CpuIdentity(model.group(1).strip() if model else "unknown CPU",
                       frozenset(flags.group(1).split()) if flags else frozenset(), len(cores) or None)


def read_cpu_identity(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuIdentity:
    try:
        return parse_cpuinfo(cpuinfo.read_text(errors="replace"))
    except OSError:
        return CpuIdentity("unknown CPU")


def parse_cgroup_cpu_limit(cpu_max: str) -> int | None:
    """CPUs a cgroup v2 ``cpu.max`` (``"200000 100000"``, or ``"max 100000"``) allows, rounded up."""
    parts = cpu_max.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return max(1, -(-quota // period)) if quota > 0 and period > 0 else None


def thread_candidates(default: int, *, physical_cores: int | None, usable_cpus: int,
                      cgroup_limit: int | None) -> list[int]:
    """Thread counts worth timing, torch's default first: physical cores, every usable CPU, a CPU quota.

    torch starts with one thread per physical core it sees, which oversubscribes a container whose
    quota is smaller than the host, and ignores hyper-threads that sometimes help.
    """
    options = [default, min(physical_cores, usable_cpus) if physical_cores else None, usable_cpus, cgroup_limit]
    chosen: list[int] = []
    for n in options:
        if n and n > 0 and n not in chosen:
            chosen.append(n)
    return chosen


def choose_fastest(rates: Mapping[K, float], *, baseline: K, margin: float = MARGIN) -> K:
    """The fastest key, unless it beats ``baseline`` by less than ``margin`` (then ``baseline``)."""
    if baseline not in rates:
        raise ValueError(f"no rate for the baseline {baseline!r}")
    best = max(rates, key=lambda k: rates[k])
    return best if rates[best] > rates[baseline] * (1 + margin) else baseline


def tuning_key(cpu: CpuIdentity, *, torch_version: str, model_version: str, threads: int,
               candidates: Sequence[str]) -> str:
    """One cache entry per (CPU model and flags, torch, model weights, thread count, dtypes considered).

    Readable on purpose: a person looking at the file can tell which machine and model each line is for.
    """
    return (f"{model_version} | torch {torch_version} | {threads} threads | {','.join(candidates)} | "
            f"{cpu.model_name} | flags {cpu.flags_hash}")


@dataclass(frozen=True)
class Tuning:
    """What ``dtype=auto`` chose on a CPU, the posts/s each option measured, and where it came from."""

    dtype: WeightDtype
    threads: int
    rates: dict[str, float] = field(default_factory=dict)
    thread_rates: dict[str, float] = field(default_factory=dict)
    measured_on: str = ""
    source: Literal["measured", "cache"] = "measured"

    def describe(self) -> str:
        rates = ", ".join(f"{k} {v:,.0f}/s" for k, v in self.rates.items())
        threads = ", ".join(f"{k} threads {v:,.0f}/s" for k, v in self.thread_rates.items())
        return (f"{self.dtype} weights, {self.threads} threads ({self.source}: {rates}"
                + (f"; {threads}" if threads else "") + (f"; on {self.measured_on}" if self.measured_on else "") + ")")


def _entries(path: Path) -> dict[str, dict]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring the tuning cache %s: %s", path, exc)
        return {}
    entries = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        log.warning("ignoring the tuning cache %s: no entries", path)
        return {}
    return entries


def read_entry(path: Path, key: str) -> dict | None:
    """``key``'s entry in a tuning cache file (a JSON object of entries, newest last), or None."""
    entry = _entries(path).get(key)
    return entry if isinstance(entry, dict) else None


def write_entry(path: Path, key: str, entry: dict, *, keep: int = CACHE_ENTRIES) -> Path:
    """Add (or move to the end) ``key``'s entry, keep the newest ``keep``, replace the file atomically."""
    entries = _entries(path)
    entries.pop(key, None)
    entries[key] = entry
    entries = dict(list(entries.items())[-keep:])
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as out:
            json.dump({"format_version": 1, "entries": entries}, out, indent=1)
            out.write("\n")
        os.replace(tmp, path)  # two workers tuning at once: the last complete file wins, never a torn one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_tuning(path: Path, key: str) -> Tuning | None:
    """The cached choice for ``key``, or None (no file, no entry, or an entry that does not parse)."""
    entry = read_entry(path, key)
    if entry is None:
        return None
    try:
        tuning = Tuning(dtype=entry["dtype"], threads=int(entry["threads"]),
                        rates={str(k): float(v) for k, v in entry.get("rates", {}).items()},
                        thread_rates={str(k): float(v) for k, v in entry.get("thread_rates", {}).items()},
                        measured_on=str(entry.get("measured_on", "")), source="cache")
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return tuning if tuning.dtype in WEIGHT_DTYPES and tuning.threads > 0 else None


def write_tuning(path: Path, key: str, tuning: Tuning, *, keep: int = CACHE_ENTRIES) -> Path:
    """``tuning`` as ``key``'s entry (``write_entry``)."""
    return write_entry(path, key, {k: v for k, v in asdict(tuning).items() if k != "source"}, keep=keep)


@dataclass(frozen=True)
class Int8Check:
    """int8 weights against fp32 on a model's held-out rows: label agreement and the task metric."""

    model_version: str
    rows: int
    measured_on: str
    agreement: float
    metric: str
    metric_float32: float
    metric_int8: float
    torch_version: str = ""

    @property
    def metric_move(self) -> float:
        return self.metric_int8 - self.metric_float32

    @property
    def passed(self) -> bool:
        return self.agreement >= MIN_INT8_AGREEMENT and abs(self.metric_move) < MAX_INT8_METRIC_MOVE

    @property
    def why(self) -> str:
        verdict = "int8 allowed" if self.passed else "int8 refused"
        return (f"{verdict}: {self.agreement:.2%} of {self.rows} labels agree (needs >= {MIN_INT8_AGREEMENT:.0%}), "
                f"{self.metric} {self.metric_float32:.4f} -> {self.metric_int8:.4f} "
                f"(moves {self.metric_move:+.4f}, needs < {MAX_INT8_METRIC_MOVE})")

    def as_dict(self) -> dict:
        return {**asdict(self), "metric_move": self.metric_move, "passed": self.passed, "why": self.why}


def label_agreement(a: Sequence[object], b: Sequence[object]) -> float:
    if len(a) != len(b):
        raise ValueError(f"{len(a)} labels against {len(b)}")
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a) if a else 0.0


def write_int8_check(folder: Path, check: Int8Check) -> Path:
    path = folder / INT8_FILE
    path.write_text(json.dumps(check.as_dict(), indent=2) + "\n")
    return path


def int8_allowed(folder: Path, model_version: str) -> tuple[bool, str]:
    """Whether ``folder``'s recorded int8 check passed for these very weights, and why (not)."""
    path = folder / INT8_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return False, f"no {INT8_FILE} (run `monitor models check-int8`)"
    except (OSError, ValueError) as exc:
        return False, f"{path} does not parse: {exc}"
    if not isinstance(data, dict) or data.get("model_version") != model_version:
        return False, f"{INT8_FILE} was measured on other weights than {model_version}"
    try:
        check = Int8Check(**{k: data[k] for k in ("model_version", "rows", "measured_on", "agreement", "metric",
                                                   "metric_float32", "metric_int8")})
    except (KeyError, TypeError) as exc:
        return False, f"{path} is incomplete: {exc}"
    return check.passed, check.why
