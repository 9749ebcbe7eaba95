"""Benchmark (not a test): a long unattended run of the whole stack with the operator's faults in turn.

    # 30 minutes (the default), the demo model, about 45 minutes in all with start-up and drain:
    .venv/bin/python tests/benchmarks/soak.py --model ~/.cache/health-monitor/demo/druglib_adverse-*
    # the documented 6-hour soak: one fault every 50 minutes, 10 minutes of warm-up
    .venv/bin/python tests/benchmarks/soak.py --model MODEL_DIR --minutes 360 --warmup 10 \\
        --fault-every 50 --out /var/tmp/soak-6h

Starts its OWN Kafka and PostgreSQL on free ports with their data under --out (never the shared
ones on 9092/9093/55432), fresh topics of 2 partitions, a migrated database, `monitor worker --role all`
(supervised, metrics on a free port) and a second persist worker in a consumer group of its own writing
the same rows. A producer sends --burst tagged posts at once, then posts at --rate (a poison post for the classify
stage every --poison-every seconds); two minutes before warm-up ends, a minute of stored posts and
their records are sent again (persist meets full batches). After --warmup minutes the faults come in turn: PostgreSQL stopped for
--outage-s, the broker stopped ~10 s, kill -9 of the classify, explain and persist processes, and a
forced redelivery (posts and prediction records sent again). Every 5 s it samples RSS per process,
consumer lag per group, retries, dead letters, restarts and readiness. Then it stops producing, waits
for the drain and checks every row. Writes report.json, soak.png and the logs to --out; exits 1 when a
goal fails: 0 lost, 0 duplicated, 0 contradictory rows, each poison post dead-lettered exactly once,
RSS growth < 5% after warm-up, lag back to its steady level within 60 s of each fault clearing.
The caller's MONITOR_* variables are ignored: every setting of the run is the script's own.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

SAMPLE_S = 5.0
RSS_GOAL = 0.05
RECOVERY_GOAL_S = 60.0
QUIET_S = 60.0  # drain: every lag at 0 and no new row this long = nothing more will come
SHARED_PORTS = {9092, 9093, 9108, 55432}  # the default services and metrics: never ours
SOURCE = "soak"
ROLES = ("classify", "explain", "persist")
#: Input topics (TopicSettings fields) of each consumer group we watch; "persist-2" is the second worker.
GROUP_INPUTS = {"classify": ("posts",), "explain": ("escalations",), "persist": ("predictions", "explanations"),
                "persist-2": ("predictions", "explanations")}
#: "supervisor-2" is the second `monitor worker --role persist`, "persist-2" its role process.
PROCESSES = ("supervisor", *ROLES, "supervisor-2", "persist-2")
FAULTS = ("postgres_outage", "broker_restart", "kill_classify", "kill_explain", "kill_persist", "redelivery")


class Aborted(RuntimeError):
    """The stack broke in a way the soak cannot go on from (the supervisor itself died)."""


# -- small readers: HTTP, /proc, PostgreSQL ------------------------------------------------------------

def scrape(url: str) -> list[tuple[str, dict, float]] | None:
    """(sample name, labels, value) of every sample on a /metrics page; None when it does not answer."""
    from prometheus_client.parser import text_string_to_metric_families

    from monitor.services.process import http_get

    code, text = http_get(url, timeout_s=3)
    if code != 200:
        return None
    return [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]


def sum_by(samples: list | None, name: str, *keys: str) -> dict[str, float]:
    """Values of ``name`` added up per combination of the ``keys`` labels ("a/b")."""
    totals: dict[str, float] = {}
    for sample, labels, value in samples or ():
        if sample == name:
            key = "/".join(labels.get(k, "") for k in keys) or name
            totals[key] = totals.get(key, 0.0) + value
    return totals


def heap_in_use_mb(samples: list | None, pids: dict[str, int | None], rename: dict[str, str]) -> dict[str, float]:
    """process -> MB of C heap in live allocations, from ``monitor_heap_bytes`` of the process now running."""
    found = {}
    for sample, labels, value in samples or ():
        if sample == "monitor_heap_bytes" and labels.get("kind") == "in_use":
            proc = rename.get(labels.get("role", ""), labels.get("role", ""))
            if str(pids.get(proc)) == labels.get("pid"):
                found[proc] = value / 2**20
    return found


def rss_mb(pid: int | None) -> float | None:
    from monitor.services.process import resident_bytes

    rss = resident_bytes(pid) if pid else None
    return None if rss is None else rss / 2**20


def role_children(supervisor: int) -> dict[str, int]:
    """role -> pid of the supervisor's children, read from /proc (parent pid and the --role argument)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == supervisor and b"--role" in argv[:-1]:
            found[argv[argv.index(b"--role") + 1].decode()] = int(entry.name)
    return found


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical CPUs)"
    return f"unknown ({os.cpu_count()} logical CPUs)"


class Database:
    """The soak's own reads of PostgreSQL, over short-lived psycopg connections (None while it is down)."""

    def __init__(self, url: str):
        self.url = url.replace("postgresql+psycopg://", "postgresql://", 1)
        self.name = self.url.rsplit("/", 1)[1]

    def query(self, sql: str, params: tuple = ()) -> list[tuple] | None:
        import psycopg

        try:
            with psycopg.connect(self.url, connect_timeout=3) as conn:
                return conn.execute(sql, params).fetchall()
        except psycopg.Error:
            return None

    def connections(self) -> int | None:
        rows = self.query("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                          (self.name,))
        return rows[0][0] if rows else None

    def progress(self) -> tuple[int, int, int] | None:
        """(predictions, escalated predictions, explanations) of the soak's posts."""
        rows = self.query(
            "SELECT (SELECT count(*) FROM predictions r JOIN posts p ON p.id = r.post_id WHERE p.source = %s),"
            " (SELECT count(*) FROM predictions r JOIN posts p ON p.id = r.post_id"
            "  WHERE p.source = %s AND r.escalated),"
            " (SELECT count(*) FROM explanations e JOIN posts p ON p.id = e.post_id WHERE p.source = %s)",
            (SOURCE, SOURCE, SOURCE))
        return tuple(rows[0]) if rows else None


# -- the feed ------------------------------------------------------------------------------------------

class Feed(threading.Thread):
    """Posts at a steady rate with unique ids; every id acknowledged by the broker is remembered."""

    def __init__(self, kafka, topic: str, texts: list[str], rate: float, poison_every_s: float,  # noqa: ANN001
                 burst: int = 0):
        super().__init__(name="feed", daemon=True)
        self.kafka, self.topic, self.texts, self.rate, self.poison_every_s = kafka, topic, texts, rate, poison_every_s
        self.burst = burst  # the first posts go out at once: every role meets its largest batches in warm-up
        self.stop = threading.Event()
        self.acked: set[str] = set()
        self.poison: set[str] = set()
        self.poison_sent: dict[str, float] = {}  # id -> when it was sent (Unix seconds)
        self.sent = 0
        self.failed: deque[tuple[str, bytes]] = deque()  # given up by the producer: sent again
        self.resent = 0
        self.recent: deque[tuple[str, bytes, float]] = deque(maxlen=max(2000, int(rate * 300)))

    def run(self) -> None:
        from kafka import KafkaProducer

        from monitor.feed import RateLimiter
        from monitor.records import Post, encode_post

        producer = KafkaProducer(bootstrap_servers=self.kafka.bootstrap_servers, acks="all", linger_ms=20,
                                 delivery_timeout_ms=600_000, max_block_ms=30_000)
        limiter, started, i = RateLimiter(self.rate), time.monotonic(), 0
        next_poison = self.poison_every_s / 2
        try:
            while not self.stop.is_set():
                if i >= self.burst:
                    limiter.wait()
                if self.failed:
                    post_id, value = self.failed.popleft()
                    self.resent += 1
                else:
                    poison = time.monotonic() - started >= next_poison
                    post_id = f"{SOURCE}-{'POISON-' if poison else ''}{i:08d}"
                    if poison:
                        self.poison.add(post_id)
                        self.poison_sent[post_id] = time.time()
                        next_poison += self.poison_every_s
                    post = Post(id=post_id, text=self.texts[i % len(self.texts)], source=SOURCE,
                                created_at=datetime.now(UTC))
                    value, i = encode_post(post), i + 1
                    self.recent.append((post_id, value, time.time()))
                    self.sent += 1
                self._send(producer, post_id, value)
            producer.flush(timeout=600)
        finally:
            producer.close(timeout=30)

    def _send(self, producer, post_id: str, value: bytes) -> None:  # noqa: ANN001
        from kafka.errors import KafkaError

        try:
            future = producer.send(self.topic, key=post_id.encode(), value=value)
        except KafkaError:  # no metadata within max_block_ms: the broker is down; try the post again
            self.failed.append((post_id, value))
            return
        future.add_callback(lambda _meta: self.acked.add(post_id))
        future.add_errback(lambda _exc: self.failed.append((post_id, value)))


# -- sampling ------------------------------------------------------------------------------------------

class LagMeter(threading.Thread):
    """Consumer lag of every group, measured in a thread of its own (a call may block while the broker
    restarts); the latest result carries the time it was measured."""

    def __init__(self, kafka, topics, groups: dict[str, str]):  # noqa: ANN001
        super().__init__(name="lag", daemon=True)
        self.kafka = kafka.model_copy(update={"request_timeout_s": 5.0})
        self.topics, self.groups = topics, groups
        self.stop = threading.Event()
        self.latest: tuple[float, dict[str, int | None]] = (0.0, dict.fromkeys(groups))

    def measure(self) -> dict[str, int | None]:
        from monitor.kafka import broker
        from monitor.errors import MonitorError

        lags: dict[str, int | None] = {}
        for name, group in self.groups.items():
            inputs = [getattr(self.topics, t) for t in GROUP_INPUTS[name]]
            try:
                lags[name] = sum(broker.group_lag(self.kafka, group, inputs).values())
            except (MonitorError, OSError):
                lags[name] = None
        return lags

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.time()
            self.latest = (started, self.measure())
            self.stop.wait(max(0.0, SAMPLE_S - (time.time() - started)))


@dataclass
class Fault:
    name: str
    scheduled_s: float
    start_s: float | None = None
    end_s: float | None = None
    detail: str = ""
    ready_after_s: float | None = None
    steady_after_s: float | None = None
    overlapped: bool = False


@dataclass
class Soak:
    """Everything the threads share: the processes, the timeline, the faults."""

    t0: float
    supervisor: subprocess.Popen
    second: subprocess.Popen
    start_second: object  # () -> Popen: a new second persist worker
    urls: dict[str, str]
    db: Database
    feed: Feed
    lag: LagMeter
    timeline: list[dict] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    current: str | None = None
    stopping: threading.Event = field(default_factory=threading.Event)

    def now(self) -> float:
        return time.time() - self.t0

    def sample(self) -> dict:
        if self.supervisor.poll() is not None:
            raise Aborted(f"monitor worker exited with code {self.supervisor.returncode}")
        if self.second.poll() is not None:  # its own supervisor died: start it again, and say so
            self.events.append(f"{self.now():.0f}s: second persist worker exited ({self.second.returncode}); "
                               "started again")
            self.second = self.start_second()
        pids = {"supervisor": self.supervisor.pid, **role_children(self.supervisor.pid),
                "supervisor-2": self.second.pid, "persist-2": role_children(self.second.pid).get("persist")}
        metrics, second_metrics = scrape(self.urls["metrics"]), scrape(self.urls["metrics-2"])
        from monitor.services import process

        code, body = process.http_get(self.urls["readyz"], timeout_s=3)
        roles = json.loads(body).get("roles", {}) if body.startswith("{") else {}
        ready = {r: roles.get(r, {}).get("status") == "ready" for r in ROLES}
        ready["persist-2"] = process.http_get(self.urls["readyz-2"], timeout_s=3)[0] == 200
        lag_t, lags = self.lag.latest
        progress = self.db.progress()
        retries = sum_by(metrics, "monitor_retries_total", "stage", "kind")
        for key, value in sum_by(second_metrics, "monitor_retries_total", "stage", "kind").items():
            retries[f"{key} (persist-2)"] = value
        return {"t": round(self.now(), 1), "lag_t": round(lag_t - self.t0, 1), "lag": lags,
                "pids": pids, "rss_mb": {p: rss_mb(pid) for p, pid in pids.items()},
                "heap_mb": heap_in_use_mb(metrics, pids, {}) | heap_in_use_mb(second_metrics, pids,
                                                                             {"persist": "persist-2"}),
                "ready": ready, "all_ready": code == 200 and ready["persist-2"],
                "retries": retries,
                "dead_letters": sum(sum_by(metrics, "monitor_dead_letters_total").values()),
                "restarts": sum_by(metrics, "monitor_worker_restarts_total", "role")
                | {f"{k} (2nd)": v for k, v in sum_by(second_metrics, "monitor_worker_restarts_total", "role").items()},
                "produced": len(self.feed.acked), "stored": progress[0] if progress else None,
                "pg_connections": self.db.connections(), "fault": self.current}

    def run_sampler(self) -> None:
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                self.timeline.append(self.sample())
            except Aborted as exc:
                self.events.append(f"ABORT: {exc}")
                self.stopping.set()
                return
            except Exception:  # noqa: BLE001 - one bad sample must not end the sampling
                logging.getLogger("soak").exception("sample failed")
            self.stopping.wait(max(0.0, SAMPLE_S - (time.monotonic() - started)))

    def status_line(self):  # noqa: ANN201 - a rich Text
        from rich.text import Text

        last = self.timeline[-1] if self.timeline else {}
        lag = " ".join(f"{g}={'-' if v is None else v}" for g, v in (last.get("lag") or {}).items())
        rss = " ".join(f"{p}={v:.0f}" for p, v in (last.get("rss_mb") or {}).items() if v)
        elapsed = self.now()
        return Text(f"{int(elapsed // 60):02d}:{int(elapsed % 60):02d}  produced {len(self.feed.acked):,}  "
                    f"stored {last.get('stored', '-')}  lag {lag}  RSS MB {rss}  fault: {self.current or '-'}")

    def __rich__(self):  # noqa: ANN204 - rich's live display calls this at each refresh
        return self.status_line()


# -- the faults ----------------------------------------------------------------------------------------

def kill_role(soak: Soak, role: str) -> str:
    deadline = time.monotonic() + 120
    while (pid := role_children(soak.supervisor.pid).get(role)) is None:  # it may be restarting still
        if time.monotonic() > deadline:
            raise Aborted(f"no {role} process to kill")
        time.sleep(1)
    os.kill(pid, signal.SIGKILL)
    return f"SIGKILL to pid {pid}"


def redeliver(soak: Soak, settings) -> str:  # noqa: ANN001
    """Send again the latest posts already stored (up to a minute of them; same ids, same bytes, in
    reverse order) and the prediction and explanation records already consumed for them."""
    from kafka import KafkaProducer

    from monitor.kafka import broker

    now = time.time()
    sent = [(pid, value, at) for pid, value, at in list(soak.feed.recent) if pid not in soak.feed.poison]
    stored = {row[0] for row in soak.db.query(
        "SELECT p.source_id FROM posts p JOIN predictions r ON r.post_id = p.id"
        " WHERE p.source = %s AND p.source_id = ANY(%s)", (SOURCE, [pid for pid, _, _ in sent])) or ()}
    window = [item for item in sent if item[0] in stored][-max(100, int(soak.feed.rate * 60)):]
    posts = [(pid, value) for pid, value, _ in window][::-1]
    keys = {pid.encode() for pid, _ in posts}
    start_ms = int((window[0][2] - 5) * 1000) if window else int(now * 1000)
    records = [(topic, r.key, r.value) for topic in (settings.topics.predictions, settings.topics.explanations)
               for r in broker.records_between(settings.kafka, topic, start_ms, int(now * 1000)) if r.key in keys]
    random.Random(7).shuffle(records)
    producer = KafkaProducer(bootstrap_servers=settings.kafka.bootstrap_servers, acks="all", linger_ms=20)
    try:
        for pid, value in posts:
            producer.send(settings.topics.posts, key=pid.encode(), value=value)
        for topic, key, value in records:
            producer.send(topic, key=key, value=value)
        producer.flush(timeout=120)
    finally:
        producer.close(timeout=30)
    explained = sum(1 for topic, _, _ in records if topic == settings.topics.explanations)
    return (f"{len(posts)} stored posts, {len(records) - explained} prediction and {explained} explanation "
            "records sent again")


def run_fault(soak: Soak, fault: Fault, settings, args) -> None:  # noqa: ANN001
    from monitor.services import local

    soak.current, fault.start_s = fault.name, soak.now()
    try:
        if fault.name == "postgres_outage":
            local.down(settings, ["postgres"])
            time.sleep(args.outage_s)
            local.up(settings, ["postgres"])
            fault.detail = f"PostgreSQL stopped for {args.outage_s:.0f}s"
        elif fault.name == "broker_restart":
            local.down(settings, ["kafka"])
            time.sleep(10)
            local.up(settings, ["kafka"])  # the same log directory: topics and offsets survive
            fault.detail = "broker stopped 10s, started again on the same log directory"
        elif fault.name.startswith("kill_"):
            fault.detail = kill_role(soak, fault.name.removeprefix("kill_"))
        else:
            fault.detail = redeliver(soak, settings)
    finally:
        fault.end_s = soak.now()
        soak.current = None


# -- the verdict ---------------------------------------------------------------------------------------

def settle_times(timeline: list[dict], faults: list[Fault], thresholds: dict[str, float]) -> None:
    """For each fault: seconds from its end until every process is ready again, and until every group's
    lag (measured after the fault ended) is back to its steady level."""
    for fault in faults:
        if fault.end_s is None:
            continue
        after = [s for s in timeline if s["t"] > fault.end_s + 1]
        ready = next((s for s in after if s["all_ready"]), None)
        fault.ready_after_s = round(ready["t"] - fault.end_s, 1) if ready else None
        steady = next((s for s in after if s["all_ready"] and s["lag_t"] > fault.end_s + 1
                       and all(v is not None and v <= thresholds[g] for g, v in s["lag"].items())), None)
        fault.steady_after_s = round(steady["lag_t"] - fault.end_s, 1) if steady else None
        later = [f.start_s for f in faults if f.start_s is not None and f.start_s > fault.start_s]
        fault.overlapped = bool(later) and (steady is None or min(later) < steady["lag_t"])


def steady_levels(timeline: list[dict], since: float, until: float, rate: float) -> dict[str, float]:
    """Each group's highest lag in the quiet stretch between warm-up and the first fault: with posts
    arriving all the time, committed offsets trail the end by the last few seconds' records, so a
    group in steady state is never at exactly 0 (only the final drain is)."""
    quiet = [s for s in timeline if since <= s["lag_t"] < until]
    levels = {}
    for group in GROUP_INPUTS:
        seen = [s["lag"][group] for s in quiet if s["lag"].get(group) is not None]
        levels[group] = float(max(seen)) if seen else rate * SAMPLE_S
        levels[group] = max(levels[group], 1.0)
    return levels


def falling_behind(timeline: list[dict], since: float, until: float, rate: float) -> list[str]:
    """Groups whose lag grew by more than 30 s of posts in the quiet stretch: the stack does not keep
    up with --rate there, and their "steady level" is no steady state."""
    quiet = [s for s in timeline if since <= s["lag_t"] < until]
    found = []
    for group in GROUP_INPUTS:
        seen = [s["lag"][group] for s in quiet if s["lag"].get(group) is not None]
        if len(seen) > 1 and seen[-1] - seen[0] > rate * 30:
            found.append(f"group {group}: lag grew from {seen[0]} to {seen[-1]} between warm-up and the first fault; "
                         f"the stack does not keep up with {rate:g} posts/s, so its recovery times mean little")
    return found


def memory_growth(timeline: list[dict], warmup_s: float, *, window_s: float = 180.0) -> dict[str, dict]:
    """Per process: RSS at start, after warm-up and at end, and its growth after warm-up.

    Rule: a role that was killed has several incarnations (pids). Each incarnation gets its own
    warm-up: ``--warmup`` from the first sample where it is ready (its models loaded); the growth
    reported is that of the incarnation that ran longest after its own warm-up: the median RSS of its
    last ``window_s`` seconds against the median of its first ``window_s`` seconds past warm-up
    (a classify process swings by tens of MB from batch to batch; single samples would measure the
    swing, not a trend). The warm-up starts with a burst of posts and, two minutes before it ends,
    sends a minute of stored posts and their records again, so every role has handled its largest
    batches before it is measured: the working set of a batch system includes its biggest batch."""
    report = {}
    for proc in PROCESSES:
        runs: dict[int, list[tuple[float, float, float | None]]] = {}
        ready_at: dict[int, float] = {}
        for s in timeline:
            pid, mb = s["pids"].get(proc), s["rss_mb"].get(proc)
            if pid is None or mb is None:
                continue
            runs.setdefault(pid, []).append((s["t"], mb, s.get("heap_mb", {}).get(proc)))
            if pid not in ready_at and s["ready"].get(proc, True):  # a supervisor is ready when it runs
                ready_at[pid] = s["t"]
        if not runs:
            continue
        best, best_span = None, 0.0
        for pid, points in runs.items():
            settled = [p for p in points if pid in ready_at and p[0] >= ready_at[pid] + warmup_s]
            if settled and settled[-1][0] - settled[0][0] > best_span:
                best, best_span = (pid, settled), settled[-1][0] - settled[0][0]
        ordered = sorted(runs.values(), key=lambda points: points[0][0])
        entry = {"incarnations": len(runs), "start_mb": ordered[0][0][1], "end_mb": ordered[-1][-1][1],
                 "after_warmup_mb": None, "last_window_mb": None, "growth": None, "measured_pid": None,
                 "measured_s": 0.0, "heap_in_use_mb": None}
        if best is not None:
            pid, settled = best
            first = [p for p in settled if p[0] <= settled[0][0] + window_s]
            last = [p for p in settled if p[0] >= settled[-1][0] - window_s]
            before, after = statistics.median(p[1] for p in first), statistics.median(p[1] for p in last)
            entry.update(after_warmup_mb=round(before, 1), last_window_mb=round(after, 1),
                         growth=(after - before) / before, measured_pid=pid, measured_s=round(best_span, 1))
            heap_first, heap_last = [p[2] for p in first if p[2] is not None], [p[2] for p in last if p[2] is not None]
            if heap_first and heap_last:  # a leak in C code grows this; a burst only the free heap
                entry["heap_in_use_mb"] = [round(statistics.median(heap_first), 1),
                                           round(statistics.median(heap_last), 1)]
        report[proc] = entry
    return report


def check_rows(db: Database, feed: Feed, signal_labels: set[str]) -> dict:
    """Lost, duplicated and contradictory rows of the soak's posts (the rule of test_faults' _assert_exact)."""
    from sqlalchemy import UniqueConstraint

    from monitor.storage import tables

    join = "JOIN posts p ON p.id = {0}.post_id WHERE p.source = %s"
    ids = {r[0] for r in db.query("SELECT source_id FROM posts p WHERE p.source = %s", (SOURCE,))}
    predictions = db.query(f"SELECT p.source_id, r.label, r.escalated FROM predictions r {join.format('r')}", (SOURCE,))
    explanations = db.query(f"SELECT p.source_id, e.final_label FROM explanations e {join.format('e')}", (SOURCE,))
    signals = db.query(f"SELECT p.source_id, s.label, s.decided_by FROM signals s {join.format('s')}", (SOURCE,))
    duplicated = {}
    for table in (tables.Post, tables.Prediction, tables.Explanation, tables.Signal):
        key = next(c for c in table.__table__.constraints if isinstance(c, UniqueConstraint)).columns.keys()
        rows, distinct = db.query(f"SELECT count(*), count(DISTINCT ({', '.join(key)})) "  # noqa: S608 - our names
                                  f"FROM {table.__tablename__}")[0]
        duplicated[table.__tablename__] = rows - distinct
    by_post = {pid: (label, escalated) for pid, label, escalated in predictions}
    final = {pid: label for pid, label in explanations}
    flagged = {pid: (label, by) for pid, label, by in signals}
    duplicated["predictions per post"] = len(predictions) - len(by_post)
    duplicated["explanations per post"] = len(explanations) - len(final)
    duplicated["signals per post"] = len(signals) - len(flagged)
    expected = feed.acked - feed.poison
    contradictions = sorted(pid for pid in final if not by_post.get(pid, (None, False))[1])  # explained, not escalated
    missing_explanations = sorted(pid for pid, (_, escalated) in by_post.items() if escalated and pid not in final)
    for pid, (label, escalated) in by_post.items():
        decided = final.get(pid, label) if escalated else label
        want = (decided, "classifier" if decided == label else "llm") if decided in signal_labels else None
        if pid not in missing_explanations and flagged.get(pid) != want:
            contradictions.append(pid)
    return {"expected_posts": len(expected), "poison_posts": len(feed.poison),
            "lost_posts": sorted(expected - ids), "lost_predictions": sorted(expected - set(by_post)),
            "missing_explanations": missing_explanations, "poison_stored": sorted(feed.poison & ids),
            "unknown_posts": sorted(ids - feed.acked), "duplicated": duplicated,
            "contradictions": sorted(set(contradictions)), "escalated": sum(e for _, e in by_post.values()),
            "signals": len(flagged)}


def locate_lost(settings, lost: list[str], t0: float) -> list[dict]:  # noqa: ANN001
    """Where the first lost posts are on the posts topic (partition, offset, seconds into the run), to
    set them beside the faults and the poison posts."""
    from monitor.kafka import broker

    wanted = {pid.encode() for pid in lost[:100]}
    if not wanted:
        return []
    return [{"id": r.key.decode(), "partition": r.partition, "offset": r.offset,
             "t": round(r.timestamp_ms / 1000 - t0, 1)}
            for r in broker.records_between(settings.kafka, settings.topics.posts, int(t0 * 1000) - 60_000, 2**62)
            if r.key in wanted]


def check_dead_letters(settings, feed: Feed) -> dict:  # noqa: ANN001
    from monitor.kafka import broker
    from monitor.records import DeadLetter

    letters = [DeadLetter.from_bytes(r.value)
               for r in broker.records_between(settings.kafka, settings.topics.dead_letter, 0, 2**62)]
    per_key: dict[str, int] = {}
    for letter in letters:
        key = (letter.key or b"").decode(errors="replace")
        per_key[key] = per_key.get(key, 0) + 1
    return {"total": len(letters), "expected": len(feed.poison),
            "poison_once": sum(1 for p in feed.poison if per_key.get(p) == 1),
            "poison_missing": sorted(p for p in feed.poison if p not in per_key),
            "poison_repeated": {p: n for p, n in per_key.items() if p in feed.poison and n > 1},
            "unexpected": {k: n for k, n in per_key.items() if k not in feed.poison},
            "stages": sorted({f"{d.stage}/{d.reason}" for d in letters})}


# -- the plot ------------------------------------------------------------------------------------------

def plot(path: Path, timeline: list[dict], faults: list[Fault], warmup_s: float, drain_s: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(13, 7.5), constrained_layout=True)
    minutes = [s["t"] / 60 for s in timeline]
    for proc in PROCESSES:
        top.plot(minutes, [s["rss_mb"].get(proc) or float("nan") for s in timeline], label=proc, lw=1.4)
    for group in GROUP_INPUTS:
        bottom.plot([s["lag_t"] / 60 for s in timeline],
                    [float("nan") if s["lag"].get(group) is None else s["lag"][group] for s in timeline],
                    label=f"group {group}", lw=1.4)
    top.set_ylabel("RSS per process (MB)")
    top.set_ylim(bottom=0)
    bottom.set_ylabel("consumer lag (records, symlog)")
    bottom.set_yscale("symlog", linthresh=10)
    bottom.set_ylim(bottom=0)
    bottom.set_xlabel("minutes since the stack was ready")
    for ax in (top, bottom):
        ax.axvline(warmup_s / 60, color="grey", ls="--", lw=1)
        ax.axvline(drain_s / 60, color="black", ls=":", lw=1)
        for fault in faults:
            if fault.start_s is None:
                continue
            right = fault.end_s + (fault.ready_after_s or 0) if fault.name.startswith("kill_") else fault.end_s
            ax.axvspan(fault.start_s / 60, max(right, fault.start_s + 3) / 60, color="tab:red", alpha=0.15)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1), fontsize=8)
    for number, fault in enumerate(faults, 1):
        if fault.start_s is not None:
            top.text(fault.start_s / 60, 1.01, str(number), va="bottom", ha="left", fontsize=9, color="tab:red",
                     fontweight="bold", transform=top.get_xaxis_transform())
    for at, text in ((warmup_s, "warm-up ends"), (drain_s, "producing stops, drain")):
        bottom.text(at / 60, 0.98, f" {text}", rotation=90, va="top", fontsize=8,
                    transform=bottom.get_xaxis_transform())
    names = "  ".join(f"{n} {f.name.replace('_', ' ')}" for n, f in enumerate(faults, 1) if f.start_s is not None)
    top.set_title(f"soak: memory and consumer lag; faults shaded (a kill until every process is ready again)\n"
                  f"faults: {names}", pad=16, fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- set-up and main -----------------------------------------------------------------------------------

def ports(count: int) -> list[int]:
    """Free ports below the kernel's ephemeral range: a service restarted mid-run must find its port
    free, and a client socket could take an ephemeral one while the service is down."""
    import socket

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng, chosen = random.Random(), []
    while len(chosen) < count:
        port = rng.randrange(20000, min(low, 32768))
        if port in SHARED_PORTS or port in chosen:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        chosen.append(port)
    return chosen


def postgres_home(out: Path, port: int) -> tuple[Path, str]:
    """The cluster folder under --out. As root the cluster runs as the postgres user, who must be able
    to reach it: --out is opened to others (0755); a parent that is closed sends it to /var/lib."""
    home = out / "postgres"
    if os.geteuid() != 0:
        return home, ""
    out.chmod(0o755)
    closed = [p for p in out.parents if p.stat().st_mode & 0o001 == 0]
    if closed:
        home = Path("/var/lib/health-monitor") / f"soak-pg-{port}"
        return home, f"PostgreSQL cluster in {home} ({closed[0]} is closed to the postgres user)"
    return home, ""


def build_settings(args, out: Path):  # noqa: ANN001, ANN201
    from monitor.config import DatabaseSettings, KafkaSettings, MetricsSettings, ServicesSettings, Settings

    kafka_port, controller, pg_port, metrics, metrics2 = ports(5)
    pg_home, note = postgres_home(out, pg_port)
    url = f"postgresql+psycopg://monitor:monitor@127.0.0.1:{pg_port}/monitor"
    settings = Settings(
        _env_file=None, data_dir=out / "data",
        kafka=KafkaSettings(bootstrap_servers=f"127.0.0.1:{kafka_port}", partitions=2),
        database=DatabaseSettings(url=url), metrics=MetricsSettings(port=metrics, lag_interval_s=SAMPLE_S),
        services=ServicesSettings(kafka_controller_port=controller, postgres_url=url, postgres_data_dir=pg_home,
                                  manage_kafka=True, manage_postgres=True))
    env = dict(os.environ)  # main() has dropped the caller's MONITOR_* variables: the soak is hermetic
    env.update({
        "HF_HUB_OFFLINE": "1", "MONITOR_DATA_DIR": str(settings.data_dir),
        "MONITOR_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers, "MONITOR_KAFKA__PARTITIONS": "2",
        "MONITOR_SERVICES__KAFKA_CONTROLLER_PORT": str(controller), "MONITOR_SERVICES__POSTGRES_URL": url,
        "MONITOR_SERVICES__POSTGRES_DATA_DIR": str(pg_home), "MONITOR_DATABASE__URL": url,
        "MONITOR_CLASSIFIER__MODELS": json.dumps([str(args.model)]), "MONITOR_STREAM__APP_ID": f"soak-{args.tag}",
        "MONITOR_METRICS__PORT": str(metrics), "MONITOR_METRICS__LAG_INTERVAL_S": str(SAMPLE_S),
        "MONITOR_FAULTS__POISON_STAGE": "classify", "MONITOR_FAULTS__POISON_MARKER": "POISON",
    })
    second_env = {**env, "MONITOR_STREAM__APP_ID": f"soak-{args.tag}-second", "MONITOR_METRICS__PORT": str(metrics2),
                  "MONITOR_DATA_DIR": str(out / "data-second")}
    return settings, env, second_env, {"kafka": kafka_port, "kafka_controller": controller, "postgres": pg_port,
                                       "metrics": metrics, "metrics_second_persist": metrics2}, note


def launch(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:  # the child holds its own descriptor
        return subprocess.Popen([sys.executable, "-m", "monitor.cli", *args], env=env, stdout=out,  # noqa: S603
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                cwd=log.parent)


def wait_for(what: str, check, timeout_s: float, procs: list[subprocess.Popen], log: Path):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        if any(p.poll() is not None for p in procs):
            raise Aborted(f"a worker exited while waiting for {what}; see {log}")
        if time.monotonic() > deadline:
            raise Aborted(f"timed out after {timeout_s:.0f}s waiting for {what}; see {log}")
        time.sleep(2)
    return result


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True,
                        help="trained model folder (e.g. ~/.cache/health-monitor/demo/*, or `monitor train`)")
    parser.add_argument("--minutes", type=float, default=30, help="minutes of producing (default 30)")
    parser.add_argument("--rate", type=float, default=20, help="posts per second (default 20)")
    parser.add_argument("--data", type=Path, default=Path("monitor/demo_data/druglib_sample.tsv"),
                        help="labeled file the post texts come from (default the shipped druglib sample)")
    parser.add_argument("--task", default="druglib_adverse", help="task that reads --data (default druglib_adverse)")
    parser.add_argument("--warmup", type=float, default=5, help="minutes before memory is measured and the "
                        "first fault may come; each restarted process gets its own (default 5)")
    parser.add_argument("--fault-every", type=float, default=None,
                        help="minutes between faults (default: the 6 faults spread evenly after warm-up)")
    parser.add_argument("--outage-s", type=float, default=60, help="seconds PostgreSQL stays down (default 60)")
    parser.add_argument("--burst", type=int, default=512,
                        help="posts sent at once when producing starts, inside the warm-up, so every role has met "
                             "its largest batches before memory is measured (default 512: two persist batches)")
    parser.add_argument("--poison-every", type=float, default=120,
                        help="seconds between poison posts, the first at half that (default 120)")
    parser.add_argument("--drain-timeout", type=float, default=900, help="seconds the final drain may take")
    parser.add_argument("--out", type=Path, default=None, help="folder for report.json, soak.png and the logs "
                        "(default a new folder under /tmp)")
    parser.add_argument("--keep-data", action="store_true", help="keep the broker's and PostgreSQL's data")
    args = parser.parse_args()
    args.tag = uuid.uuid4().hex[:8]
    if not (args.model / "model_card.json").exists():
        parser.error(f"{args.model} has no model_card.json: train one with `monitor train` or run `monitor demo`")
    if args.warmup >= args.minutes:
        parser.error("--warmup must be shorter than --minutes")
    args.model = args.model.resolve()
    return args


def interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:  # noqa: PLR0915 - a benchmark script reads best top to bottom
    args = parse_args()
    # Hermetic: settings come from this script alone (the workers run in --out, where no .env is).
    for name in [n for n in os.environ if n.startswith("MONITOR_") or n == "PROMETHEUS_MULTIPROC_DIR"]:
        del os.environ[name]
    out = (args.out or Path(tempfile.mkdtemp(prefix="soak-", dir="/tmp"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=out / "soak.log", level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # its connection chatter every 5 s
    from rich.console import Console
    from rich.live import Live

    from monitor.services import local, process
    from monitor.storage import migrations
    from monitor.tasks import load_task
    from monitor.corpus import load_examples

    console = Console()
    task = load_task(args.task)
    texts = [e.text for e in load_examples(args.data, task, skip_bad_rows=True).examples]
    settings, env, second_env, used_ports, note = build_settings(args, out)
    if note:
        console.print(f"[yellow]{note}[/]")
    console.print(f"soak {args.tag}: output in {out}; services on {used_ports}")
    stop_signal = signal.signal(signal.SIGTERM, interrupt)
    started: list[subprocess.Popen] = []
    soak = None
    try:
        for outcome in local.up(settings):
            console.print(f"{outcome.service}: {outcome.message}")
        migrations.upgrade(settings.database)
        supervisor = launch(["worker", "--role", "all"], env, out / "workers.log")
        started.append(supervisor)

        def start_second() -> subprocess.Popen:
            proc = launch(["worker", "--role", "persist"], second_env, out / "second-persist.log")
            started.append(proc)
            return proc

        second = start_second()
        urls = {"metrics": f"http://127.0.0.1:{used_ports['metrics']}/metrics",
                "readyz": f"http://127.0.0.1:{used_ports['metrics']}/readyz",
                "metrics-2": f"http://127.0.0.1:{used_ports['metrics_second_persist']}/metrics",
                "readyz-2": f"http://127.0.0.1:{used_ports['metrics_second_persist']}/readyz"}
        with console.status("starting the workers (models load) ..."):
            wait_for("every worker to be ready", lambda: process.http_get(urls["readyz"])[0] == 200
                     and process.http_get(urls["readyz-2"])[0] == 200, 900, [supervisor, second], out / "workers.log")
        db = Database(settings.database.url)
        groups = {r: f"soak-{args.tag}-{r}" for r in ROLES} | {"persist-2": f"soak-{args.tag}-second-persist"}
        feed = Feed(settings.kafka, settings.topics.posts, texts, args.rate, args.poison_every, burst=args.burst)
        lag = LagMeter(settings.kafka, settings.topics, groups)
        soak = Soak(time.time(), supervisor, second, start_second, urls, db, feed, lag)
        connections_start = db.connections()
        warmup_s, run_s = args.warmup * 60, args.minutes * 60
        every = (args.fault_every * 60 if args.fault_every else (run_s - warmup_s) / (len(FAULTS) + 1))
        faults = [Fault(name, warmup_s + (i + 1) * every) for i, name in enumerate(FAULTS)]
        for thread in (feed, lag, threading.Thread(target=soak.run_sampler, name="sampler", daemon=True)):
            thread.start()
        with Live(soak, console=console, refresh_per_second=1):
            # Warm-up rehearsal: the posts burst reaches persist only as fast as classify makes
            # predictions (small batches), so two minutes before warm-up ends a minute of stored posts
            # and their records are sent again: persist meets full batches, as after an outage, before
            # its memory is measured. (A 30-minute soak showed persist's RSS step up ~5 MB at the first
            # full-batch backlog, then stay flat for 16 minutes and through a second one.)
            rehearse_at = warmup_s - 120
            if rehearse_at > 60:
                while soak.now() < rehearse_at and not soak.stopping.is_set():
                    time.sleep(0.5)
                if not soak.stopping.is_set():
                    detail = redeliver(soak, settings)
                    soak.events.append(f"{soak.now():.0f}s: warm-up rehearsal: {detail}")
                    console.print(f"{soak.now() / 60:5.1f} min  warm-up rehearsal: {detail}")
            for fault in faults:
                while soak.now() < fault.scheduled_s and not soak.stopping.is_set():
                    time.sleep(0.5)
                if soak.stopping.is_set() or soak.now() >= run_s:
                    break  # aborted, or no time left for this fault (it stays unrun and is reported so)
                run_fault(soak, fault, settings, args)
                console.print(f"{fault.start_s / 60:5.1f} min  {fault.name}: {fault.detail} "
                              f"({fault.end_s - fault.start_s:.0f}s)")
            while soak.now() < run_s and not soak.stopping.is_set():
                time.sleep(0.5)
            drain_s = soak.now()
            feed.stop.set()
            feed.join(timeout=660)
            console.print(f"{drain_s / 60:5.1f} min  producing stopped: {len(feed.acked):,} posts acknowledged "
                          f"({len(feed.poison)} poison); draining ...")

            settled: list = [None, 0.0]  # the last counts seen with every lag at 0, and since when

            def drained() -> bool:
                """Every lag at 0 and every row there; or every lag at 0 and the counts still for
                QUIET_S (then some posts will never come: the row check names them)."""
                done, (lag_t, lags) = db.progress(), lag.latest
                if not done or lag_t < time.time() - SAMPLE_S * 2 or lag_t - soak.t0 <= drain_s \
                        or any(v != 0 for v in lags.values()):
                    settled[0] = None
                    return False
                if done[0] >= len(feed.acked - feed.poison) and done[2] >= done[1]:
                    return True
                if settled[0] != done:
                    settled[:] = [done, time.monotonic()]
                return time.monotonic() - settled[1] >= QUIET_S

            drain_ok = True
            try:
                wait_for("the drain", lambda: drained() or soak.stopping.is_set(), args.drain_timeout, [], out)
            except Aborted as exc:
                drain_ok = False
                console.print(f"[red]{exc}[/]")
            drained_s = soak.now()
            time.sleep(SAMPLE_S + 1)  # one more sample after the drain
        if any(e.startswith("ABORT") for e in soak.events):
            raise Aborted(next(e for e in soak.events if e.startswith("ABORT")))
        connections_end = db.connections()
        rows = check_rows(db, feed, set(task.signal_labels))
        rows["lost_on_posts_topic"] = locate_lost(settings, rows["lost_posts"], soak.t0)
        rows["poison_sent_s"] = {pid: round(t - soak.t0, 1) for pid, t in feed.poison_sent.items()}
        letters = check_dead_letters(settings, feed)
        soak.stopping.set()
        lag.stop.set()
        report = summarize(args, soak, faults, rows, letters, used_ports, note, drain_s, drained_s, drain_ok,
                           {"start": connections_start, "end": connections_end}, out)
        return 0 if all(report["goals"].values()) else 1
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: stopping everything the soak started[/]")
        return 130
    except Aborted as exc:
        console.print(f"[red]soak aborted: {exc}[/]")
        return 2
    finally:
        if soak is not None:
            soak.stopping.set()
            soak.feed.stop.set()
            soak.lag.stop.set()
        for proc in started:
            process.stop_group(proc, timeout_s=90)
        for outcome in local.down(settings):
            console.print(f"{outcome.service}: {outcome.message}")
        if not args.keep_data:
            import shutil

            # The data only: the services' logs stay in --out beside the workers'.
            for folder in (settings.data_dir / "services" / "kafka" / "data", settings.services.postgres_data_dir / "data"):
                shutil.rmtree(folder, ignore_errors=True)
        signal.signal(signal.SIGTERM, stop_signal)


def summarize(args, soak: Soak, faults: list[Fault], rows: dict, letters: dict, used_ports: dict, note: str,  # noqa: ANN001, PLR0913
              drain_s: float, drained_s: float, drain_ok: bool, connections: dict, out: Path) -> dict:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    timeline, warmup_s = soak.timeline, args.warmup * 60
    first_fault = min((f.start_s for f in faults if f.start_s is not None), default=drain_s)
    levels = steady_levels(timeline, warmup_s, first_fault, args.rate)
    soak.events += falling_behind(timeline, warmup_s, first_fault, args.rate)
    settle_times(timeline, faults, levels)
    memory = memory_growth(timeline, warmup_s)
    last = timeline[-1] if timeline else {}
    counted = [s for s in timeline if s["pg_connections"] is not None]
    connections["after warm-up"] = next((s["pg_connections"] for s in counted if s["t"] >= warmup_s), None)
    connections["max"] = max((s["pg_connections"] for s in counted), default=None)
    first = timeline[0] if timeline else {}
    lag_summary = {}
    for group in GROUP_INPUTS:
        seen = [s["lag"][group] for s in timeline if s["lag"].get(group) is not None]
        lag_summary[group] = {"max": max(seen, default=None), "mean": round(statistics.fmean(seen), 1) if seen else None,
                              "p95": sorted(seen)[int(0.95 * (len(seen) - 1))] if seen else None,
                              "unmeasured_samples": len(timeline) - len(seen), "steady_level": levels[group],
                              "final": last.get("lag", {}).get(group)}
    retries = {k: v - first.get("retries", {}).get(k, 0.0) for k, v in last.get("retries", {}).items() if v}
    growth_ok = all(m["growth"] is not None and m["growth"] < RSS_GOAL for m in memory.values())
    ran = [f for f in faults if f.start_s is not None]
    goals = {
        "0 lost posts": drain_ok and not (rows["lost_posts"] or rows["lost_predictions"]
                                          or rows["missing_explanations"]),
        "0 duplicated rows": not any(rows["duplicated"].values()),
        "0 contradictory rows": not rows["contradictions"] and not rows["poison_stored"],
        "each poison post dead-lettered exactly once, 0 unexpected": (
            letters["poison_once"] == letters["expected"] and not letters["unexpected"]),
        f"RSS growth < {RSS_GOAL:.0%} after warm-up (every process)": growth_ok,
        f"lag back to steady within {RECOVERY_GOAL_S:.0f}s of each fault clearing": (
            len(ran) == len(FAULTS) and all(f.steady_after_s is not None and f.steady_after_s <= RECOVERY_GOAL_S
                                            for f in ran)),
    }
    report = {"cpu": cpu_model(), "started_at": datetime.fromtimestamp(soak.t0, UTC).isoformat(),
              "args": {k: str(v) for k, v in vars(args).items()}, "ports": used_ports, "isolation_note": note,
              "drain": {"started_s": round(drain_s, 1), "ended_s": round(drained_s, 1), "complete": drain_ok},
              "faults": [asdict(f) | {"started_at": (datetime.fromtimestamp(soak.t0, UTC)
                                                     + timedelta(seconds=f.start_s)).isoformat() if f.start_s else None}
                         for f in faults],
              "memory_rule": memory_growth.__doc__.split("\n\n")[1].replace("\n    ", " ").strip(),
              "lag_rule": steady_levels.__doc__.replace("\n    ", " "),
              "memory": memory, "lag": lag_summary, "retries": retries, "dead_letters": letters,
              "restarts": last.get("restarts", {}), "rows": rows,
              "pg_connections": connections,
              "producer": {"acknowledged": len(soak.feed.acked), "sent_again_after_a_failure": soak.feed.resent},
              "events": soak.events, "goals": goals, "timeline": timeline}
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    plot(out / "soak.png", timeline, faults, warmup_s, drain_s)

    console.print(f"\nCPU: {report['cpu']}; {args.minutes:g} min at {args.rate:g} posts/s, warm-up {args.warmup:g} "
                  f"min; drain: {'every lag at 0' if drain_ok else 'lag NOT back to 0'} "
                  f"after {drained_s - drain_s:.0f}s")
    table = Table("process", "pids", "RSS start", "first 3 min after warm-up", "last 3 min", "growth",
                  "measured over", "C heap in use", title="memory (MB; medians of each window)")
    for proc, m in memory.items():
        growth = "n/a (never past warm-up)" if m["growth"] is None else f"{m['growth']:+.1%}"
        heap = "-" if not m["heap_in_use_mb"] else "{:.0f} -> {:.0f}".format(*m["heap_in_use_mb"])
        table.add_row(proc, str(m["incarnations"]), f"{m['start_mb']:.0f}",
                      "-" if m["after_warmup_mb"] is None else f"{m['after_warmup_mb']:.0f}",
                      "-" if m["last_window_mb"] is None else f"{m['last_window_mb']:.0f}",
                      growth, f"pid {m['measured_pid']}, {m['measured_s'] / 60:.1f} min", heap)
    console.print(table)
    table = Table("fault", "start", "length", "ready after", "lag steady after", "detail", title="faults (s)")
    for f in faults:
        if f.start_s is None:
            table.add_row(f.name, "not run (no time left)", "", "", "", "")
            continue
        steady = "never" if f.steady_after_s is None else f"{f.steady_after_s:.0f}"
        table.add_row(f.name, f"{f.start_s / 60:.1f} min", f"{f.end_s - f.start_s:.0f}",
                      "never" if f.ready_after_s is None else f"{f.ready_after_s:.0f}",
                      steady + (" (next fault came first)" if f.overlapped else ""), f.detail)
    console.print(table)
    table = Table("group", "max", "mean", "p95", "steady level", "unmeasured", "final", title="consumer lag (records)")
    for group, s in lag_summary.items():
        table.add_row(group, *(str(s[k]) for k in ("max", "mean", "p95", "steady_level", "unmeasured_samples", "final")))
    console.print(table)
    table = Table("measure", "value", title="rows and counters")
    for name, value in (
        ("posts acknowledged / poison", f"{len(soak.feed.acked):,} / {len(soak.feed.poison)}"),
        ("lost posts / predictions / explanations",
         f"{len(rows['lost_posts'])} / {len(rows['lost_predictions'])} / {len(rows['missing_explanations'])}"),
        ("duplicated rows", ", ".join(f"{k} {v}" for k, v in rows["duplicated"].items())),
        ("contradictory rows / poison posts stored", f"{len(rows['contradictions'])} / {len(rows['poison_stored'])}"),
        ("escalated / signals", f"{rows['escalated']:,} / {rows['signals']:,}"),
        ("dead letters: expected / exactly once / unexpected",
         f"{letters['expected']} / {letters['poison_once']} / {sum(letters['unexpected'].values())}"),
        ("retries (stage/kind)", ", ".join(f"{k} {v:.0f}" for k, v in sorted(retries.items())) or "none"),
        ("restarts (role)", ", ".join(f"{k} {v:.0f}" for k, v in sorted(report["restarts"].items())) or "none"),
        ("PostgreSQL connections: start / after warm-up / max / end",
         " / ".join(str(connections[k]) for k in ("start", "after warm-up", "max", "end"))),
        ("producer sends retried after a failure", str(soak.feed.resent)),
    ):
        table.add_row(name, value)
    console.print(table)
    for event in soak.events:
        console.print(f"[yellow]{event}[/]")
    if rows["lost_posts"]:
        where = ", ".join(f"{x['id']} (p{x['partition']}@{x['offset']}, {x['t']:.0f}s)"
                          for x in rows["lost_on_posts_topic"][:10])
        console.print(f"[red]lost posts, on the posts topic but never stored[/]: {where or rows['lost_posts'][:10]}; "
                      f"poison posts sent at {', '.join(f'{t:.0f}s' for t in rows['poison_sent_s'].values())}")
    for goal, ok in goals.items():
        console.print(f"{'[green]PASS' if ok else '[red]FAIL'}[/] {goal}")
    console.print(f"report: {out / 'report.json'}\nplot:   {out / 'soak.png'}\nlogs:   {out}/*.log")
    return report


if __name__ == "__main__":
    sys.exit(main())
