"""Replays: a time range of a topic through a given model and policy, stored under a run name.

Evaluates a candidate model on what the live pipeline saw, without touching it: records are read by
their own timestamps (no consumer group, nothing committed), run through ``pipeline.process_batch``
with ``run=NAME``, and summarised (throughput, escalations, flips, task metrics on gold labels).
``compare_runs`` puts two runs side by side, post by post.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from monitor.kafka import broker
from monitor.errors import ConfigError
from monitor.evaluation import confusion_matrix, task_metric
from monitor.pipeline import BatchResult, process_batch
from monitor.records import RecordError, decode_post
from monitor.runtime import Runtime, TaskModel
from monitor.storage import runs
from monitor.storage.queries import stored_posts
from monitor.storage.session import transaction
from monitor.storage.tables import LIVE_RUN


@dataclass
class ReplayReport:
    run: str
    topic: str
    start: str
    end: str
    records: int = 0
    bad_records: int = 0
    seconds: float = 0.0
    totals: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def posts_per_s(self) -> float:
        return self.totals.get("posts", 0) / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "posts_per_s": self.posts_per_s}


def _metrics(models: Sequence[TaskModel], gold: dict[str, list[str]], pred: dict[str, list[str]]) -> dict:
    out = {}
    for model in models:
        name = model.task.name
        if not gold.get(name):
            continue
        task = model.task
        for which, labels in (("classifier", pred[f"{name}:classifier"]), ("final", pred[f"{name}:final"])):
            matrix = confusion_matrix(gold[name], labels, task.labels)
            value = task_metric(matrix, task.labels, task.metric, positive_label=task.positive_label,
                                metric_labels=task.metric_labels)
            out.setdefault(name, {"metric": task.metric, "n": len(gold[name])})[which] = value
    return out


def check_run_name(run: str) -> None:
    """Refuse the live pipeline's run name: a replay must never mix its results into the live ones."""
    if run == LIVE_RUN:
        raise ConfigError(f"{LIVE_RUN!r} is the live pipeline's run name; choose another for a replay")


def replay(runtime: Runtime, topic: str, start: datetime, end: datetime, *, run: str,
           batch_size: int = 64) -> ReplayReport:
    """Run the records of [start, end) through the pipeline under ``run`` with ``runtime``'s models,
    explainer and policy (a runtime with the classify and persist roles); record and return the report."""
    models, factory, policy = runtime.task_models, runtime.factory, runtime.policy
    if factory is None:
        raise ConfigError("a replay stores its results: build its runtime with the persist role")
    model_paths = [str(m.folder) for m in models]
    check_run_name(run)
    report = ReplayReport(run, topic, start.isoformat(), end.isoformat())
    with transaction(factory) as session:
        if runs.replay_run_exists(session, run):
            raise ConfigError(f"a replay run named {run!r} exists already; choose another name")
        runs.start_replay_run(session, run, topic=topic, start=start, end=end, model_paths=model_paths,
                              model_versions=[m.card.model_version for m in models], policy=asdict(policy))
    totals = BatchResult()
    gold: dict[str, list[str]] = defaultdict(list)
    pred: dict[str, list[str]] = defaultdict(list)
    started = time.perf_counter()
    batch = []

    def flush() -> None:
        result = process_batch(batch, runtime, run=run)
        totals.add(result)
        for d in result.decisions:
            task = d.case.prediction.task
            if task in d.case.post.labels:
                gold[task].append(d.case.post.labels[task])
                pred[f"{task}:classifier"].append(d.case.prediction.label)
                pred[f"{task}:final"].append(d.final_label)
        batch.clear()

    status = "failed"
    try:
        for record in broker.records_between(runtime.settings.kafka, topic, int(start.timestamp() * 1000), int(end.timestamp() * 1000)):
            report.records += 1
            try:
                batch.append(decode_post(record.value or b"",
                                         fallback_time=datetime.fromtimestamp(record.timestamp_ms / 1000, UTC)))
            except RecordError:
                report.bad_records += 1
                continue
            if len(batch) >= batch_size:
                flush()
        if batch:
            flush()
        status = "done"
    finally:
        report.seconds = time.perf_counter() - started
        report.totals = {k: getattr(totals, k) for k in ("posts", "predictions", "escalated", "explained",
                                                          "over_budget", "unverified", "flipped", "signals")}
        report.metrics = _metrics(models, gold, pred)
        with transaction(factory) as session:
            runs.finish_replay_run(session, run, status=status, report=report.as_dict())
    return report


@dataclass
class Comparison:
    run_a: str
    run_b: str
    common: int
    changed_total: int
    changed: list[dict[str, Any]]
    only_a: int
    only_b: int
    signals: dict[str, tuple[int, int]]
    reports: tuple[dict | None, dict | None]


def compare_runs(factory: sessionmaker[Session], run_a: str, run_b: str, *, limit: int = 20) -> Comparison:
    """Which posts got a different label in ``run_b`` than in ``run_a`` (per task), and signal counts."""
    with transaction(factory) as session:
        a, b = runs.run_labels(session, run_a), runs.run_labels(session, run_b)
        common = a.keys() & b.keys()
        changed_keys = sorted(k for k in common if a[k].label != b[k].label)
        posts = stored_posts(session, [k[0] for k in changed_keys[:limit]])
        counts = (runs.signal_counts(session, run_a), runs.signal_counts(session, run_b))
        reports = (runs.replay_report(session, run_a), runs.replay_report(session, run_b))
        explained = runs.explained_post_ids(session, run_b)
    signals = {task: (counts[0].get(task, 0), counts[1].get(task, 0)) for task in {**counts[0], **counts[1]}}
    texts = {pk: post.text for pk, post in posts.items()}
    changed = [{"post_id": k[0], "task": k[1], run_a: a[k][0], run_b: b[k][0],
                "confidence_b": round(b[k][1], 4), "explained_b": k[0] in explained, "text": texts.get(k[0], "")[:200]}
               for k in changed_keys[:limit]]
    return Comparison(run_a, run_b, len(common), len(changed_keys), changed, len(a.keys() - b.keys()),
                      len(b.keys() - a.keys()),
                      signals, reports)  # type: ignore[arg-type]
