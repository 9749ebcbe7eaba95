"""UTC buckets, zero-filled series, and the synthetic series the benchmark validates EARS on."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest

from monitor.signals.ears import (
    DetectionRates,
    Score,
    c1,
    complete_buckets,
    dense_series,
    detection_rates,
    floor_time,
    synthetic_series,
)

T = datetime(2024, 5, 1, 12, 30, 15, tzinfo=UTC)


def test_buckets_are_utc_hours_and_days():
    assert floor_time(T, "hour") == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert floor_time(T, "day") == datetime(2024, 5, 1, tzinfo=UTC)
    # 01:30 at UTC+2 is 23:30 UTC the day before.
    local = datetime(2024, 5, 2, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    assert floor_time(local, "day") == datetime(2024, 5, 1, tzinfo=UTC)
    assert floor_time(local, "hour").tzinfo == UTC
    with pytest.raises(ValueError, match="naive"):
        floor_time(datetime(2024, 5, 1), "hour")
    with pytest.raises(ValueError, match="granularity"):
        floor_time(T, "week")  # type: ignore[arg-type]


def test_only_complete_buckets_are_listed():
    hours = complete_buckets(T, "hour", 3)
    assert hours == [datetime(2024, 5, 1, h, tzinfo=UTC) for h in (9, 10, 11)]  # 12:00-13:00 is not over
    on_the_hour = complete_buckets(datetime(2024, 5, 1, 12, tzinfo=UTC), "hour", 1)
    assert on_the_hour == [datetime(2024, 5, 1, 11, tzinfo=UTC)]  # ended at 12:00 exactly: complete
    assert complete_buckets(T, "day", 2) == [datetime(2024, 4, 29, tzinfo=UTC), datetime(2024, 4, 30, tzinfo=UTC)]


def test_dense_series_fills_empty_buckets_with_zero():
    starts = complete_buckets(T, "hour", 4)  # 08, 09, 10, 11
    events = [
        (datetime(2024, 5, 1, 8, 5, tzinfo=UTC), 0.9),
        (datetime(2024, 5, 1, 8, 59, 59, tzinfo=UTC), 0.6),
        (datetime(2024, 5, 1, 11, 0, tzinfo=UTC), 0.75),
        (datetime(2024, 5, 1, 7, 59, tzinfo=UTC), 1.0),  # before the window
        (datetime(2024, 5, 1, 12, 0, tzinfo=UTC), 1.0),  # the bucket still open
    ]
    weights, counts = dense_series(events, starts, "hour")
    assert counts.tolist() == [2, 0, 0, 1]
    assert weights.tolist() == pytest.approx([1.5, 0.0, 0.0, 0.75])
    empty_w, empty_c = dense_series([], [], "hour")
    assert len(empty_w) == len(empty_c) == 0


def test_synthetic_series_are_seeded_and_spikes_have_the_asked_size():
    a = synthetic_series(200, 10.0, seed=1, spike_sd=3.0)
    b = synthetic_series(200, 10.0, seed=1, spike_sd=3.0)
    assert np.array_equal(a.counts, b.counts) and np.array_equal(a.weighted, b.weighted)
    assert a.spikes == tuple(range(16, 200, 24))
    assert set(a.added) == {round(3.0 * math.sqrt(10.0))}  # +9 posts on a Poisson(10) background
    assert (a.weighted <= a.counts + 1e-9).all() and (a.weighted > 0.5 * a.counts - 1e-9).all()
    assert not np.array_equal(a.counts, synthetic_series(200, 10.0, seed=2, spike_sd=3.0).counts)


def test_detection_rates_count_spikes_and_false_alarms():
    def score(index: int, alert: bool) -> Score:
        return Score(index, 0.0, 0.0, 1.0, 0.0, 3.0, 3.0, alert)

    alerts = {11, 21, 22, 40}  # 11 finds the spike at 10 a bucket late; 21-22 echo the spike at 20; 40 is false
    scores = [score(i, i in alerts) for i in range(7, 50)]
    rates = detection_rates(scores, [10, 20, 30, 3])  # the spike at 3 has no score: not counted
    assert (rates.spikes, rates.detected) == (3, 2)
    near = {10, 11, 12, 20, 21, 22, 30, 31, 32}
    assert rates.clean_buckets == 43 - len(near) and rates.false_alarms == 1
    assert rates.sensitivity == pytest.approx(2 / 3)
    assert rates.false_alarms_per_1000 == pytest.approx(1000 / 34)
    pooled = rates + DetectionRates(spikes=1, detected=1, clean_buckets=66, false_alarms=0)
    assert pooled.sensitivity == 0.75 and pooled.false_alarms_per_1000 == pytest.approx(10.0)
    assert math.isnan(DetectionRates().sensitivity)


def test_c1_finds_large_spikes_on_a_busy_background():
    series = synthetic_series(600, 50.0, seed=7, spike_sd=6.0)
    rates = detection_rates(c1(series.counts), series.spikes)
    assert rates.spikes == 25 and rates.sensitivity >= 0.9
