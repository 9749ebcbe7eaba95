"""Alert delivery end to end: a real Prometheus scrapes an endpoint served from this process,
evaluates the SHIPPED rules and sends to a real Alertmanager with the shipped routing, which delivers
the health-signal alert to a webhook and the system alert by email, each to its own receiver.

Only timings are changed for the test copy (1s scrape/evaluation, no `for:` wait, 1s grouping) and
the receivers' addresses point at servers in this process; rule expressions and routes are the ones
in deploy/prometheus.
"""

from __future__ import annotations

import email
import json
import socketserver
import threading
import time
from collections.abc import Iterator
from email import policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from monitor import telemetry
from monitor.errors import ServiceError
from monitor.services import process
from monitor.services.prometheus import (
    HOST,
    prometheus_config,
    query,
    query_vector,
    start_alertmanager,
    start_prometheus,
)

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
# As monitor/signals/detect.py labels a series: series count|weighted, stratum all|source:X|region:C/R.
SPIKE = {"task": "druglib_adverse", "method": "C2", "granularity": "day", "stratum": "source:reddit",
         "series": "count"}


# -- servers in this process ---------------------------------------------------------------------------

class Webhook(ThreadingHTTPServer):
    """Alertmanager's webhook receiver: keeps every JSON payload posted to it."""

    def __init__(self) -> None:
        self.payloads: list[dict] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(handler) -> None:  # noqa: N802, N805 - http.server's naming
                body = handler.rfile.read(int(handler.headers["Content-Length"]))
                self.payloads.append({"path": handler.path, **json.loads(body)})
                handler.send_response(200)
                handler.end_headers()

            def log_message(handler, *args) -> None:  # noqa: N805
                pass

        super().__init__((HOST, 0), Handler)

    def alerts(self) -> list[tuple[dict, dict]]:
        return [(p, a) for p in self.payloads for a in p["alerts"]]


class Mailbox(socketserver.ThreadingTCPServer):
    """Just enough SMTP (no TLS, no auth) for Alertmanager's email receiver; keeps each message."""

    daemon_threads = True

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []

        class Handler(socketserver.StreamRequestHandler):
            def reply(handler, line: str) -> None:  # noqa: N805
                handler.wfile.write(line.encode() + b"\r\n")

            def handle(handler) -> None:  # noqa: N805
                handler.reply("220 test-smtp ready")
                while line := handler.rfile.readline():
                    verb = line[:4].upper()
                    if verb == b"DATA":
                        handler.reply("354 end with <CRLF>.<CRLF>")
                        body = []
                        while (data := handler.rfile.readline()) not in (b".\r\n", b""):
                            body.append(data[1:] if data.startswith(b"..") else data)
                        self.messages.append(email.message_from_bytes(b"".join(body), policy=policy.default))
                        handler.reply("250 queued")
                    elif verb == b"QUIT":
                        handler.reply("221 bye")
                        return
                    else:  # EHLO/HELO, MAIL, RCPT, RSET, NOOP
                        handler.reply("250 ok")

        super().__init__((HOST, 0), Handler)


def serve(server: socketserver.BaseServer) -> Iterator[socketserver.BaseServer]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    yield from serve(Webhook())


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    yield from serve(Mailbox())


def like(metric, registry: CollectorRegistry, kind=Gauge):  # noqa: ANN001
    """A metric with the name and labels of one in monitor.telemetry, in a fresh registry."""
    return kind(metric._name, metric._documentation, metric._labelnames, registry=registry)  # noqa: SLF001


@pytest.fixture
def endpoint() -> Iterator[tuple[str, CollectorRegistry]]:
    """A /metrics endpoint on 127.0.0.1 serving a fresh registry; yields (host:port, registry)."""
    registry = CollectorRegistry()
    server, thread = start_http_server(0, addr=HOST, registry=registry)
    yield f"{HOST}:{server.server_port}", registry
    server.shutdown()
    server.server_close()
    thread.join(5)


# -- test copies of the shipped configuration -------------------------------------------------------------

def fast_routes(route: dict) -> dict:
    """The route tree with 1s grouping waits at every level (matchers and receivers untouched)."""
    fast = {**route, "group_wait": "1s", "group_interval": "1s"}
    if "routes" in route:
        fast["routes"] = [fast_routes(r) for r in route["routes"]]
    return fast


def alertmanager_copy(webhook: Webhook, mailbox: Mailbox) -> str:
    config = yaml.safe_load((DEPLOY / "alertmanager.yml").read_text())
    config["global"]["smtp_smarthost"] = f"{HOST}:{mailbox.server_address[1]}"
    config["route"] = fast_routes(config["route"])
    (public_health,) = [r for r in config["receivers"] if r["name"] == "public-health"]
    public_health["webhook_configs"][0]["url"] = f"http://{HOST}:{webhook.server_address[1]}/health-signal"
    return yaml.safe_dump(config)


def prometheus_copy(targets: dict[str, str], alertmanager_url: str) -> str:
    """The shipped prometheus.yml with 1s intervals, static targets {host:port: role} and our Alertmanager."""
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s", scrape_timeout="1s")
    config.pop("rule_files")  # given to start_prometheus as paths
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "monitor"]
    job.pop("file_sd_configs")
    job["static_configs"] = [{"targets": [t], "labels": {"role": role}} for t, role in targets.items()]
    config["scrape_configs"] = [job]
    config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [alertmanager_url.split("://")[1]]
    return yaml.safe_dump(config)


def without_for(rule_file: Path, out: Path) -> Path:
    """A copy of a shipped rule file with every `for:` removed (expressions untouched)."""
    rules = yaml.safe_load(rule_file.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("for", None)
    out.write_text(yaml.safe_dump(rules))
    return out


# -- tests -------------------------------------------------------------------------------------------

def test_prometheus_scrapes_an_endpoint_and_answers_queries(tmp_path, endpoint):
    target, registry = endpoint
    posts = like(telemetry.POSTS_CONSUMED, registry, Counter)
    posts.inc(42)
    config = prometheus_config({"monitor": [target]}, interval_s=1, labels={"role": "all"})
    with start_prometheus(config, [DEPLOY / "rules" / "recording.yml"], tmp_path / "prom") as prom:
        value = process.wait_until(lambda: query(prom.url, "monitor_posts_consumed_total"), 15,
                                   "Prometheus to scrape the counter")
        assert value == 42
        assert query(prom.url, 'up{job="monitor",role="all"}') == 1
        assert query(prom.url, "monitor_no_such_series") is None
        posts.inc(18)
        process.wait_until(lambda: query(prom.url, "monitor_posts_consumed_total") == 60 or None, 10,
                           "the next scrape")
        # The shipped recording rules run on what was scraped.
        rate = process.wait_until(lambda: query(prom.url, "monitor:posts_consumed:rate5m"), 15,
                                  "the recording rule monitor:posts_consumed:rate5m")
        assert rate > 0
    assert not prom.running()


def test_a_config_prometheus_rejects_fails_at_once_with_its_log(tmp_path):
    started = time.monotonic()
    with pytest.raises(ServiceError, match="prometheus exited.*(?s:.*)no_such_key"):
        start_prometheus("global: {}\nno_such_key: 1\n", [], tmp_path)
    assert time.monotonic() - started < 10


def test_health_signal_goes_to_the_webhook_and_a_system_alert_by_email(tmp_path, endpoint, webhook, mailbox):
    target, registry = endpoint
    labels = SPIKE
    like(telemetry.SIGNAL_ALERT, registry).labels(**labels).set(1)
    like(telemetry.SIGNAL_SCORE, registry).labels(**labels).set(7.8)
    like(telemetry.SIGNAL_EXPECTED, registry).labels(**labels).set(4.25)
    like(telemetry.SIGNAL_OBSERVED, registry).labels(
        **{k: v for k, v in labels.items() if k != "method"}).set(17)
    like(telemetry.SIGNAL_BUCKET, registry).labels(
        **{k: v for k, v in labels.items() if k != "method"}).set(1796083200)  # 2026-12-01T00:00Z
    # A second worker target that answers nothing: MonitorWorkerDown, a system alert.
    dead = f"{HOST}:{process.free_port()}"

    with start_alertmanager(alertmanager_copy(webhook, mailbox), tmp_path / "am") as am:
        rules = [
            DEPLOY / "rules" / "recording.yml",
            DEPLOY / "rules" / "health_signals.yml",  # as shipped: it has no `for:` to shorten
            without_for(DEPLOY / "rules" / "system.yml", tmp_path / "system.yml"),
        ]
        config = prometheus_copy({target: "persist", dead: "explain"}, am.url)
        with start_prometheus(config, rules, tmp_path / "prom") as prom:
            def delivered():
                spikes = [(p, a) for p, a in webhook.alerts() if a["labels"]["alertname"] == "HealthSignalSpike"]
                mails = [m for m in mailbox.messages if "MonitorWorkerDown" in m["Subject"]]
                return (spikes, mails) if spikes and mails else None

            try:
                spikes, mails = process.wait_until(delivered, 60, "both alerts to be delivered", interval_s=0.5)
            except Exception:
                firing = query_vector(prom.url, "ALERTS")
                raise AssertionError(f"Prometheus alerts: {firing}\nwebhook: {webhook.payloads}\n"
                                     f"mails: {[m['Subject'] for m in mailbox.messages]}\n"
                                     f"alertmanager log:\n{am.log_tail()}") from None

    payload, alert = spikes[0]
    assert payload["receiver"] == "public-health" and payload["path"] == "/health-signal"
    assert alert["status"] == "firing"
    assert {k: alert["labels"][k] for k in (*labels, "kind")} == {**labels, "kind": "health_signal"}
    annotations = alert["annotations"]
    assert annotations["task"] == "druglib_adverse"
    assert annotations["observed"] == "17"
    assert annotations["expected"] == "4.25"
    assert annotations["score"] == "7.8"
    assert annotations["evidence"] == "monitor signals --task druglib_adverse --granularity day -v"
    assert annotations["bucket"] == "the day starting 2026-12-01 00:00:00 +0000 UTC (count series, stratum source:reddit)"

    # Never confused: the webhook saw only health signals, the mailbox only system alerts.
    assert {a["labels"]["kind"] for _, a in webhook.alerts()} == {"health_signal"}
    mail = mails[0]
    assert mail["To"] == "oncall@example.org"
    assert "health-monitor system FIRING" in mail["Subject"]
    body = mail.get_body(("html", "plain")).get_content()
    assert "kind = system" in body and "role = explain" in body and f"instance = {dead}" in body
    assert "HealthSignalSpike" not in body
    assert not any("HealthSignalSpike" in m["Subject"] for m in mailbox.messages)
