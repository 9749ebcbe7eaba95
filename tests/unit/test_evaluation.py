import numpy as np
import pytest

from monitor.evaluation import (
    confusion_matrix,
    evaluate,
    expected_calibration_error,
    plot_confusion,
    plot_precision_recall,
    plot_reliability,
    task_metric,
)

LABELS = ("negative", "neutral", "positive")


def test_confusion_and_metrics_match_hand_counts():
    gold = ["positive", "positive", "negative", "neutral", "positive", "negative"]
    pred = ["positive", "negative", "negative", "positive", "positive", "negative"]
    m = confusion_matrix(gold, pred, LABELS)
    assert m.tolist() == [[2, 0, 0], [0, 0, 1], [1, 0, 2]]
    assert task_metric(m, LABELS, "f1_positive", positive_label="positive") == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert task_metric(m, LABELS, "micro_f1") == pytest.approx(4 / 6)
    # macro over all three classes: negative 0.8, neutral 0, positive 2/3
    assert task_metric(m, LABELS, "macro_f1") == pytest.approx((0.8 + 0 + 2 / 3) / 3)
    # SMM4H-style micro-F1 over a subset of labels: TP 2+2, FP 1+1, FN 0+1
    assert task_metric(m, LABELS, "micro_f1", metric_labels=["negative", "positive"]) == pytest.approx(8 / 11)


def test_ece_of_perfectly_calibrated_and_overconfident():
    conf = np.full(1000, 0.8)
    correct = np.array([1] * 800 + [0] * 200)
    assert expected_calibration_error(conf, correct) == pytest.approx(0.0)
    assert expected_calibration_error(np.full(1000, 0.99), correct) == pytest.approx(0.19)


def test_evaluate_report_and_plots(tmp_path):
    rng = np.random.default_rng(0)
    gold = list(rng.choice(LABELS, 200))
    probs = rng.dirichlet([1, 1, 1], 200)
    report = evaluate(gold, probs, LABELS, metric="macro_f1")
    assert report.n == 200 and sum(map(sum, report.confusion)) == 200
    assert 0 <= report.ece <= 1
    assert set(report.as_dict()["per_class"]) == set(LABELS)
    for path in (
        plot_confusion(report, tmp_path / "c.png", title="t"),
        plot_reliability(probs, np.zeros(len(probs), dtype=int), tmp_path / "r.png", title="t", before=probs),
        plot_precision_recall(gold, probs, LABELS, tmp_path / "pr.png", title="t"),
    ):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_ece_of_a_calibrated_model_is_known_and_a_miscalibrated_one_exceeds_it():
    """Rows right with probability their confidence: the measured ECE sits under the 95th percentile
    ece_if_calibrated gives, which is larger on 70 rows than on 5,000; an overconfident model's ECE is above it."""
    from monitor.evaluation import ece_if_calibrated, expected_calibration_error

    rng = np.random.default_rng(11)
    inside = 0
    for trial in range(40):
        confidence = rng.uniform(0.4, 1.0, 300)
        correct = rng.random(300) < confidence
        mean, p95 = ece_if_calibrated(confidence, seed=trial)
        assert 0 < mean < p95
        inside += expected_calibration_error(confidence, correct) <= p95
    assert inside >= 34  # about 95% of 40
    small, _ = ece_if_calibrated(rng.uniform(0.4, 1.0, 70))
    large, _ = ece_if_calibrated(rng.uniform(0.4, 1.0, 5000))
    assert small > 0.06 and large < 0.02 and small > 4 * large
    confidence = rng.uniform(0.6, 1.0, 600)
    overconfident = rng.random(600) < confidence - 0.15
    assert expected_calibration_error(confidence, overconfident) > ece_if_calibrated(confidence)[1]
    assert ece_if_calibrated(np.array([])) == (0.0, 0.0)
