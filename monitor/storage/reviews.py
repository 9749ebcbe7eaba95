"""The console's own rows: users, sign-in sessions, and reviews (appended, never updated).

Every function takes an open ``Session``; the caller owns the transaction. Passwords arrive already
hashed and session tokens already keyed-hashed: this module never sees a secret in clear.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from monitor.storage.tables import Alert, ConsoleSession, ConsoleUser, Post, Review


@dataclass(frozen=True)
class User:
    id: int
    username: str
    role: str
    active: bool
    password_hash: str


@dataclass(frozen=True)
class StoredReview:
    """One review row as stored."""

    id: int
    kind: str
    task: str
    post_id: int | None
    alert_id: int | None
    label: str | None
    shown_label: str | None
    decision: str | None
    note: str | None
    reviewer: str
    created_at: datetime


@dataclass(frozen=True)
class ReviewedPost:
    """A post's current (latest) reviewed label for a task, with what training needs of the post."""

    post_id: int
    source: str
    source_id: str
    text: str
    label: str
    reviewer: str
    reviewed_at: datetime


def _user(row: ConsoleUser) -> User:
    return User(row.id, row.username, row.role, row.active, row.password_hash)


def _review(row: Review) -> StoredReview:
    return StoredReview(row.id, row.kind, row.task, row.post_id, row.alert_id, row.label, row.shown_label,
                        row.decision, row.note, row.reviewer, row.created_at)


# -- users ---------------------------------------------------------------------------------------------

def find_user(session: Session, username: str) -> User | None:
    row = session.scalar(select(ConsoleUser).where(ConsoleUser.username == username))
    return _user(row) if row is not None else None


def add_user(session: Session, username: str, password_hash: str, role: str) -> User:
    row = ConsoleUser(username=username, password_hash=password_hash, role=role, active=True)
    session.add(row)
    session.flush()
    return _user(row)


def update_user(session: Session, username: str, *, password_hash: str | None = None, role: str | None = None,
                active: bool | None = None) -> User | None:
    """Change an account; a disabled one also loses its open sessions. None when there is no such user."""
    row = session.scalar(select(ConsoleUser).where(ConsoleUser.username == username))
    if row is None:
        return None
    if password_hash is not None:
        row.password_hash = password_hash
    if role is not None:
        row.role = role
    if active is not None:
        row.active = active
    if password_hash is not None or active is False:
        session.execute(delete(ConsoleSession).where(ConsoleSession.user_id == row.id))
    session.flush()
    return _user(row)


def list_users(session: Session) -> list[tuple[User, int]]:
    """Every account with how many reviews it stored, by name."""
    counts = dict(session.execute(select(Review.reviewer, func.count()).group_by(Review.reviewer)).all())
    return [(_user(row), counts.get(row.username, 0))
            for row in session.scalars(select(ConsoleUser).order_by(ConsoleUser.username))]


# -- sessions ------------------------------------------------------------------------------------------

def open_session(session: Session, user_id: int, token_hash: str, *, now: datetime, expires_at: datetime) -> None:
    """Store a sign-in; expired ones are swept at the same time so the table stays small."""
    session.execute(delete(ConsoleSession).where(ConsoleSession.expires_at <= now))
    session.add(ConsoleSession(token_hash=token_hash, user_id=user_id, created_at=now, expires_at=expires_at))
    session.flush()


def session_user(session: Session, token_hash: str, *, now: datetime) -> tuple[User, datetime] | None:
    """The active user of an unexpired session, and when it expires; None otherwise."""
    row = session.execute(
        select(ConsoleUser, ConsoleSession.expires_at).join(ConsoleSession, ConsoleSession.user_id == ConsoleUser.id)
        .where(ConsoleSession.token_hash == token_hash, ConsoleSession.expires_at > now, ConsoleUser.active)
    ).first()
    return (_user(row[0]), row[1]) if row is not None else None


def close_session(session: Session, token_hash: str) -> None:
    session.execute(delete(ConsoleSession).where(ConsoleSession.token_hash == token_hash))


# -- reviews -------------------------------------------------------------------------------------------

def add_label_review(session: Session, *, post_id: int, task: str, label: str, shown_label: str | None,
                     reviewer: str, note: str | None = None, now: datetime | None = None) -> StoredReview:
    """Append a post's reviewed label for a task (a confirmation when it equals ``shown_label``)."""
    row = Review(kind="label", task=task, post_id=post_id, label=label, shown_label=shown_label, reviewer=reviewer,
                 note=note, **({"created_at": now} if now else {}))
    session.add(row)
    session.flush()
    return _review(row)


def add_alert_review(session: Session, *, alert_id: int, decision: str, reviewer: str, note: str | None = None,
                     now: datetime | None = None) -> StoredReview:
    """Append whether an alert was a real event (``event``) or not (``false_alarm``)."""
    task = session.scalar(select(Alert.task).where(Alert.id == alert_id))
    if task is None:
        raise LookupError(f"no alert {alert_id}")
    row = Review(kind="alert", task=task, alert_id=alert_id, decision=decision, reviewer=reviewer, note=note,
                 **({"created_at": now} if now else {}))
    session.add(row)
    session.flush()
    return _review(row)


def alert_decisions(session: Session, alert_ids: Iterable[int]) -> dict[int, StoredReview]:
    """The current (latest) review of each of these alerts that has one."""
    ids = sorted(set(alert_ids))
    if not ids:
        return {}
    latest = select(func.max(Review.id)).where(Review.alert_id.in_(ids)).group_by(Review.alert_id)
    return {row.alert_id: _review(row) for row in session.scalars(select(Review).where(Review.id.in_(latest)))}


def label_reviews(session: Session, task: str, post_ids: Iterable[int]) -> dict[int, StoredReview]:
    """The current (latest) label review of each of these posts for ``task``."""
    ids = sorted(set(post_ids))
    if not ids:
        return {}
    latest = (select(func.max(Review.id)).where(Review.kind == "label", Review.task == task, Review.post_id.in_(ids))
              .group_by(Review.post_id))
    return {row.post_id: _review(row) for row in session.scalars(select(Review).where(Review.id.in_(latest)))}


def review_history(session: Session, *, post_id: int | None = None, alert_id: int | None = None,
                   task: str | None = None) -> list[StoredReview]:
    """Every review of a post (optionally of one task) or of an alert, newest first."""
    query = select(Review)
    if post_id is not None:
        query = query.where(Review.post_id == post_id)
    if alert_id is not None:
        query = query.where(Review.alert_id == alert_id)
    if task is not None:
        query = query.where(Review.task == task)
    return [_review(row) for row in session.scalars(query.order_by(Review.id.desc()))]


def reviewed_posts(session: Session, task: str, *, batch: int = 1000) -> Iterator[ReviewedPost]:
    """Each post's current reviewed label for ``task``, oldest review first, in batches (an export
    of many reviews never holds them all)."""
    latest = (select(func.max(Review.id).label("id")).where(Review.kind == "label", Review.task == task)
              .group_by(Review.post_id).subquery())
    query = (select(Review.id, Post.id, Post.source, Post.source_id, Post.text, Review.label, Review.reviewer,
                    Review.created_at)
             .join(latest, latest.c.id == Review.id).join(Post, Post.id == Review.post_id).order_by(Review.id))
    after = 0
    while True:
        rows = session.execute(query.where(Review.id > after).limit(batch)).all()
        for _, post_id, source, source_id, text, label, reviewer, at in rows:
            yield ReviewedPost(post_id, source, source_id, text, label, reviewer, at)
        if len(rows) < batch:
            return
        after = rows[-1][0]
