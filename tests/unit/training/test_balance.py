"""Class weights from counts, and resampling to a class ratio: exact targets, seeded, nothing invented."""

import math
import random
from collections import Counter
from dataclasses import dataclass

import pytest

from monitor.errors import DataError, MonitorError
from monitor.training.balance import class_weights, resample, resample_targets

LABELS = ["a"] * 6 + ["b"] * 3 + ["c"]


@dataclass(frozen=True)
class Post:
    id: str
    text: str
    label: str


def split(**counts):
    return [Post(f"{label}{i}", f"text {label} {i}", label) for label, n in counts.items() for i in range(n)]


def test_inverse_weights_are_sklearns_balanced_formula():
    weights = class_weights(LABELS, ["a", "b", "c"])
    assert list(weights) == ["a", "b", "c"]
    assert weights == pytest.approx({"a": 10 / 18, "b": 10 / 9, "c": 10 / 3})


def test_sqrt_inverse_weights():
    weights = class_weights(LABELS, ["c", "b", "a"], scheme="sqrt_inverse")
    scale = 10 / (6 / math.sqrt(6) + 3 / math.sqrt(3) + 1)
    assert weights == pytest.approx({"a": scale / math.sqrt(6), "b": scale / math.sqrt(3), "c": scale})
    assert weights["c"] / weights["a"] == pytest.approx(math.sqrt(6))


def test_effective_number_weights_follow_cui_et_al():
    weights = class_weights(LABELS, ["a", "b", "c"], scheme="effective_number", beta=0.9)
    # (1 - beta) / (1 - beta**n) for n = 6, 3, 1, by hand: 0.1/0.468559, 0.1/0.271, 0.1/0.1.
    raw = {"a": 0.1 / 0.468559, "b": 0.1 / 0.271, "c": 1.0}
    scale = 10 / (6 * raw["a"] + 3 * raw["b"] + raw["c"])
    assert weights == pytest.approx({label: w * scale for label, w in raw.items()})
    near_inverse = class_weights(LABELS, ["a", "b", "c"], scheme="effective_number", beta=0.999999)
    assert near_inverse == pytest.approx(class_weights(LABELS, ["a", "b", "c"]), rel=1e-4)
    flat = class_weights(LABELS, ["a", "b", "c"], scheme="effective_number", beta=0.0)
    assert flat == pytest.approx({"a": 1.0, "b": 1.0, "c": 1.0})


@pytest.mark.parametrize("scheme", ["inverse", "sqrt_inverse", "effective_number"])
def test_every_scheme_has_mean_one_over_samples_and_favours_rare_classes(scheme):
    labels = ["x"] * 90 + ["y"] * 9 + ["z"]
    weights = class_weights(labels, ["x", "y", "z"], scheme=scheme)
    assert sum(weights[label] for label in labels) / len(labels) == pytest.approx(1.0)
    assert weights["x"] < weights["y"] < weights["z"]


def test_absent_or_unknown_classes_are_errors():
    with pytest.raises(DataError, match="'d'"):
        class_weights(LABELS, ["a", "b", "c", "d"])
    with pytest.raises(DataError, match="'c'"):
        class_weights(LABELS, ["a", "b"])
    with pytest.raises(MonitorError, match="scheme"):
        class_weights(LABELS, ["a", "b", "c"], scheme="focal")
    with pytest.raises(MonitorError, match="beta"):
        class_weights(LABELS, ["a", "b", "c"], scheme="effective_number", beta=1.0)


@pytest.mark.parametrize(
    ("strategy", "ratio", "expected"),
    [
        ("over", 1.0, {"a": 10, "b": 10, "c": 10}),
        ("over", 0.5, {"a": 10, "b": 5, "c": 5}),
        ("over", 0.3, {"a": 10, "b": 4, "c": 3}),
        ("under", 1.0, {"a": 1, "b": 1, "c": 1}),
        ("under", 0.5, {"a": 2, "b": 2, "c": 1}),
        ("both", 1.0, {"a": 3, "b": 3, "c": 3}),  # sqrt(1 * 10) rounds to 3
        ("both", 0.1, {"a": 10, "b": 4, "c": 1}),  # already within the ratio: unchanged
    ],
)
def test_resample_reaches_exact_target_counts(strategy, ratio, expected):
    result = resample(split(a=10, b=4, c=1), seed=0, target_ratio=ratio, strategy=strategy)
    assert result.before == {"a": 10, "b": 4, "c": 1}
    assert result.after == expected == dict(Counter(x.label for x in result.examples))


def test_targets_use_exact_arithmetic():
    # In floats 0.55 * 100 is 55.00000000000001, whose ceiling would be 56.
    assert resample_targets({"a": 100, "b": 10}, target_ratio=0.55) == {"a": 100, "b": 55}


def test_both_meets_in_the_geometric_middle():
    assert resample_targets({"a": 100, "b": 25}, strategy="both") == {"a": 50, "b": 50}
    # Shrink and growth factors match: 100 / 71 ~ 36 / 25 ~ sqrt(0.5 * 100 / 25).
    assert resample_targets({"a": 100, "b": 25, "c": 60}, target_ratio=0.5, strategy="both") == {
        "a": 71, "b": 36, "c": 60,
    }


@pytest.mark.parametrize("strategy", ["over", "under", "both"])
def test_every_ratio_is_met(strategy):
    rng = random.Random(0)
    for _ in range(300):
        counts = {f"c{i}": rng.randint(1, 500) for i in range(rng.randint(2, 5))}
        ratio = rng.choice([1.0, 0.75, 0.5, 0.3, 0.1, 1 / 3])
        target = resample_targets(counts, target_ratio=ratio, strategy=strategy)
        assert min(target.values()) / max(target.values()) >= ratio - 1e-12, (counts, ratio, target)
        for label, n in counts.items():
            if strategy == "over":
                assert target[label] >= n
            elif strategy == "under":
                assert target[label] <= n


def test_oversampling_repeats_each_example_evenly_and_invents_nothing():
    examples = split(a=10, c=3)
    result = resample(examples, seed=4)
    ids = Counter(x.id for x in result.examples if x.label == "c")
    assert sorted(ids.values()) == [3, 3, 4]  # 10 = 3 + 3 + 4, round-robin
    originals = {id(x) for x in examples}
    assert all(id(x) in originals for x in result.examples)  # the same objects, repeated


def test_undersampling_keeps_a_subset_in_input_order():
    examples = split(a=10, c=3)
    result = resample(examples, seed=4, strategy="under")
    assert [x for x in examples if x in result.examples] == result.examples
    assert len(set(x.id for x in result.examples)) == len(result.examples) == 6


def test_resample_is_seeded_and_independent_of_input_order():
    examples = split(a=12, b=5, c=2)
    first = resample(examples, seed=1, strategy="both")
    assert first == resample(examples, seed=1, strategy="both")
    shuffled = resample(random.Random(2).sample(examples, len(examples)), seed=1, strategy="both")
    assert Counter(x.id for x in shuffled.examples) == Counter(x.id for x in first.examples)
    picks = {tuple(sorted(x.id for x in resample(examples, seed=s, strategy="under").examples)) for s in range(5)}
    assert len(picks) > 1
    assert "a 12->" in first.summary()


def test_resample_edge_cases():
    assert resample([], seed=0).examples == []
    single = split(a=3)
    assert resample(single, seed=0).examples == single
    with pytest.raises(MonitorError):
        resample(single, seed=0, target_ratio=1.5)
    with pytest.raises(MonitorError):
        resample(single, seed=0, strategy="smote")
