"""Alert rows: the first detection of a bucket is kept, and they read back as plain records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from monitor.storage.alerts import StoredAlert, insert_alerts, recent_alerts
from monitor.storage.session import transaction

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def _alert(hour: int, *, task: str = "t", score: float = 4.0) -> dict:
    start = T0 + timedelta(hours=hour)
    return {"task": task, "granularity": "hour", "stratum": "all", "series": "count", "method": "C1",
            "bucket_start": start, "bucket_end": start + timedelta(hours=1), "observed": 9.0, "expected": 2.0,
            "sd": 1.0, "score": score, "threshold": 3.0, "posts": 9, "top_posts": [{"post_id": 1}]}


def test_recent_alerts_are_records_newest_bucket_first(factory):
    with transaction(factory) as session:
        assert insert_alerts(session, [_alert(0), _alert(1), _alert(1, task="u")]) == 3
        assert insert_alerts(session, [_alert(1, score=9.0)]) == 0  # the first detection of a bucket stays
    with transaction(factory) as session:
        latest = recent_alerts(session, limit=2)
        of_t = recent_alerts(session, task="t", since=T0 + timedelta(minutes=30))
    assert all(isinstance(a, StoredAlert) for a in latest)
    hour = T0 + timedelta(hours=1)
    assert [(a.task, a.bucket_start) for a in latest] == [("t", hour), ("u", hour)]
    assert [(a.task, a.score, a.top_posts) for a in of_t] == [("t", 4.0, [{"post_id": 1}])]
    assert of_t[0].bucket_end == T0 + timedelta(hours=2) and of_t[0].detected_at.tzinfo is not None
