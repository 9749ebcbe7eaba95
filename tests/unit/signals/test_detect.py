"""The parts of detection that need no database: regions, settings, and publishing gauges from a report."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError

from monitor.config import SignalsSettings
from monitor.signals.detect import DetectionReport, SeriesKey, SeriesResult, params_of, publish, region_of
from monitor.signals.ears import c1, complete_buckets

NOW = datetime(2030, 1, 8, tzinfo=UTC)


def test_region_names_country_and_region():
    assert region_of({"country": "GB", "region": "Wales"}) == "GB/Wales"
    assert region_of({"country": " US "}) == "US"
    assert region_of({"region": "Wales", "lat": 51.5}) == "Wales"
    assert region_of({"lat": 51.48, "lon": -3.18}) is None
    assert region_of({"country": 44}) is None and region_of(None) is None


def test_settings_map_to_ears_parameters_and_need_history_for_c3():
    params = params_of(SignalsSettings(baseline=5, guard=1, sd_floor=1.0, c3_threshold=2.5))
    assert (params.baseline, params.guard, params.sd_floor, params.threshold("C3")) == (5, 1, 1.0, 2.5)
    assert params.threshold("C1") == 3.0
    with pytest.raises(ValidationError, match="at least baseline"):
        SignalsSettings(history_buckets=11)
    SignalsSettings(history_buckets=12)


def _series(task: str, values: list[float]) -> SeriesResult:
    starts = tuple(complete_buckets(NOW, "hour", len(values)))
    return SeriesResult(SeriesKey(task, "hour", "all", "count"), starts, tuple(values),
                        tuple(int(v) for v in values), {"C1": tuple(c1(values))})


def test_publish_sets_the_latest_bucket_and_clears_series_that_left():
    spike, short = _series("unit_spike", [2, 3, 1, 2, 2, 3, 1, 12]), _series("unit_short", [1.0, 2.0])
    publish(DetectionReport(NOW, NOW, 26, (spike, short), (), methods=("C1",)))
    labels = {"task": "unit_spike", "granularity": "hour", "stratum": "all", "series": "count"}
    assert REGISTRY.get_sample_value("monitor_signal_observed", labels) == 12
    assert REGISTRY.get_sample_value("monitor_signal_alert", {**labels, "method": "C1"}) == 1.0
    assert REGISTRY.get_sample_value("monitor_signal_expected", {**labels, "method": "C1"}) == 2.0
    short_labels = {**labels, "task": "unit_short"}
    assert REGISTRY.get_sample_value("monitor_signal_observed", short_labels) == 2.0
    assert REGISTRY.get_sample_value("monitor_signal_alert", {**short_labels, "method": "C1"}) is None  # no baseline

    publish(DetectionReport(NOW, NOW, 0, (), (), methods=("C1",)))
    assert REGISTRY.get_sample_value("monitor_signal_alert", {**labels, "method": "C1"}) == 0.0
