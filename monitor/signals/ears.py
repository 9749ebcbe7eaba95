"""EARS C1, C2 and C3 over a series of per-bucket values, UTC bucketing, and synthetic checks of both.

Pure (numpy only, no I/O) and deterministic: synthetic series take a seed. The statistics follow the
CDC's Early Aberration Reporting System as written down by Fricker, Hegler & Dunfee (2008), "Comparing
syndromic surveillance detection methods: EARS' versus a CUSUM-based methodology", Statistics in
Medicine 27:3407-3429, and as the R package ``surveillance`` implements them (``earsC``, Salmon & Burkom):

- C1 ("MILD"): baseline = the 7 buckets just before bucket t; ``C1_t = (x_t - mean) / sd``.
- C2 ("MEDIUM"): the same over the 7 buckets that end 3 buckets before t: a guard band of 2 buckets
  keeps the first buckets of a slowly rising outbreak out of its own baseline.
- C3 ("HIGH"): ``C3_t = sum_{i=t-2..t} max(0, C2_i - 1)``: the C2 excess over one sd, summed over the
  bucket tested and the two before it, so a rise spread over a few buckets adds up.
- ``sd`` is the sample standard deviation (n - 1 denominator, as R's ``sd``). A bucket alerts when its
  statistic *exceeds* the threshold (3 for C1 and C2, 2 for C3: the CDC's defaults), strictly, as both
  references do; ``upper`` is therefore the value the observation must exceed.

``sd`` is floored at ``sd_floor`` (``earsC``'s ``minSigma``, which Burkom suggests at 0.5 to 1 for
sparse data): over a flat baseline, seven empty hours say, the score of a single post would otherwise be
infinite. With the default floor of 0.5, an all-zero baseline needs more than 1.5 to pass C1 or C2.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

Method = Literal["C1", "C2", "C3"]
Granularity = Literal["hour", "day"]
METHODS: tuple[Method, ...] = ("C1", "C2", "C3")
GRANULARITIES: tuple[Granularity, ...] = ("hour", "day")
STEP: dict[str, timedelta] = {"hour": timedelta(hours=1), "day": timedelta(days=1)}

#: C3 sums its C2 terms over the bucket tested and the two before it, each less one sd (Fricker et al.).
C3_SPAN = 3
_C3_OFFSET = 1.0


@dataclass(frozen=True)
class EarsParams:
    """Baseline length, guard band (C2 and C3; C1 has none by definition), sd floor and thresholds."""

    baseline: int = 7
    guard: int = 2
    sd_floor: float = 0.5
    c1_threshold: float = 3.0
    c2_threshold: float = 3.0
    c3_threshold: float = 2.0

    def __post_init__(self) -> None:
        if self.baseline < 2:
            raise ValueError(f"a standard deviation needs a baseline of at least 2 buckets, got {self.baseline}")
        if self.guard < 0:
            raise ValueError(f"the guard band cannot be negative, got {self.guard}")
        if not (math.isfinite(self.sd_floor) and self.sd_floor > 0):
            raise ValueError(f"sd_floor must be a positive number (a flat baseline divides by it), got {self.sd_floor}")

    def threshold(self, method: Method) -> float:
        return {"C1": self.c1_threshold, "C2": self.c2_threshold, "C3": self.c3_threshold}[method]

    def warmup(self, method: Method) -> int:
        """Index of the first bucket with a full baseline: buckets before it get no score."""
        if method == "C1":
            return self.baseline
        lead = self.baseline + self.guard
        return lead + C3_SPAN - 1 if method == "C3" else lead


@dataclass(frozen=True)
class Score:
    """One bucket's EARS result. ``sd`` is the floored sd the score was divided by; the bucket alerts
    when ``score > threshold``, i.e. when ``observed > upper`` (``-inf`` for a C3 whose two earlier
    terms already exceed the threshold)."""

    index: int
    observed: float
    expected: float
    sd: float
    score: float
    threshold: float
    upper: float
    alert: bool


def _as_series(values: Sequence[float] | np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise ValueError(f"expected a 1-D series, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError("the series holds NaN or infinite values")
    return array


def _shewhart(values: np.ndarray, params: EarsParams, *, lag: int, threshold: float) -> list[Score]:
    """C1 (lag 0) and C2 (lag = guard): the bucket against the mean and sd of a window before it."""
    first = params.baseline + lag
    if len(values) <= first:
        return []
    # Row j of the view is values[j : j + baseline]: the baseline of bucket j + baseline + lag.
    windows = sliding_window_view(values, params.baseline)[: len(values) - first]
    means = windows.mean(axis=1)
    sds = np.maximum(windows.std(axis=1, ddof=1), params.sd_floor)
    scores = []
    for offset, (mean, sd) in enumerate(zip(means.tolist(), sds.tolist(), strict=True)):
        index = first + offset
        observed = float(values[index])
        score = (observed - mean) / sd
        scores.append(Score(index, observed, mean, sd, score, threshold, mean + threshold * sd, score > threshold))
    return scores


def c1(values: Sequence[float] | np.ndarray, params: EarsParams = EarsParams()) -> list[Score]:
    """EARS C1 for every bucket that has the ``baseline`` buckets just before it."""
    return _shewhart(_as_series(values), params, lag=0, threshold=params.c1_threshold)


def c2(values: Sequence[float] | np.ndarray, params: EarsParams = EarsParams()) -> list[Score]:
    """EARS C2 for every bucket that has a baseline ending ``guard + 1`` buckets before it."""
    return _shewhart(_as_series(values), params, lag=params.guard, threshold=params.c2_threshold)


def c3(values: Sequence[float] | np.ndarray, params: EarsParams = EarsParams()) -> list[Score]:
    """EARS C3 for every bucket whose own C2 and the two C2s before it exist.

    ``expected`` and ``sd`` are those of the bucket's own C2 baseline.
    """
    c2s = _shewhart(_as_series(values), params, lag=params.guard, threshold=params.c2_threshold)
    terms = [max(0.0, s.score - _C3_OFFSET) for s in c2s]
    threshold = params.c3_threshold
    scores = []
    for k in range(C3_SPAN - 1, len(c2s)):
        current = c2s[k]
        prior = sum(terms[k - C3_SPAN + 1 : k])
        score = prior + terms[k]
        # The bucket alerts when its own term exceeds (threshold - prior), a term that is never negative.
        upper = current.expected + current.sd * (_C3_OFFSET + threshold - prior) if prior <= threshold else -math.inf
        scores.append(Score(current.index, current.observed, current.expected, current.sd, score, threshold, upper,
                            score > threshold))
    return scores


def ears(values: Sequence[float] | np.ndarray, method: Method, params: EarsParams = EarsParams()) -> list[Score]:
    """The named EARS method over ``values`` (one float per bucket, oldest first)."""
    if method == "C1":
        return c1(values, params)
    if method == "C2":
        return c2(values, params)
    if method == "C3":
        return c3(values, params)
    raise ValueError(f"unknown EARS method {method!r}; expected one of {', '.join(METHODS)}")


def gate(scores: Sequence[Score], posts: Sequence[int], min_posts: int) -> list[Score]:
    """The scores with ``alert`` kept only where the bucket holds at least ``min_posts`` posts.

    The sd floor alone would let two posts after an empty week alert; a few posts are too easily one
    author or a thread for anyone to act on, whatever the statistic says.
    """
    return [s if not s.alert or posts[s.index] >= min_posts else replace(s, alert=False) for s in scores]


# -- bucketing ----------------------------------------------------------------------------------------

def floor_time(ts: datetime, granularity: Granularity) -> datetime:
    """The start of the UTC bucket holding ``ts`` (an aware timestamp)."""
    if ts.tzinfo is None:
        raise ValueError(f"naive datetime {ts!r}: pass a timezone-aware timestamp")
    ts = ts.astimezone(UTC)
    if granularity == "hour":
        return ts.replace(minute=0, second=0, microsecond=0)
    if granularity == "day":
        return ts.replace(hour=0, minute=0, second=0, microsecond=0)
    raise ValueError(f"unknown granularity {granularity!r}; expected hour or day")


def complete_buckets(now: datetime, granularity: Granularity, count: int) -> list[datetime]:
    """Starts of the ``count`` latest buckets that ended by ``now``, oldest first."""
    end = floor_time(now, granularity)
    step = STEP[granularity]
    return [end - step * (count - i) for i in range(count)]


def dense_series(
    events: Iterable[tuple[datetime, float]], starts: Sequence[datetime], granularity: Granularity
) -> tuple[np.ndarray, np.ndarray]:
    """Sum of weights and number of events per bucket, zero-filled, for contiguous bucket ``starts``.

    Events outside the buckets are left out, so the caller may pass a wider selection.
    """
    weights = np.zeros(len(starts))
    counts = np.zeros(len(starts), dtype=np.int64)
    if not starts:
        return weights, counts
    first, step = starts[0], STEP[granularity]
    for ts, weight in events:
        index = (floor_time(ts, granularity) - first) // step
        if 0 <= index < len(starts):
            weights[index] += weight
            counts[index] += 1
    return weights, counts


# -- synthetic validation ----------------------------------------------------------------------------

@dataclass(frozen=True)
class SyntheticSeries:
    """Seeded Poisson posts per bucket and the sum of their calibrated probabilities, with spikes."""

    counts: np.ndarray
    weighted: np.ndarray
    spikes: tuple[int, ...]
    added: tuple[int, ...]


def synthetic_series(
    n: int,
    mean: float,
    *,
    seed: int,
    spike_sd: float,
    spike_every: int = 24,
    first_spike: int = 16,
    weekly_amplitude: float = 0.0,
    confidence: tuple[float, float] = (8.0, 2.0),
) -> SyntheticSeries:
    """A background of Poisson(mean) posts per bucket with one-bucket spikes every ``spike_every`` buckets.

    A spike adds ``round(spike_sd * sqrt(rate))`` posts (``spike_sd`` background standard deviations)
    to its bucket. ``weekly_amplitude`` modulates the rate with a 7-bucket sine (daily buckets with a
    weekly rhythm). Each post carries a calibrated probability drawn from Beta(*confidence), so the
    weighted series is the count series seen through a confident classifier.
    """
    if n < 1 or mean <= 0 or spike_every < 1:
        raise ValueError("n and spike_every must be positive and mean above zero")
    rng = np.random.default_rng(seed)
    rate = mean * (1.0 + weekly_amplitude * np.sin(2.0 * np.pi * np.arange(n) / 7.0))
    counts = rng.poisson(np.maximum(rate, 0.0))
    spikes = tuple(range(first_spike, n, spike_every))
    added = tuple(round(spike_sd * math.sqrt(rate[i])) for i in spikes)
    for index, extra in zip(spikes, added, strict=True):
        counts[index] += extra
    draws = rng.beta(*confidence, size=int(counts.sum()))
    weighted = np.bincount(np.repeat(np.arange(n), counts), weights=draws, minlength=n)
    return SyntheticSeries(counts=counts, weighted=weighted, spikes=spikes, added=added)


@dataclass(frozen=True)
class DetectionRates:
    """Spikes found and false alarms over clean buckets; add two to pool several series."""

    spikes: int = 0
    detected: int = 0
    clean_buckets: int = 0
    false_alarms: int = 0

    @property
    def sensitivity(self) -> float:
        return self.detected / self.spikes if self.spikes else math.nan

    @property
    def false_alarms_per_1000(self) -> float:
        return 1000.0 * self.false_alarms / self.clean_buckets if self.clean_buckets else math.nan

    def __add__(self, other: DetectionRates) -> DetectionRates:
        return DetectionRates(self.spikes + other.spikes, self.detected + other.detected,
                              self.clean_buckets + other.clean_buckets, self.false_alarms + other.false_alarms)


def detection_rates(
    scores: Sequence[Score], spikes: Sequence[int], *, window: int = 1, echo: int = C3_SPAN - 1
) -> DetectionRates:
    """Sensitivity and false alarms of scored buckets against known spike positions.

    A spike counts as detected when a bucket from the spike to ``window`` buckets after it alerts; only
    spikes in scored buckets count. A false alarm is an alert on a clean bucket: a scored bucket that is
    neither a spike nor one of the ``echo`` buckets after one (C3 keeps a spike's C2 term for two more
    buckets, so its alerts there are the spike's, not false ones).
    """
    scored = {s.index for s in scores}
    alerts = {s.index for s in scores if s.alert}
    counted = [i for i in spikes if i in scored]
    detected = sum(any(i + k in alerts for k in range(window + 1)) for i in counted)
    near = {i + k for i in spikes for k in range(max(window, echo) + 1)}
    clean = scored - near
    return DetectionRates(len(counted), detected, len(clean), len(alerts & clean))
