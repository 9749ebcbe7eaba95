"""EARS C1, C2 and C3 against values worked out by hand on small series."""

from __future__ import annotations

import math

import numpy as np
import pytest

from monitor.signals.ears import METHODS, EarsParams, Score, c1, c2, c3, ears, gate

# 1..7: mean 4, sum of squared deviations 28, sample sd sqrt(28 / 6).
SD_1_TO_7 = math.sqrt(28 / 6)


def test_c1_is_the_bucket_against_the_seven_before_it():
    (score,) = c1([1, 2, 3, 4, 5, 6, 7, 20])
    assert score.index == 7 and score.observed == 20
    assert score.expected == pytest.approx(4.0)
    assert score.sd == pytest.approx(2.160247, abs=1e-6) == SD_1_TO_7
    assert score.score == pytest.approx(16 / SD_1_TO_7) == pytest.approx(7.406561, abs=1e-6)
    assert score.upper == pytest.approx(4 + 3 * SD_1_TO_7) and score.alert


def test_c1_slides_its_baseline():
    scores = c1([1, 2, 3, 4, 5, 6, 7, 20, 8])
    assert [s.index for s in scores] == [7, 8]
    # Baseline 2..7, 20: mean 47/7; squares 4+9+16+25+36+49+400 = 539; SS = 539 - 47**2/7 = 223.428571
    second = scores[1]
    assert second.expected == pytest.approx(47 / 7)
    assert second.sd == pytest.approx(math.sqrt((539 - 47**2 / 7) / 6))
    assert second.score == pytest.approx((8 - 47 / 7) / math.sqrt(223.428571 / 6), abs=1e-6)
    assert not second.alert  # the spike in the baseline widens it


def test_c2_skips_a_guard_band_of_two():
    quiet, busy = c2([1, 2, 3, 4, 5, 6, 7, 0, 0, 20]), c2([1, 2, 3, 4, 5, 6, 7, 100, 100, 20])
    assert len(quiet) == len(busy) == 1
    for score in (quiet[0], busy[0]):  # the two guard buckets are not in the baseline
        assert score.index == 9
        assert score.expected == pytest.approx(4.0) and score.sd == pytest.approx(SD_1_TO_7)
        assert score.score == pytest.approx(16 / SD_1_TO_7) and score.alert


def test_c3_sums_three_c2_excesses():
    values = [1, 2, 3, 4, 5, 6, 7, 0, 0, 9, 9, 9]
    # C2 at 9: baseline 1..7 -> (9 - 4) / 2.160247 = 2.314550
    # C2 at 10: baseline 2..7,0: mean 27/7, SS 139 - 27**2/7 = 34.857143, sd 2.410295 -> 2.133704
    # C2 at 11: baseline 3..7,0,0: mean 25/7, SS 135 - 25**2/7 = 45.714286, sd 2.760262 -> 1.966687
    c2s = c2(values)
    assert [round(s.score, 6) for s in c2s] == [2.314550, 2.133704, 1.966687]
    assert not any(s.alert for s in c2s)  # no single bucket passes C2's threshold of 3 ...
    (score,) = c3(values)
    assert score.index == 11
    assert score.score == pytest.approx(1.314550 + 1.133704 + 0.966687, abs=1e-5)  # ... but C3 adds them up
    assert score.alert and score.threshold == 2.0
    assert score.expected == pytest.approx(25 / 7) and score.sd == pytest.approx(2.760262, abs=1e-6)
    assert score.upper == -math.inf  # the two earlier terms (2.448) already pass 2


def test_c3_upper_bound_when_the_earlier_terms_do_not_pass():
    values = [1, 2, 3, 4, 5, 6, 7, 0, 0, 4, 4, 9]
    (score,) = c3(values)
    # C2 at 9 and 10 are 0 and 0.059 (both under 1: no excess); so C3 = max(0, C2_11 - 1) alone.
    c2_last = c2(values)[-1]
    assert score.score == pytest.approx(c2_last.score - 1)
    assert score.upper == pytest.approx(c2_last.expected + c2_last.sd * (1 + 2))


def test_alert_means_the_observation_exceeds_upper():
    rng = np.random.default_rng(3)
    for _ in range(50):
        values = rng.poisson(rng.uniform(0.2, 20), size=40).astype(float)
        values[rng.integers(12, 40)] += rng.integers(0, 30)
        for method in METHODS:
            for s in ears(values, method):
                if not math.isclose(s.observed, s.upper):
                    assert s.alert == (s.observed > s.upper), (method, s)


def test_an_empty_baseline_is_scored_against_the_sd_floor():
    one, two = c1([0] * 7 + [1])[0], c1([0] * 7 + [2])[0]
    assert one.sd == 0.5 and one.score == 2.0 and not one.alert
    assert two.score == 4.0 and two.alert and two.upper == 1.5
    (floor_1,) = c1([0] * 7 + [3], EarsParams(sd_floor=1.0))
    assert floor_1.score == 3.0 and not floor_1.alert  # the threshold must be exceeded, as in EARS


def test_a_flat_series_scores_zero_and_nothing_is_nan():
    for method in METHODS:
        scores = ears([5.0] * 20, method)
        assert scores and all(s.score == 0.0 and not s.alert for s in scores)
        assert all(math.isfinite(v) for s in scores for v in (s.expected, s.sd, s.score))


def test_too_short_series_get_no_score():
    assert c1([1.0] * 7) == [] and len(c1([1.0] * 8)) == 1
    assert c2([1.0] * 9) == [] and len(c2([1.0] * 10)) == 1
    assert c3([1.0] * 11) == [] and len(c3([1.0] * 12)) == 1
    assert [EarsParams().warmup(m) for m in METHODS] == [7, 9, 11]
    assert ears([], "C3") == []


def test_baseline_and_guard_are_parameters():
    params = EarsParams(baseline=3, guard=0)
    assert [s.score for s in c2([1, 2, 3, 10, 4], params)] == [s.score for s in c1([1, 2, 3, 10, 4], params)]
    (score,) = c1([1, 2, 3, 10], params)
    assert score.expected == 2.0 and score.sd == 1.0 and score.score == 8.0


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="NaN"):
        c1([1, 2, 3, 4, 5, 6, 7, float("nan")])
    with pytest.raises(ValueError, match="1-D"):
        c1([[1.0, 2.0]])
    with pytest.raises(ValueError, match="sd_floor"):
        EarsParams(sd_floor=0.0)
    with pytest.raises(ValueError, match="at least 2"):
        EarsParams(baseline=1)
    with pytest.raises(ValueError, match="unknown EARS method"):
        ears([1.0] * 12, "C4")  # type: ignore[arg-type]


def test_gate_needs_enough_posts_in_the_bucket():
    scores = c1([0] * 7 + [2, 0, 0, 0, 0, 0, 0, 0, 5])
    assert [s.index for s in scores if s.alert] == [7, 15]
    posts = [0] * 7 + [2, 0, 0, 0, 0, 0, 0, 0, 5]
    gated = gate(scores, posts, 3)
    assert [s.index for s in gated if s.alert] == [15]
    assert [(s.score, s.index) for s in gated] == [(s.score, s.index) for s in scores]
    assert isinstance(gated[0], Score)
