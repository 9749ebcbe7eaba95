import pytest

from monitor.drift import LabelWindow


def test_shares_cover_every_label_and_sum_to_one():
    window = LabelWindow(["neg", "pos", "neutral"], size=10)
    window.add([("pos", 0.9), ("neg", 0.6), ("pos", 0.7), ("neg", 0.8)])
    assert window.shares() == {"neg": 0.5, "pos": 0.5, "neutral": 0.0}
    assert window.mean_confidence() == pytest.approx(0.75)


def test_window_forgets_the_oldest():
    window = LabelWindow(["a", "b"], size=3)
    window.add([("a", 1.0), ("a", 1.0), ("a", 1.0)])
    window.add([("b", 0.4), ("b", 0.4)])
    assert len(window) == 3
    assert window.shares() == pytest.approx({"a": 1 / 3, "b": 2 / 3})
    assert window.mean_confidence() == pytest.approx(0.6)


def test_empty_window_reports_nothing():
    window = LabelWindow(["a"], size=5)
    assert window.shares() == {}
    assert window.mean_confidence() is None


def test_size_must_be_positive():
    with pytest.raises(ValueError):
        LabelWindow(["a"], size=0)
