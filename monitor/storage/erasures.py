"""Erasure: a deleted post, or every post of an author, leaves storage with everything derived from it
(predictions, explanations, signals by cascade; its excerpt in alerts), and a tombstone stays so that the
post is never stored again (a redelivery, a replay, a stage that lags behind the delete).

Like ``repository``, every function takes an open ``Session``; the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, select, tuple_, update
from sqlalchemy.orm import Session

from monitor.privacy import pseudonymise
from monitor.records import Erasure, Post
from monitor.storage.repository import _insert_new
from monitor.storage.tables import Alert
from monitor.storage.tables import Erasure as ErasureRow
from monitor.storage.tables import Post as PostRow

_CHUNK = 500
#: What an erased post's entry in an alert's top posts keeps: no text, no explanation.
ERASED_ENTRY_KEYS = ("post_id", "source", "created_at", "label", "confidence")


@dataclass
class Erased:
    """What one call of ``erase`` did. ``outcomes`` counts the erasures by (origin, outcome): ``applied``
    (posts removed), ``unknown`` (nothing stored to remove; the tombstone still keeps it out) or ``repeat``
    (already honoured)."""

    posts: int = 0  # posts removed, with their predictions, explanations and signals
    alerts: int = 0  # alerts whose top posts lost an excerpt
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)


def target(erasure: Erasure, author_key: bytes) -> tuple[str, str]:
    """(kind, target) of the tombstone: the post's source id, or the author's keyed hash (never the name)."""
    if erasure.post_id is not None:
        return "post", erasure.post_id
    return "author", pseudonymise(erasure.author or "", author_key)


def erase(session: Session, erasures: Sequence[Erasure], *, author_key: bytes) -> Erased:
    """Apply ``erasures``: tombstone each, delete the posts it covers (cascading), scrub alert excerpts.

    Idempotent: a redelivered erasure finds its tombstone and nothing left to delete.
    """
    done = Erased()
    for erasure in erasures:
        kind, value = target(erasure, author_key)
        new = _insert_new(session, ErasureRow.__table__, [{  # type: ignore[arg-type]
            "source": erasure.source, "kind": kind, "target": value, "origin": erasure.origin,
            "requested_at": erasure.time, "posts_removed": 0}], ("source", "kind", "target"))
        column = PostRow.source_id if kind == "post" else PostRow.author
        found = session.execute(select(PostRow.id, PostRow.created_at).where(
            PostRow.source == erasure.source, column == value)).all()
        done.outcomes[(erasure.origin, "applied" if found else "unknown" if new else "repeat")] += 1
        if not found:
            continue
        ids = [pk for pk, _ in found]
        done.alerts += _scrub_alerts(session, set(ids), min(at for _, at in found), max(at for _, at in found))
        for start in range(0, len(ids), _CHUNK):
            session.execute(delete(PostRow).where(PostRow.id.in_(ids[start:start + _CHUNK])))
        session.execute(update(ErasureRow).where(
            ErasureRow.source == erasure.source, ErasureRow.kind == kind, ErasureRow.target == value,
        ).values(posts_removed=ErasureRow.posts_removed + len(ids)))
        done.posts += len(ids)
    return done


def _scrub_alerts(session: Session, post_ids: set[int], first: datetime, last: datetime) -> int:
    """Strip the text and explanation of erased posts from the alerts whose buckets hold them."""
    alerts = session.execute(select(Alert.id, Alert.top_posts).where(
        Alert.bucket_start <= last, Alert.bucket_end > first)).all()
    changed = 0
    for alert_id, top in alerts:
        if not any(entry.get("post_id") in post_ids for entry in top):
            continue
        scrubbed: list[dict[str, Any]] = [
            {**{k: entry.get(k) for k in ERASED_ENTRY_KEYS}, "erased": True} if entry.get("post_id") in post_ids
            else entry for entry in top]
        session.execute(update(Alert).where(Alert.id == alert_id).values(top_posts=scrubbed))
        changed += 1
    return changed


def erased_posts(session: Session, posts: Iterable[Post], *, author_key: bytes) -> set[tuple[str, str]]:
    """(source, id) of the given posts that an erasure covers: by their id or by their author."""
    posts = list(posts)
    if not posts:
        return set()
    by_id = sorted({(p.source, p.id) for p in posts})
    hashes = [pseudonymise(p.author, author_key) if p.author else None for p in posts]
    by_author = sorted({(p.source, h) for p, h in zip(posts, hashes, strict=True) if h is not None})
    gone_ids: set[tuple[str, str]] = set()
    gone_authors: set[tuple[str, str]] = set()
    for kind, keys, into in (("post", by_id, gone_ids), ("author", by_author, gone_authors)):
        for start in range(0, len(keys), _CHUNK):
            rows = session.execute(select(ErasureRow.source, ErasureRow.target).where(
                and_(ErasureRow.kind == kind, tuple_(ErasureRow.source, ErasureRow.target).in_(keys[start:start + _CHUNK]))))
            into.update((source, value) for source, value in rows)
    return {(p.source, p.id) for p, h in zip(posts, hashes, strict=True)
            if (p.source, p.id) in gone_ids or (h is not None and (p.source, h) in gone_authors)}


def count_erasures(session: Session, *, source: str | None = None) -> dict[str, int]:
    """Tombstones by kind (``monitor privacy`` reports them)."""
    query = select(ErasureRow.kind, func.count()).group_by(ErasureRow.kind)
    if source is not None:
        query = query.where(ErasureRow.source == source)
    return {"post": 0, "author": 0, **{kind: n for kind, n in session.execute(query).all()}}

