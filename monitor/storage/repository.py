"""Idempotent writes: a redelivered record inserts nothing and changes nothing.

Every function takes an open ``Session`` (the caller owns the transaction) and uses
``INSERT ... ON CONFLICT DO NOTHING`` on the table's natural key, on PostgreSQL and SQLite alike.
Rows are inserted in the order of their natural key, so two transactions writing overlapping rows
take their row locks in the same order and cannot deadlock each other. The first row stored for a
key wins; ``stored_predictions`` and ``final_labels`` read back what won.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from monitor.privacy import pseudonymise
from monitor.records import Post, Prediction
from monitor.storage.tables import LIVE_RUN, Base, Explanation, Signal, utcnow
from monitor.storage.tables import Post as PostRow
from monitor.storage.tables import Prediction as PredictionRow

# SQLite allows 32,766 bound variables per statement; keep every batch well under it.
_CHUNK = 500

PostKey = tuple[str, str]  # (source, source id)
PredictionKey = tuple[int, str, str]  # (post row id, task, model version), within one run


@dataclass(frozen=True)
class StoredPrediction:
    label: str
    probabilities: dict[str, float]
    confidence: float
    escalated: bool


def _insert_new(session: Session, table: Table, rows: Sequence[Mapping[str, Any]], key: Sequence[str]) -> int:
    """Insert the rows whose ``key`` is not present yet; return how many were inserted."""
    dialect = session.get_bind().dialect.name
    insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}.get(dialect)
    if insert is None:
        raise NotImplementedError(f"idempotent upserts are implemented for PostgreSQL and SQLite, not {dialect}")
    inserted = 0
    # One lock order for every writer (see the module docstring).
    rows = sorted(rows, key=lambda row: tuple(row[k] for k in key))
    for start in range(0, len(rows), _CHUNK):
        chunk = rows[start : start + _CHUNK]
        # RETURNING yields only the rows actually inserted; rowcount is not reliable for
        # multi-row INSERT ... ON CONFLICT across drivers (psycopg reports 0).
        stmt = insert(table).values(list(chunk)).on_conflict_do_nothing(index_elements=list(key))
        inserted += len(session.execute(stmt.returning(table.c.id)).all())
    return inserted


def _table(model: type[Base]) -> Table:
    return model.__table__  # type: ignore[return-value]


def upsert_posts(
    session: Session, posts: Iterable[Post], *, author_key: bytes, now: datetime | None = None
) -> dict[PostKey, int]:
    """Store posts not seen before; return the database id of every given post by (source, id).

    Authors are stored only as a keyed hash (``privacy.pseudonymise``), never as given.
    """
    ingested_at = now or utcnow()
    unique: dict[PostKey, Post] = {}
    for post in posts:
        unique.setdefault((post.source, post.id), post)
    if not unique:
        return {}
    rows = [
        {
            "source": p.source,
            "source_id": p.id,
            "author": pseudonymise(p.author, author_key) if p.author else None,
            "text": p.text,
            "lang": p.lang,
            "geo": p.geo,
            "created_at": p.created_at,
            "ingested_at": ingested_at,
        }
        for p in unique.values()
    ]
    _insert_new(session, _table(PostRow), rows, ("source", "source_id"))
    return post_ids(session, list(unique))


def post_ids(session: Session, keys: Sequence[PostKey]) -> dict[PostKey, int]:
    """Database ids for (source, source id) pairs that exist."""
    found: dict[PostKey, int] = {}
    keys = sorted(set(keys))
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        rows = session.execute(
            select(PostRow.source, PostRow.source_id, PostRow.id).where(
                tuple_(PostRow.source, PostRow.source_id).in_(chunk)
            )
        )
        found.update({(source, source_id): pk for source, source_id, pk in rows})
    return found


def upsert_predictions(
    session: Session, predictions: Iterable[Prediction], ids: Mapping[PostKey, int], *, run: str = LIVE_RUN
) -> int:
    """Store predictions not stored before for (post, task, model version, run); return how many."""
    rows = [
        {
            "post_id": ids[(p.source, p.post_id)],
            "task": p.task,
            "model_version": p.model_version,
            "run": run,
            "label": p.label,
            "probabilities": dict(p.probabilities),
            "confidence": p.confidence,
            "escalated": p.escalated,
        }
        for p in predictions
    ]
    return _insert_new(session, _table(PredictionRow), rows, ("post_id", "task", "model_version", "run"))


def upsert_explanations(session: Session, rows: Sequence[Mapping[str, Any]]) -> int:
    """Store explanation rows (columns of ``Explanation``) not stored before; return how many."""
    key = ("post_id", "task", "model_version", "run", "llm_model", "prompt_version")
    return _insert_new(session, _table(Explanation), [{"run": LIVE_RUN, **row} for row in rows], key)


def upsert_signals(session: Session, rows: Sequence[Mapping[str, Any]]) -> int:
    """Store signal rows (columns of ``Signal``) not stored before; return how many."""
    key = ("post_id", "task", "model_version", "run")
    return _insert_new(session, _table(Signal), [{"run": LIVE_RUN, **row} for row in rows], key)


def stored_predictions(session: Session, keys: Iterable[PredictionKey], *,
                       run: str = LIVE_RUN) -> dict[PredictionKey, StoredPrediction]:
    """The stored prediction of each (post id, task, model version) in ``run`` that has one."""
    found: dict[PredictionKey, StoredPrediction] = {}
    wanted = sorted(set(keys))
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start : start + _CHUNK]
        rows = session.execute(
            select(PredictionRow.post_id, PredictionRow.task, PredictionRow.model_version, PredictionRow.label,
                   PredictionRow.probabilities, PredictionRow.confidence, PredictionRow.escalated)
            .where(PredictionRow.run == run)
            .where(tuple_(PredictionRow.post_id, PredictionRow.task, PredictionRow.model_version).in_(chunk))
        )
        for post_id, task, version, label, probabilities, confidence, escalated in rows:
            found[(post_id, task, version)] = StoredPrediction(label, dict(probabilities), confidence, bool(escalated))
    return found


def final_labels(session: Session, keys: Iterable[PredictionKey], *, run: str = LIVE_RUN) -> dict[PredictionKey, str]:
    """The final label of the first explanation stored for each prediction key that has one."""
    found: dict[PredictionKey, tuple[int, str]] = {}
    wanted = sorted(set(keys))
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start : start + _CHUNK]
        rows = session.execute(
            select(Explanation.post_id, Explanation.task, Explanation.model_version, Explanation.id,
                   Explanation.final_label)
            .where(Explanation.run == run)
            .where(tuple_(Explanation.post_id, Explanation.task, Explanation.model_version).in_(chunk))
        )
        for post_id, task, version, row_id, label in rows:
            key = (post_id, task, version)
            if key not in found or row_id < found[key][0]:
                found[key] = (row_id, label)
    return {key: label for key, (_, label) in found.items()}
