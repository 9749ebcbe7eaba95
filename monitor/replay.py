"""Replays: a time range of a topic through a given model and policy, stored under a run name.

Evaluates a candidate model on what the live pipeline saw, without touching it: records are read by
their own timestamps (no consumer group, nothing committed), run through ``pipeline.process_batch``
with ``run=NAME``, and summarised (throughput, escalations, flips, task metrics on gold labels).
``compare_runs`` puts two runs side by side, post by post.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from monitor import broker
from monitor.config import KafkaSettings
from monitor.evaluation import confusion_matrix, task_metric
from monitor.explainer.policy import ExplanationBudget, Policy
from monitor.pipeline import BatchResult, TaskModel, process_batch
from monitor.records import RecordError, decode_post
from monitor.storage.session import transaction
from monitor.storage.tables import Post as PostRow
from monitor.storage.tables import Prediction, ReplayRun, Signal
from monitor.storage.tables import Explanation as ExplanationRow


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


def replay(
    kafka: KafkaSettings,
    topic: str,
    start: datetime,
    end: datetime,
    *,
    run: str,
    models: Sequence[TaskModel],
    explainer: Any,
    factory: sessionmaker[Session],
    policy: Policy,
    budget: ExplanationBudget | None,
    author_key: bytes,
    batch_size: int = 64,
    model_paths: Sequence[str] = (),
) -> ReplayReport:
    """Run the records of [start, end) through the pipeline under ``run``; record and return the report."""
    if run == "live":
        raise ValueError("'live' is the live pipeline's run name; choose another for a replay")
    report = ReplayReport(run, topic, start.isoformat(), end.isoformat())
    with transaction(factory) as session:
        if session.scalar(select(ReplayRun.id).where(ReplayRun.name == run)) is not None:
            raise ValueError(f"a replay run named {run!r} exists already; choose another name")
        session.add(ReplayRun(name=run, topic=topic, from_ts=start, to_ts=end, model_path=",".join(model_paths),
                              model_version=",".join(m.classifier.model_version for m in models),
                              policy=asdict(policy), status="running"))
    totals = BatchResult()
    gold: dict[str, list[str]] = defaultdict(list)
    pred: dict[str, list[str]] = defaultdict(list)
    started = time.perf_counter()
    batch = []

    def flush() -> None:
        result = process_batch(batch, models, explainer, factory, policy=policy, budget=budget,
                               author_key=author_key, run=run)
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
        for record in broker.records_between(kafka, topic, int(start.timestamp() * 1000), int(end.timestamp() * 1000)):
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
            row = session.scalars(select(ReplayRun).where(ReplayRun.name == run)).one()
            row.status, row.finished_at, row.report = status, datetime.now(UTC), report.as_dict()
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
        def labels(run: str) -> dict[tuple[int, str], tuple[str, float]]:
            rows = session.execute(select(Prediction.post_id, Prediction.task, Prediction.label,
                                          Prediction.confidence).where(Prediction.run == run))
            return {(post, task): (label, conf) for post, task, label, conf in rows}

        a, b = labels(run_a), labels(run_b)
        common = a.keys() & b.keys()
        changed_keys = sorted(k for k in common if a[k][0] != b[k][0])
        texts = dict(session.execute(select(PostRow.id, PostRow.text).where(
            PostRow.id.in_([k[0] for k in changed_keys[:limit]]))).tuples().all()) if changed_keys else {}
        signals = {}
        for run in (run_a, run_b):
            for task, count in Counter(session.scalars(select(Signal.task).where(Signal.run == run))).items():
                pair = signals.get(task, (0, 0))
                signals[task] = (count, pair[1]) if run == run_a else (pair[0], count)
        reports = tuple(session.scalar(select(ReplayRun.report).where(ReplayRun.name == r)) for r in (run_a, run_b))
        explained = set(session.scalars(select(ExplanationRow.post_id).where(ExplanationRow.run == run_b)))
    changed = [{"post_id": k[0], "task": k[1], run_a: a[k][0], run_b: b[k][0],
                "confidence_b": round(b[k][1], 4), "explained_b": k[0] in explained, "text": texts.get(k[0], "")[:200]}
               for k in changed_keys[:limit]]
    return Comparison(run_a, run_b, len(common), len(changed_keys), changed, len(a.keys() - b.keys()),
                      len(b.keys() - a.keys()),
                      signals, reports)  # type: ignore[arg-type]
