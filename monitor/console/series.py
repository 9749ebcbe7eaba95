"""The signal series around an alert's bucket, rescored with the configured EARS method, for its chart.

EARS scores a bucket from the buckets just before it, so rescoring a short window around the alert
gives the bucket the score detection gave it (unless posts were erased or arrived late since).
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
from sqlalchemy.orm import Session

from monitor.config import SignalsSettings
from monitor.console.chart import SeriesPoint
from monitor.signals.detect import ALL, params_of, region_of
from monitor.signals.ears import STEP, dense_series, ears, gate
from monitor.storage.console import AlertView, bucket_totals
from monitor.storage.queries import flagged_signals

AFTER = 6  # buckets shown after the alert's


def _in_stratum(stratum: str, source: str, geo: object) -> bool:
    if stratum == ALL:
        return True
    kind, _, name = stratum.partition(":")
    if kind == "source":
        return source == name
    if kind == "region":
        return region_of(geo) == name  # type: ignore[arg-type]
    return False


def alert_series(session: Session, alert: AlertView, settings: SignalsSettings, *, now: datetime) -> list[SeriesPoint]:
    """The alert's series from a full baseline before its bucket to a few buckets after (none past ``now``)."""
    params = params_of(settings)
    step = STEP[alert.granularity]  # type: ignore[index]
    lead = params.warmup(alert.method) + 4  # type: ignore[arg-type]
    first = alert.bucket_start - step * lead
    # The alert's bucket, then up to AFTER buckets that have ended by ``now``.
    count = lead + 1 + sum(1 for k in range(1, AFTER + 1) if alert.bucket_start + step * (k + 1) <= now)
    starts = [first + step * i for i in range(count)]
    weighted = alert.series == "weighted"
    kind, _, name = alert.stratum.partition(":")
    if alert.stratum == ALL or kind == "source":
        # Counted by the database: a window of a busy task holds tens of thousands of signals.
        totals = bucket_totals(session, alert.task, starts[0], starts[-1] + step, alert.granularity,
                               source=name if kind == "source" else None)
        values = np.array([totals.get(s, (0, 0.0))[1 if weighted else 0] for s in starts], dtype=float)
        posts = np.array([totals.get(s, (0, 0.0))[0] for s in starts], dtype=np.int64)
    else:  # a region lives in the posts' geo JSON: read the window's signals and bucket them here
        best: dict[int, tuple[datetime, float]] = {}
        for post_id, _task, _label, confidence, at, source, geo in flagged_signals(
                session, starts[0], starts[-1] + step, tasks=[alert.task]):
            if _in_stratum(alert.stratum, source, geo) and (post_id not in best or confidence > best[post_id][1]):
                best[post_id] = (at, float(confidence))
        values, posts = dense_series(((at, c if weighted else 1.0) for at, c in best.values()), starts,
                                     alert.granularity)  # type: ignore[arg-type]
    scores = {s.index: s for s in gate(ears(values, alert.method, params), posts.tolist(),  # type: ignore[arg-type]
                                       settings.min_posts)}
    points = []
    for i, start in enumerate(starts):
        s = scores.get(i)
        points.append(SeriesPoint(start, float(values[i]), s.expected if s else None, s.upper if s else None,
                                  bool(s and s.alert)))
    return points
