"""Alert rows: idempotent inserts of EARS detections, and the query that reads them back as records.

Like ``repository``, every function takes an open ``Session``; the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from monitor.storage.repository import _insert_new
from monitor.storage.tables import Alert

#: The natural key: one alert per series, method and bucket.
ALERT_KEY = ("task", "granularity", "stratum", "series", "method", "bucket_start")


@dataclass(frozen=True)
class StoredAlert:
    """An alert row as stored (see ``tables.Alert`` for what each column means)."""

    task: str
    granularity: str
    stratum: str
    series: str
    method: str
    bucket_start: datetime
    bucket_end: datetime
    observed: float
    expected: float
    sd: float
    score: float
    threshold: float
    posts: int
    top_posts: list[dict[str, Any]]
    detected_at: datetime

    @classmethod
    def of(cls, row: Alert) -> StoredAlert:
        return cls(row.task, row.granularity, row.stratum, row.series, row.method, row.bucket_start, row.bucket_end,
                   row.observed, row.expected, row.sd, row.score, row.threshold, row.posts, list(row.top_posts),
                   row.detected_at)


def insert_alerts(session: Session, rows: Sequence[Mapping[str, Any]]) -> int:
    """Store alert rows (columns of ``Alert``) whose key is new; return how many were inserted.

    A bucket detected again (the next detection run reads overlapping buckets) keeps its first row.
    """
    return _insert_new(session, Alert.__table__, rows, ALERT_KEY)  # type: ignore[arg-type]


def recent_alerts(
    session: Session,
    *,
    limit: int = 20,
    task: str | None = None,
    granularity: str | None = None,
    since: datetime | None = None,
) -> list[StoredAlert]:
    """The latest alerts by bucket, newest first, optionally for one task, granularity, or from ``since``."""
    query = select(Alert)
    if task is not None:
        query = query.where(Alert.task == task)
    if granularity is not None:
        query = query.where(Alert.granularity == granularity)
    if since is not None:
        query = query.where(Alert.bucket_start >= since)
    query = query.order_by(Alert.bucket_start.desc(), Alert.task, Alert.granularity, Alert.stratum, Alert.series,
                           Alert.method).limit(limit)
    return [StoredAlert.of(row) for row in session.scalars(query)]

