"""Every Prometheus metric the monitor exports, in one place, and how a process serves them.

Names follow Prometheus conventions: a ``monitor_`` prefix, ``_total`` on counters, unit suffixes.
The dashboards in ``deploy/grafana`` and the rules in ``deploy/prometheus`` are checked in tests
against ``METRIC_NAMES`` below, so a renamed metric breaks a test, not a dashboard in production.

``monitor worker`` runs each role in a child process; the parent then serves one /metrics for all of
them with prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set for the children
before they import this module). A role started on its own (``python -m stream_jobs --role R``, one
per container) serves its own registry. Gauges therefore declare how they aggregate across processes.
The endpoint also answers the liveness and readiness probes (/livez, /readyz) it is given.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    make_wsgi_app,
)
from prometheus_client import multiprocess

from monitor.config import MetricsSettings
from monitor.errors import ServiceError

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Seconds; batch inference on CPU runs from milliseconds to a few seconds.
_FAST = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A post's age when its row is written: seconds in a live stream, days in a backfill.
_AGE = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0)

# -- counters ------------------------------------------------------------------------------------------
POSTS_CONSUMED = Counter("monitor_posts_consumed_total", "Records read from the posts topic (good and bad)")
PREDICTIONS = Counter("monitor_predictions_total", "Posts classified, by task and predicted label",
                      ["task", "label"])
ESCALATIONS = Counter("monitor_escalations_total", "Predictions sent to the LLM explainer, by task and reason",
                      ["task", "reason"])
EXPLANATIONS = Counter("monitor_explanations_total",
                       "Explainer outcomes by task and verdict (confirm, reject, withheld, unverified, over_budget)",
                       ["task", "verdict"])
UNSUPPORTED = Counter("monitor_explanations_unsupported_total",
                      "Rationales that name a drug, symptom or number the post does not contain, by task", ["task"])
RESTATED = Counter("monitor_explanations_restated_total",
                   "Rationales that are mostly the post's own words quoted back (explainer.support.restates_post), "
                   "by task", ["task"])
FLIPS = Counter("monitor_flips_total", "Labels changed by an explainer verdict, by task", ["task"])
NOT_EXPLAINED = Counter("monitor_not_explained_total",
                        "Escalations kept with the classifier label because the explainer was over budget",
                        ["task", "why"])
PERSISTED = Counter("monitor_rows_persisted_total", "Rows inserted by the persist role, by table", ["table"])
SIGNALS = Counter("monitor_signals_total", "Health signals flagged (final label is a signal label)",
                  ["task", "label"])
DEAD_LETTERS = Counter("monitor_dead_letters_total", "Records sent to the dead-letter topic, by stage and reason",
                       ["stage", "reason"])
ERRORS = Counter("monitor_errors_total", "Errors caught and handled inside a worker, by stage and kind",
                 ["stage", "kind"])
RETRIES = Counter("monitor_retries_total",
                  "Batch retries after a fault, by stage and kind (transient: a service outage or conflict; "
                  "unknown: an unclassified error; systemic: every record of a batch fails alone too)",
                  ["stage", "kind"])
REDELIVERY_CONFLICTS = Counter("monitor_redelivery_conflicts_total",
                               "Redelivered results that disagreed with the stored ones and were dropped "
                               "(the first stored result wins), by stage", ["stage"])

# -- histograms ----------------------------------------------------------------------------------------
INFERENCE_SECONDS = Histogram("monitor_batch_inference_seconds", "Classifier time for one batch, by task",
                              ["task"], buckets=_FAST)
BATCH_SIZE = Histogram("monitor_batch_size_posts", "Posts per classify batch",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024))
LLM_SECONDS = Histogram("monitor_llm_latency_seconds", "Time for one explanation (cache hits included), by task",
                        ["task"], buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0))
DB_WRITE_SECONDS = Histogram("monitor_db_write_seconds", "One persist transaction", buckets=_FAST)
END_TO_END_SECONDS = Histogram("monitor_end_to_end_latency_seconds",
                               "From a post's created_at to its prediction row", buckets=_AGE)
PIPELINE_SECONDS = Histogram("monitor_pipeline_latency_seconds",
                             "From a post's arrival on the posts topic to its prediction row", buckets=_AGE)

# -- gauges --------------------------------------------------------------------------------------------
CONSUMER_LAG = Gauge("monitor_consumer_lag_records", "Records not yet committed by a role's consumer group",
                     ["group", "topic", "partition"], multiprocess_mode="mostrecent")
EXPLAINER_QUEUE = Gauge("monitor_explainer_queue_depth", "Escalations taken by the explain role and not yet done",
                        multiprocess_mode="livesum")
MODEL_INFO = Gauge("monitor_model_info", "Models loaded by a worker (value 1)", ["task", "model_version", "role"],
                   multiprocess_mode="max")
GPU_MEMORY = Gauge("monitor_gpu_memory_bytes", "CUDA memory allocated by the classifier", ["device"],
                   multiprocess_mode="livesum")
LABEL_SHARE = Gauge("monitor_label_share_ratio", "Share of each predicted label over the recent window",
                    ["task", "label"], multiprocess_mode="mostrecent")
LABEL_SHARE_EXPECTED = Gauge("monitor_label_share_expected_ratio",
                             "Share of each label in the model's test split (the drift reference)",
                             ["task", "label"], multiprocess_mode="max")
MEAN_CONFIDENCE = Gauge("monitor_mean_confidence_ratio", "Mean calibrated confidence over the recent window",
                        ["task"], multiprocess_mode="mostrecent")
SIGNAL_ALERT = Gauge("monitor_signal_alert", "1 while the latest bucket of a series is an EARS alert, else 0",
                     ["task", "method", "granularity", "stratum", "series"], multiprocess_mode="mostrecent")
SIGNAL_SCORE = Gauge("monitor_signal_score", "EARS score of the latest bucket (alert when >= threshold)",
                     ["task", "method", "granularity", "stratum", "series"], multiprocess_mode="mostrecent")
SIGNAL_OBSERVED = Gauge("monitor_signal_observed", "Observed value of the latest bucket of a signal series",
                        ["task", "granularity", "stratum", "series"], multiprocess_mode="mostrecent")
SIGNAL_BUCKET = Gauge("monitor_signal_bucket_start_seconds",
                      "Start (Unix time, UTC) of the latest complete bucket of a signal series",
                      ["task", "granularity", "stratum", "series"], multiprocess_mode="mostrecent")
SIGNAL_EXPECTED = Gauge("monitor_signal_expected", "Baseline mean of the latest bucket of a signal series",
                        ["task", "method", "granularity", "stratum", "series"], multiprocess_mode="mostrecent")
FAULT_WAITING = Gauge("monitor_fault_waiting", "1 while a stage waits out a fault with its consumer paused, else 0",
                      ["stage"], multiprocess_mode="livemax")
HEAP_BYTES = Gauge("monitor_heap_bytes",
                   "C heap (glibc malloc) of a role process: in_use by live allocations, free but still resident",
                   ["role", "kind"], multiprocess_mode="liveall")
BUDGET_TOKENS = Gauge("monitor_explainer_budget_tokens", "Explanations the budget allows right now",
                      multiprocess_mode="livesum")

# -- sources: platform streams into the posts topic (``monitor source``, the worker's source role) ------
SOURCE_EVENTS = Counter("monitor_source_events_total",
                        "Platform events read, by source, kind (post, erase, skip, bad) and what they were",
                        ["source", "kind", "what"])
SOURCE_POSTS = Counter("monitor_source_posts_total",
                       "Platform posts by what the filters decided: kept, dropped_language, dropped_keyword, "
                       "dropped_sample, duplicate (sent already)", ["source", "outcome"])
SOURCE_SENT = Counter("monitor_source_records_sent_total",
                      "Records a source sent and the broker acknowledged, by kind (post, erase, bad)", ["kind"])
SOURCE_SEND_FAILURES = Counter("monitor_source_send_failures_total",
                               "Batches a source could not get acknowledged (retried until they are)")
SOURCE_RECONNECTS = Counter("monitor_source_reconnects_total",
                            "Reconnections of a source's stream, by reason (error, closed, stall)", ["source", "reason"])
SOURCE_CONNECTED = Gauge("monitor_source_connected", "1 while a source's stream is connected", ["source"],
                         multiprocess_mode="livemax")
SOURCE_STALLED = Gauge("monitor_source_stalled", "1 from a stall (no message for MONITOR_SOURCE__STALL_S) until "
                       "the next message", ["source"], multiprocess_mode="livemax")
SOURCE_HEALTHY = Gauge("monitor_source_healthy", "1 while a source's stream is connected and has sent a message "
                       "within MONITOR_SOURCE__STALL_S", ["source"], multiprocess_mode="livemax")
SOURCE_LAG = Gauge("monitor_source_lag_seconds", "How far behind the platform a source reads: now minus the time "
                   "of its latest kept post (Jetstream's time_us; Mastodon's created_at)", ["source"],
                   multiprocess_mode="livemax")
SOURCE_POSITION = Gauge("monitor_source_position_seconds", "Platform time of a source's stored position",
                        ["source"], multiprocess_mode="livemax")
SOURCE_PENDING = Gauge("monitor_source_pending_events", "Events read and not yet acknowledged by the broker",
                       ["source"], multiprocess_mode="livesum")
ERASURES = Counter("monitor_erasures_total", "Erasures the persist role applied, by origin (platform, request) "
                   "and outcome (applied: posts removed; unknown: nothing stored; repeat: already honoured)",
                   ["origin", "outcome"])
ERASED_POSTS = Counter("monitor_erased_posts_total", "Posts removed by erasures (removed) or not stored because an "
                       "erasure covered them (refused)", ["when"])

# -- the supervisor's own: ``monitor worker``'s parent process, served beside its children's samples ------
# Registered in no registry here: the parent adds them to the one it serves (``serve(collectors=...)``).
WORKER_RESTARTS = Counter("monitor_worker_restarts_total",
                          "Role processes restarted by monitor worker, by role and reason "
                          "(exited, unresponsive: no heartbeat, not_live: declared itself broken, memory: over its limit)",
                          ["role", "reason"], registry=None)
WORKER_UP = Gauge("monitor_worker_up", "1 while a role process of monitor worker runs, else 0", ["role"],
                  registry=None)
WORKER_READY = Gauge("monitor_worker_ready",
                     "1 while a role process is ready (started, no stage waiting out a fault), else 0", ["role"],
                     registry=None)
WORKER_RSS = Gauge("monitor_worker_rss_bytes", "Resident memory of each role process of monitor worker", ["role"],
                   registry=None)
SUPERVISOR_METRICS = (WORKER_RESTARTS, WORKER_UP, WORKER_READY, WORKER_RSS)

# -- the analyst's console (monitor console) ------------------------------------------------------------
CONSOLE_REVIEWS = Counter("monitor_console_reviews_total",
                          "Reviews stored from the console, by task, kind (label, alert) and outcome (label: "
                          "confirmed or corrected; alert: event or false_alarm)", ["task", "kind", "outcome"])
CONSOLE_SIGN_INS = Counter("monitor_console_sign_ins_total", "Console sign-in attempts, by outcome (ok, refused)",
                           ["outcome"])
CONSOLE_DENIED = Counter("monitor_console_denied_total",
                         "Console requests refused, by reason (unauthenticated, forbidden, csrf)", ["reason"])
CONSOLE_EXPORTED = Counter("monitor_console_reviews_exported_total",
                           "Reviewed posts written to a training file by `monitor reviews export`, by task", ["task"])

_ALL = (POSTS_CONSUMED, PREDICTIONS, ESCALATIONS, EXPLANATIONS, UNSUPPORTED, RESTATED, FLIPS, NOT_EXPLAINED, PERSISTED,
        SIGNALS,
        DEAD_LETTERS, ERRORS, RETRIES, REDELIVERY_CONFLICTS,
        INFERENCE_SECONDS, BATCH_SIZE, LLM_SECONDS, DB_WRITE_SECONDS, END_TO_END_SECONDS,
        PIPELINE_SECONDS, CONSUMER_LAG, EXPLAINER_QUEUE, MODEL_INFO, GPU_MEMORY, LABEL_SHARE, LABEL_SHARE_EXPECTED,
        MEAN_CONFIDENCE, SIGNAL_ALERT, SIGNAL_SCORE, SIGNAL_OBSERVED, SIGNAL_BUCKET, SIGNAL_EXPECTED, FAULT_WAITING, BUDGET_TOKENS,
        HEAP_BYTES, SOURCE_EVENTS, SOURCE_POSTS, SOURCE_SENT, SOURCE_SEND_FAILURES, SOURCE_RECONNECTS,
        SOURCE_CONNECTED, SOURCE_STALLED, SOURCE_HEALTHY, SOURCE_LAG, SOURCE_POSITION, SOURCE_PENDING, ERASURES,
        ERASED_POSTS, CONSOLE_REVIEWS, CONSOLE_SIGN_INS, CONSOLE_DENIED, CONSOLE_EXPORTED, *SUPERVISOR_METRICS)


def _exposed_names(metric) -> set[str]:  # noqa: ANN001
    name = metric._name  # noqa: SLF001 - prometheus-client keeps the base name here
    kind = metric._type  # noqa: SLF001
    if kind == "counter":
        return {f"{name}_total", f"{name}_created"}
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"}
    return {name}


#: Every series name a scrape can show (counters with ``_total``, histograms with their suffixes).
METRIC_NAMES: frozenset[str] = frozenset(n for m in _ALL for n in _exposed_names(m))


#: A probe: healthy or not, and a JSON body saying why (``monitor.health.probe_result``).
Probe = Callable[[], tuple[bool, Mapping[str, Any]]]


def serve(settings: MetricsSettings, *, multiprocess_dir: Path | None = None, collectors: Iterable = (),
          probes: Mapping[str, Probe] | None = None) -> int | None:
    """Serve /metrics and ``probes`` (path -> probe) on ``settings.host:settings.port`` (port 0 = off)
    from a background thread; returns the port served.

    With ``multiprocess_dir`` the endpoint aggregates every process writing there (the parent of
    ``monitor worker``); without, it serves this process's default registry. ``collectors`` are
    added to the registry served. A probe answers 200 or 503 with its JSON body. A port that cannot
    be bound is a ``ServiceError``.
    """
    if settings.port == 0:
        return None
    registry = REGISTRY
    if multiprocess_dir is not None:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(multiprocess_dir))
    for collector in collectors:
        registry.register(collector)
    app = _endpoint(make_wsgi_app(registry), dict(probes or {}))
    try:
        server = make_server(settings.host, settings.port, app, server_class=_server_class(settings.host),
                             handler_class=_QuietHandler)
    except OSError as exc:  # the port is taken, or the address is not this machine's
        raise ServiceError(f"cannot serve metrics on {settings.host}:{settings.port}: {exc}") from exc
    threading.Thread(target=server.serve_forever, name="metrics-endpoint", daemon=True).start()
    return settings.port


def _endpoint(metrics_app: Callable, probes: Mapping[str, Probe]) -> Callable:
    """A WSGI app: the probes at their paths, prometheus-client's exposition everywhere else (as
    ``start_http_server`` did, so a scrape config with another metrics path keeps working)."""

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        probe = probes.get(environ.get("PATH_INFO", ""))
        if probe is None:
            return metrics_app(environ, start_response)
        ok, body = probe()
        data = json.dumps(body).encode()
        start_response("200 OK" if ok else "503 Service Unavailable",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                        ("Cache-Control", "no-store")])
        return [data]

    return app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # a scrape and a probe every few seconds would drown the worker's own log


def _server_class(host: str) -> type[WSGIServer]:
    """A threaded WSGI server of the host's address family (an IPv6 address needs AF_INET6): a slow
    client never holds up a probe."""
    family = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][0] if host else socket.AF_INET

    class Server(ThreadingMixIn, WSGIServer):
        address_family = family
        daemon_threads = True

    return Server


def prepare_multiprocess_dir(folder: Path) -> Path:
    """An empty folder for the children's metric files (stale files from a crashed run would add up)."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def multiprocess_enabled() -> bool:
    """Whether this process writes its samples for a parent to serve (prometheus-client's own variable)."""
    return bool(os.environ.get(MULTIPROC_ENV))


def mark_process_dead(pid: int, folder: Path) -> None:
    """Drop a finished child's live gauges (prometheus-client's multiprocess clean-up)."""
    multiprocess.mark_process_dead(pid, path=str(folder))


# -- recording helpers: one call per pipeline event, so the agents stay short --------------------------

def record_models(models: Iterable, role: str) -> None:  # noqa: ANN001 - runtime.TaskModel (no import cycle)
    for m in models:
        MODEL_INFO.labels(m.task.name, m.card.model_version, role).set(1)
        counts = (m.card.data.get("label_counts") or {}).get("test") or {}
        total = sum(counts.values())
        for label in m.card.labels:
            LABEL_SHARE_EXPECTED.labels(m.task.name, label).set(counts.get(label, 0) / total if total else 0.0)


def record_label_mix(task: str, shares: Mapping[str, float], mean_confidence: float | None) -> None:
    for label, share in shares.items():
        LABEL_SHARE.labels(task, label).set(share)
    if mean_confidence is not None:
        MEAN_CONFIDENCE.labels(task).set(mean_confidence)


def record_gpu_memory(device: str, allocated_bytes: int | None) -> None:
    """What the classifier on ``device`` holds in accelerator memory (nothing to record on a CPU)."""
    if allocated_bytes is not None:
        GPU_MEMORY.labels(device).set(allocated_bytes)


def sample_sum(exposition: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` that carry ``labels``, in a /metrics page's text."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(sample.value for family in text_string_to_metric_families(exposition) for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))
