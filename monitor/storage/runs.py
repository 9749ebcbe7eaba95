"""Runs: a replay run's bookkeeping row, and the per-run reads that put two runs side by side.

A run is the name results are stored under: ``live`` for the stream, a replay's own name otherwise.
Like ``repository``, every function takes an open ``Session``; the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from monitor.storage.tables import Explanation, Prediction, ReplayRun, Signal, utcnow

RunKey = tuple[int, str]  # (post row id, task)


class RunLabel(NamedTuple):
    """The label a run stored for a (post, task), and its confidence."""

    label: str
    confidence: float


def replay_run_exists(session: Session, name: str) -> bool:
    """Whether a replay run of this name was started before (whatever its status)."""
    return session.scalar(select(ReplayRun.id).where(ReplayRun.name == name)) is not None


def start_replay_run(
    session: Session,
    name: str,
    *,
    topic: str,
    start: datetime,
    end: datetime,
    model_paths: Sequence[str],
    model_versions: Sequence[str],
    policy: Mapping[str, Any],
) -> None:
    """Record a replay run of [start, end) of ``topic`` as running."""
    session.add(ReplayRun(name=name, topic=topic, from_ts=start, to_ts=end, model_path=",".join(model_paths),
                          model_version=",".join(model_versions), policy=dict(policy), status="running"))


def finish_replay_run(session: Session, name: str, *, status: str, report: Mapping[str, Any],
                      finished_at: datetime | None = None) -> None:
    """Store a started replay run's outcome (``done`` or ``failed``) and its report."""
    row = session.scalars(select(ReplayRun).where(ReplayRun.name == name)).one()
    row.status, row.finished_at, row.report = status, finished_at or utcnow(), dict(report)


def replay_report(session: Session, name: str) -> dict[str, Any] | None:
    """The stored report of a replay run; None for a run without one (``live``, unknown, or still running)."""
    return session.scalar(select(ReplayRun.report).where(ReplayRun.name == name))


def run_labels(session: Session, run: str) -> dict[RunKey, RunLabel]:
    """Every prediction of ``run``, by (post id, task)."""
    rows = session.execute(select(Prediction.post_id, Prediction.task, Prediction.label, Prediction.confidence)
                           .where(Prediction.run == run))
    return {(post, task): RunLabel(label, confidence) for post, task, label, confidence in rows}


def explained_post_ids(session: Session, run: str) -> set[int]:
    """The posts that have an explanation in ``run`` (for any task)."""
    return set(session.scalars(select(Explanation.post_id).where(Explanation.run == run)))


def signal_counts(session: Session, run: str) -> dict[str, int]:
    """How many signals ``run`` flagged, per task (tasks without one are absent)."""
    rows = session.execute(select(Signal.task, func.count()).where(Signal.run == run)
                           .group_by(Signal.task).order_by(Signal.task))
    return {task: count for task, count in rows}
