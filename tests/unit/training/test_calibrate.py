import numpy as np
import pytest

from monitor.errors import MonitorError

from monitor.evaluation import expected_calibration_error
from monitor.model_card import softmax
from monitor.training.calibrate import choose_threshold, fit_temperature, nll, tune_biases


def _sampled(true_temperature: float, n: int = 20000, k: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 3, size=(n, k))
    probs = softmax(logits, true_temperature)
    gold = np.array([rng.choice(k, p=p) for p in probs])
    return logits, gold


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_the_generating_temperature(true_t):
    logits, gold = _sampled(true_t)
    fitted = fit_temperature(logits, gold)
    assert fitted == pytest.approx(true_t, rel=0.05)
    assert nll(logits, gold, fitted) <= nll(logits, gold, 1.0) + 1e-9


def test_scaling_overconfident_logits_lowers_ece():
    logits, gold = _sampled(3.0)  # labels are noisier than the raw logits claim
    before = softmax(logits)
    after = softmax(logits, fit_temperature(logits, gold))
    correct = before.argmax(1) == gold
    assert expected_calibration_error(after.max(1), correct) < expected_calibration_error(before.max(1), correct) / 2


def test_known_logits_known_temperature():
    # Two classes, logit gap 2; gold agrees with the arg-max 73.1% of the time = sigmoid(1):
    # the NLL minimum is where sigmoid(2 / T) = 0.731, i.e. T = 2.
    n_agree, n = 731, 1000
    logits = np.tile([[2.0, 0.0]], (n, 1))
    gold = np.array([0] * n_agree + [1] * (n - n_agree))
    assert fit_temperature(logits, gold) == pytest.approx(2.0, rel=0.01)


def test_choose_threshold_caps_the_escalated_share():
    conf = np.linspace(0.3, 1.0, 1000)
    t = choose_threshold(conf, 0.10)
    assert (conf < t).mean() <= 0.10
    assert (conf < t).mean() >= 0.099  # and does not waste the budget
    assert choose_threshold(conf, 0.0) == conf.min()
    assert (conf < choose_threshold(conf, 0.0)).sum() == 0
    assert choose_threshold(np.array([0.9, 0.9, 0.9, 0.9]), 0.5) == 0.9  # ties cannot be split
    with pytest.raises(MonitorError):
        choose_threshold(conf, 1.5)


def test_tune_biases_fixes_a_shifted_decision_boundary():
    rng = np.random.default_rng(1)
    gold = rng.integers(0, 2, 2000)
    score_pos = np.clip(0.2 + 0.3 * gold + rng.normal(0, 0.08, 2000), 0.01, 0.99)  # positives peak at 0.5
    probs = np.stack([1 - score_pos, score_pos], axis=1)

    def f1_positive(pred):
        tp = ((pred == 1) & (gold == 1)).sum()
        fp = ((pred == 1) & (gold == 0)).sum()
        fn = ((pred == 0) & (gold == 1)).sum()
        return 2 * tp / (2 * tp + fp + fn)

    base = f1_positive(probs.argmax(1))
    biases, best = tune_biases(probs, gold, f1_positive)
    assert biases[0] == 0 and biases[1] > 0
    assert best > base + 0.2


def test_calibrate_keeps_tuned_decisions_and_calibrates_them():
    from monitor.training.calibrate import calibrate

    rng = np.random.default_rng(2)
    gold = rng.integers(0, 2, 3000)
    logits = np.stack([np.zeros(3000), 4.0 * (gold - 0.8) + rng.normal(0, 1.5, 3000)], axis=1)

    def accuracy(pred, g):
        return float((pred == g).mean())

    biases, temperature = calibrate(logits, gold, accuracy)
    tuned = softmax(logits, temperature, biases)
    assert accuracy(tuned.argmax(1), gold) > accuracy(logits.argmax(1), gold)
    # The temperature is refit after the biases: probabilities of the tuned decisions are calibrated.
    correct = tuned.argmax(1) == gold
    assert expected_calibration_error(tuned.max(1), correct) < 0.03
    none_biases, _ = calibrate(logits, gold, None)
    assert not none_biases.any()
