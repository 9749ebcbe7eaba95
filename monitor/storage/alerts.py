"""Alert rows: idempotent inserts of EARS detections and the queries that read them back.

Like ``repository``, every function takes an open ``Session``; the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from monitor.storage.repository import _insert_new
from monitor.storage.tables import Alert

#: The natural key: one alert per series, method and bucket.
ALERT_KEY = ("task", "granularity", "stratum", "series", "method", "bucket_start")


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
) -> list[Alert]:
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
    return list(session.scalars(query))

