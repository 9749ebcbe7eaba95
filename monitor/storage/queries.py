"""Reads over posts, signals and explanations: what detection, the demo and run comparisons need.

Like ``repository``, every function takes an open ``Session`` (the caller owns the transaction) and
returns plain records, never ORM rows. Reads by id go in chunks, well under SQLite's bound-variable limit.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from monitor.storage.tables import LIVE_RUN, Explanation, Post, Prediction, Signal

_CHUNK = 500  # ids per IN (...) query


class StoredPost(NamedTuple):
    """Where a stored post came from and what it says."""

    source: str
    source_id: str
    text: str


class FlaggedSignal(NamedTuple):
    """A stored signal with the post facts that bucketing and strata need."""

    post_id: int
    task: str
    label: str
    confidence: float
    post_created_at: datetime
    source: str
    geo: dict[str, Any] | None


class ExplanationNote(NamedTuple):
    """What an alert quotes of an explanation."""

    verdict: str
    rationale: str | None
    evidence: str | None


class ExplainedExample(NamedTuple):
    """A post and the explainer's decision on its label, for showing what the explainer did."""

    text: str
    predicted_label: str
    verdict: str
    suggested_label: str | None
    final_label: str
    evidence: str | None
    rationale: str | None


def _chunks(ids: Iterable[int]) -> Iterable[list[int]]:
    wanted = sorted(set(ids))
    for start in range(0, len(wanted), _CHUNK):
        yield wanted[start : start + _CHUNK]


def stored_posts(session: Session, ids: Iterable[int]) -> dict[int, StoredPost]:
    """The posts with these database ids (ids not stored are absent)."""
    found: dict[int, StoredPost] = {}
    for chunk in _chunks(ids):
        rows = session.execute(select(Post.id, Post.source, Post.source_id, Post.text).where(Post.id.in_(chunk)))
        found.update({pk: StoredPost(source, source_id, text) for pk, source, source_id, text in rows})
    return found


def flagged_signals(session: Session, since: datetime, until: datetime, *, tasks: Collection[str] | None = None,
                    run: str = LIVE_RUN) -> list[FlaggedSignal]:
    """The signals of ``run`` on posts created in [since, until), optionally of ``tasks`` only.

    A post flagged by two model versions of a task (during a model change) comes back twice.
    """
    query = (
        select(Signal.post_id, Signal.task, Signal.label, Signal.confidence, Signal.post_created_at, Post.source,
               Post.geo)
        .join(Post, Post.id == Signal.post_id)
        # posts.created_at holds the same instant and has an index of its own: naming it lets the
        # planner start from the posts in range rather than scan every signal of the run.
        .where(Signal.run == run, Signal.post_created_at >= since, Signal.post_created_at < until,
               Post.created_at >= since, Post.created_at < until)
    )
    if tasks is not None:
        query = query.where(Signal.task.in_(list(tasks)))
    return [FlaggedSignal(*row) for row in session.execute(query)]


def latest_explanations(session: Session, post_ids: Iterable[int], *,
                        run: str = LIVE_RUN) -> dict[tuple[str, int], ExplanationNote]:
    """The latest explanation in ``run`` of each (task, post) among these posts that has one."""
    latest: dict[tuple[str, int], tuple[tuple[datetime, int], ExplanationNote]] = {}
    for chunk in _chunks(post_ids):
        rows = session.execute(
            select(Explanation.task, Explanation.post_id, Explanation.created_at, Explanation.id,
                   Explanation.verdict, Explanation.rationale, Explanation.evidence)
            .where(Explanation.post_id.in_(chunk), Explanation.run == run)
        )
        for task, post_id, created_at, row_id, verdict, rationale, evidence in rows:
            key, order = (task, post_id), (created_at, row_id)
            if key not in latest or order > latest[key][0]:
                latest[key] = (order, ExplanationNote(verdict, rationale, evidence))
    return {key: note for key, (_, note) in latest.items()}


def source_counts(session: Session, source: str) -> dict[str, int]:
    """How far the posts of one source got: stored posts, predictions, escalations, explanations
    (flipped, over budget, unverified) and signals, over every run."""
    def count(table: Any, *where: Any) -> int:
        query = select(func.count()).select_from(table).join(Post, Post.id == table.post_id) if table is not Post \
            else select(func.count()).select_from(Post)
        return session.scalar(query.where(Post.source == source, *where)) or 0

    return {
        "posts": count(Post),
        "predictions": count(Prediction),
        "escalated": count(Prediction, Prediction.escalated),
        "explanations": count(Explanation),
        "flipped": count(Explanation, Explanation.final_label != Explanation.predicted_label),
        "over_budget": count(Explanation, Explanation.verdict == "over_budget"),
        "unverified": count(Explanation, Explanation.verdict == "unverified"),
        "signals": count(Signal),
    }


def explained_examples(session: Session, source: str, *, verdicts: Sequence[str] = ("confirm", "reject", "withheld"),
                       limit: int = 3) -> list[ExplainedExample]:
    """Up to ``limit`` explanations with one of ``verdicts`` on posts of ``source``, with the post text."""
    rows = session.execute(
        select(Post.text, Explanation.predicted_label, Explanation.verdict, Explanation.suggested_label,
               Explanation.final_label, Explanation.evidence, Explanation.rationale)
        .join(Post, Post.id == Explanation.post_id)
        .where(Post.source == source, Explanation.verdict.in_(list(verdicts))).limit(limit)
    )
    return [ExplainedExample(*row) for row in rows]
