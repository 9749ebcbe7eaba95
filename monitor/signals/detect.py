"""Signal series from the database through EARS to alert rows, and the gauges the alert rules read.

``run_detection`` reads the live run's flagged signals for the latest complete buckets, builds one series
per task x granularity (hour, day; UTC) x stratum (all, each source, each region) x kind (``count`` of
flagged posts, ``weighted`` = sum of their calibrated probabilities), scores every series with the
configured EARS methods and writes an alert row for each bucket that alerts. ``publish`` sets the
Prometheus gauges from the report; it is kept apart so detection runs and is tested without them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy.orm import Session

from monitor.config import SignalsSettings
from monitor.signals.ears import (
    STEP,
    EarsParams,
    Granularity,
    Method,
    Score,
    complete_buckets,
    dense_series,
    ears,
    floor_time,
    gate,
)
from monitor.storage.alerts import insert_alerts
from monitor.storage.queries import flagged_signals, latest_explanations, stored_posts

SeriesKind = Literal["count", "weighted"]
#: The stratum of every post of a task; the others are ``source:NAME`` and ``region:COUNTRY/REGION``.
ALL = "all"
_STRATUM_CHARS = 320  # the width of alerts.stratum
_EXCERPT_CHARS = 280


@dataclass(frozen=True)
class SeriesKey:
    task: str
    granularity: Granularity
    stratum: str
    series: SeriesKind


@dataclass(frozen=True)
class SeriesResult:
    """One series over its buckets (oldest first) and its EARS scores per method.

    A score's ``alert`` already requires ``min_posts`` posts in the bucket.
    """

    key: SeriesKey
    starts: tuple[datetime, ...]
    values: tuple[float, ...]
    posts: tuple[int, ...]
    scores: Mapping[Method, tuple[Score, ...]]

    def latest(self, method: Method) -> Score | None:
        """The score of the latest complete bucket, or None while the series is shorter than the baseline."""
        scores = self.scores.get(method, ())
        return scores[-1] if scores and scores[-1].index == len(self.values) - 1 else None


@dataclass(frozen=True)
class DetectedAlert:
    """An alerting bucket of one series and method, with the posts that contributed most."""

    key: SeriesKey
    method: Method
    bucket_start: datetime
    score: Score
    posts: int
    top_posts: tuple[dict[str, Any], ...] = ()
    latest: bool = False  # the latest complete bucket of its series, the one the gauges show

    @property
    def bucket_end(self) -> datetime:
        return self.bucket_start + STEP[self.key.granularity]

    def row(self) -> dict[str, Any]:
        """The ``alerts`` row."""
        s = self.score
        return {"task": self.key.task, "granularity": self.key.granularity, "stratum": self.key.stratum,
                "series": self.key.series, "method": self.method, "bucket_start": self.bucket_start,
                "bucket_end": self.bucket_end, "observed": s.observed, "expected": s.expected, "sd": s.sd,
                "score": s.score, "threshold": s.threshold, "posts": self.posts, "top_posts": list(self.top_posts)}


@dataclass(frozen=True)
class DetectionReport:
    """What one detection run read, scored and wrote."""

    now: datetime
    cutoff: datetime
    signals: int
    series: tuple[SeriesResult, ...]
    alerts: tuple[DetectedAlert, ...]
    inserted: int = 0
    methods: tuple[Method, ...] = ()

    @property
    def latest_alerts(self) -> tuple[DetectedAlert, ...]:
        """The alerts on the latest complete bucket of their series: what the alert gauges report."""
        return tuple(a for a in self.alerts if a.latest)


@dataclass(frozen=True)
class _Flag:
    """A flagged post of a task, as bucketing and strata need it."""

    post_id: int
    task: str
    label: str
    confidence: float
    at: datetime
    source: str
    region: str | None


def params_of(settings: SignalsSettings) -> EarsParams:
    return EarsParams(baseline=settings.baseline, guard=settings.guard, sd_floor=settings.sd_floor,
                      c1_threshold=settings.c1_threshold, c2_threshold=settings.c2_threshold,
                      c3_threshold=settings.c3_threshold)


def region_of(geo: Mapping[str, Any] | None) -> str | None:
    """``COUNTRY/REGION`` (or whichever of the two a post carries) from its geo object; None without."""
    if not isinstance(geo, Mapping):
        return None
    parts = [geo.get(key) for key in ("country", "region")]
    text = "/".join(p.strip() for p in parts if isinstance(p, str) and p.strip())
    return text or None


def _read_flags(session: Session, since: datetime, until: datetime, tasks: Collection[str] | None) -> list[_Flag]:
    """The live run's signals on posts created in [since, until), one per (task, post).

    Two model versions of a task may both flag a post during a model change; it counts once, with the
    higher confidence.
    """
    best: dict[tuple[str, int], _Flag] = {}
    for post_id, task, label, confidence, at, source, geo in flagged_signals(session, since, until, tasks=tasks):
        key = (task, post_id)
        if key not in best or confidence > best[key].confidence:
            best[key] = _Flag(post_id, task, label, float(confidence), at, source, region_of(geo))
    return sorted(best.values(), key=lambda f: (f.task, f.at, f.post_id))


def _busiest(flags: Sequence[_Flag], name_of: Callable[[_Flag], str | None], prefix: str,
             limit: int) -> dict[str, list[_Flag]]:
    """The ``limit`` busiest values of one dimension as strata, or none when it cannot split the posts."""
    groups: dict[str, list[_Flag]] = defaultdict(list)
    for f in flags:
        name = name_of(f)
        if name is not None:
            groups[name].append(f)
    if len(groups) == 1 and len(next(iter(groups.values()))) == len(flags):
        return {}  # one value on every post: the same series as ALL
    ranked = sorted(groups.items(), key=lambda item: (-len(item[1]), item[0]))[:limit]
    return {f"{prefix}:{name}"[:_STRATUM_CHARS]: members for name, members in ranked}


def _strata(flags: Sequence[_Flag], settings: SignalsSettings) -> dict[str, list[_Flag]]:
    """ALL, then (with ``by_stratum``) the busiest sources and regions, each capped at ``max_strata``."""
    strata = {ALL: list(flags)}
    if settings.by_stratum:
        strata.update(_busiest(flags, lambda f: f.source, "source", settings.max_strata))
        strata.update(_busiest(flags, lambda f: f.region, "region", settings.max_strata))
    return strata


def _score_series(key: SeriesKey, starts: Sequence[datetime], flags: Sequence[_Flag], settings: SignalsSettings,
                  params: EarsParams) -> SeriesResult:
    weights = ((f.at, 1.0 if key.series == "count" else f.confidence) for f in flags)
    values, posts = dense_series(weights, starts, key.granularity)
    scores = {m: tuple(gate(ears(values, m, params), posts.tolist(), settings.min_posts)) for m in settings.methods}
    return SeriesResult(key, tuple(starts), tuple(values.tolist()), tuple(posts.tolist()), scores)


def _top_flags(flags: Sequence[_Flag], start: datetime, granularity: Granularity, n: int) -> list[_Flag]:
    inside = [f for f in flags if floor_time(f.at, granularity) == start]
    return sorted(inside, key=lambda f: (-f.confidence, f.post_id))[:n]


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _EXCERPT_CHARS else flat[: _EXCERPT_CHARS - 1] + "\u2026"


def _describe(session: Session, flags: Collection[_Flag]) -> dict[tuple[str, int], dict[str, Any]]:
    """Post text and the latest live explanation of each (task, post), as an alert stores them."""
    ids = {f.post_id for f in flags}
    posts, explained = stored_posts(session, ids), latest_explanations(session, ids)
    described = {}
    for f in flags:
        source, source_id, text = posts.get(f.post_id, (f.source, "", ""))
        e = explained.get((f.task, f.post_id))
        described[(f.task, f.post_id)] = {
            "post_id": f.post_id, "source": source, "source_id": source_id, "created_at": f.at.isoformat(),
            "label": f.label, "confidence": round(f.confidence, 4), "text": _excerpt(text),
            "verdict": e.verdict if e else None, "rationale": e.rationale if e else None,
            "evidence": e.evidence if e else None,
        }
    return described


def run_detection(
    session: Session,
    settings: SignalsSettings,
    *,
    now: datetime,
    write: bool = True,
    tasks: Collection[str] | None = None,
) -> DetectionReport:
    """Score the latest ``history_buckets`` complete buckets of every series; store the alerts (``write``).

    A bucket is complete once it ended ``settle_s`` before ``now``. Re-running over the same buckets
    inserts no duplicate (the alerts' natural key); ``tasks`` limits detection to those tasks.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    cutoff = now - timedelta(seconds=settings.settle_s)
    params = params_of(settings)
    windows = {g: complete_buckets(cutoff, g, settings.history_buckets) for g in settings.granularities}
    since = min(starts[0] for starts in windows.values())
    until = max(starts[-1] + STEP[g] for g, starts in windows.items())
    flags = _read_flags(session, since, until, tasks)
    by_task: dict[str, list[_Flag]] = defaultdict(list)
    for f in flags:
        by_task[f.task].append(f)

    results: list[SeriesResult] = []
    alerting: list[tuple[SeriesResult, Method, Score, list[_Flag]]] = []
    for task, task_flags in sorted(by_task.items()):
        for stratum, members in _strata(task_flags, settings).items():
            for granularity, starts in windows.items():
                for kind in settings.series:
                    key = SeriesKey(task, granularity, stratum, kind)
                    result = _score_series(key, starts, members, settings, params)
                    results.append(result)
                    alerting += [(result, m, s, members) for m in settings.methods for s in result.scores[m] if s.alert]

    # Every method and kind of a stratum's bucket shares its top posts: pick them once, read them in bulk.
    tops: dict[tuple[str, str, str, datetime], list[_Flag]] = {}
    for result, _method, score, members in alerting:
        k = result.key
        at = (k.task, k.granularity, k.stratum, result.starts[score.index])
        if at not in tops:
            tops[at] = _top_flags(members, at[3], k.granularity, settings.top_posts)
    described = _describe(session, {f for top in tops.values() for f in top}) if settings.top_posts else {}
    alerts = []
    for result, method, score, _members in alerting:
        k, start = result.key, result.starts[score.index]
        top = tops[(k.task, k.granularity, k.stratum, start)]
        alerts.append(DetectedAlert(k, method, start, score, result.posts[score.index],
                                    tuple(described[(f.task, f.post_id)] for f in top),
                                    latest=score.index == len(result.values) - 1))
    inserted = insert_alerts(session, [a.row() for a in alerts]) if write and alerts else 0
    return DetectionReport(now=now, cutoff=cutoff, signals=len(flags), series=tuple(results), alerts=tuple(alerts),
                           inserted=inserted, methods=tuple(settings.methods))


# Label sets this process has published, so a series that drops out of a later report (its task went
# quiet over the whole window, or a stratum left the busiest) stops reporting an alert it no longer has.
_published: set[tuple[SeriesKey, Method]] = set()


def publish(report: DetectionReport) -> None:
    """Set the signal gauges from the latest complete bucket of every series in ``report``."""
    # Imported here, not at the top: telemetry creates its metric objects on import, which a worker
    # process must do only after it has set PROMETHEUS_MULTIPROC_DIR.
    from monitor import telemetry

    current: set[tuple[SeriesKey, Method]] = set()
    for result in report.series:
        k = result.key
        series_labels = {"task": k.task, "granularity": k.granularity, "stratum": k.stratum, "series": k.series}
        if result.values:
            telemetry.SIGNAL_OBSERVED.labels(**series_labels).set(result.values[-1])
            telemetry.SIGNAL_BUCKET.labels(**series_labels).set(result.starts[-1].timestamp())
        for method in report.methods:
            latest = result.latest(method)
            if latest is None:
                continue
            labels = {**series_labels, "method": method}
            telemetry.SIGNAL_ALERT.labels(**labels).set(1.0 if latest.alert else 0.0)
            telemetry.SIGNAL_SCORE.labels(**labels).set(latest.score)
            telemetry.SIGNAL_EXPECTED.labels(**labels).set(latest.expected)
            current.add((k, method))
    for k, method in _published - current:
        telemetry.SIGNAL_ALERT.labels(task=k.task, method=method, granularity=k.granularity, stratum=k.stratum,
                                      series=k.series).set(0.0)
    _published.clear()
    _published.update(current)
