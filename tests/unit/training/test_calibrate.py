import numpy as np
import pytest

from monitor.errors import MonitorError

from monitor.evaluation import expected_calibration_error
from monitor.model_card import softmax
from monitor.training.calibrate import choose_threshold, fit_temperature, nll, prior_biases, tune_biases


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


def _minority_task(n: int, seed: int, *, overconfidence: float = 2.5):
    """Binary task, class 1 a 10% minority; the network's logits are ``overconfidence`` times the true ones."""
    rng = np.random.default_rng(seed)
    true_logit = rng.normal(-2.6, 1.6, n)  # log-odds of class 1
    gold = (rng.random(n) < 1 / (1 + np.exp(-true_logit))).astype(np.int64)
    logits = np.stack([np.zeros(n), overconfidence * true_logit], axis=1)
    return logits, gold


def _f1_positive(pred, gold):
    tp = float(((pred == 1) & (gold == 1)).sum())
    return 2 * tp / max(1.0, float((pred == 1).sum() + (gold == 1).sum()))


def _top_ece(probs, gold):
    return expected_calibration_error(probs.max(1), probs.argmax(1) == gold)


def test_calibration_and_decision_rule_stay_apart():
    """Known miscalibration (logits 2.5x too sharp) and a known better decision for a minority class's F1:
    the calibration undoes the first, the decision rule finds the second, neither leaks into the other."""
    from monitor.model_card import ModelCard
    from monitor.training.calibrate import fit_calibration, fit_decision

    val_logits, val_gold = _minority_task(6000, seed=3)
    test_logits, test_gold = _minority_task(20000, seed=4)

    calibration = fit_calibration(val_logits, val_gold)
    assert calibration.method in ("temperature", "vector")
    probs = calibration.apply(test_logits)
    raw = softmax(test_logits)
    assert _top_ece(raw, test_gold) > 0.05  # the miscalibration is real
    assert _top_ece(probs, test_gold) < 0.02  # and undone
    if calibration.method == "temperature":
        assert calibration.temperature == pytest.approx(2.5, rel=0.1)

    decision = fit_decision(calibration.apply(val_logits), val_gold, _f1_positive, metric="f1_positive")
    assert decision.kind == "log_bias" and decision.biases[0] == 0 and decision.biases[1] > 0
    served = decision.apply(probs)
    assert _f1_positive(served, test_gold) > _f1_positive(probs.argmax(1), test_gold) + 0.02
    # For F1 the best cut on a calibrated probability is below 0.5 (about F1*/2): the bias moves it there.
    cut = probs[served == 1, 1].min()
    assert 0.15 < cut < 0.45

    card_fields = dict(model_version="t-1", task="t", labels=["no", "yes"], signal_labels=["yes"], metric="f1_positive",
                       base_model="b", max_length=8, created_at="2026-01-01T00:00:00Z")
    card = ModelCard(format_version=2, calibration=calibration, decision=decision, **card_fields)
    bare = ModelCard(format_version=2, calibration=calibration, **card_fields)
    # The decision never touches the served probabilities; it only picks the label.
    np.testing.assert_array_equal(card.probabilities(test_logits), bare.probabilities(test_logits))
    np.testing.assert_array_equal(card.decide(probs), served)
    np.testing.assert_array_equal(bare.decide(probs), probs.argmax(1))

    # The old recipe folded the biases into the logits before one temperature: its probabilities
    # carried the decision shift and were worse calibrated than the raw softmax of a good model.
    old = ModelCard(temperature=1.0, biases=[0.0, 2.5 * decision.biases[1]], **card_fields)
    assert _top_ece(old.probabilities(test_logits), test_gold) > _top_ece(probs, test_gold) + 0.02


def test_fit_calibration_prefers_the_simpler_method_when_it_is_enough():
    from monitor.training.calibrate import fit_calibration

    logits, gold = _sampled(2.0, n=4000, seed=5)
    fitted = fit_calibration(logits, gold)
    assert fitted.method == "temperature" or fitted.nll["vector"] < fitted.nll["temperature"]
    assert set(fitted.nll) == {"none", "temperature", "vector"}
    assert fitted.nll["none"] > fitted.nll["temperature"]


def test_vector_scaling_fixes_a_per_class_shift_temperature_cannot():
    from monitor.training.calibrate import fit_calibration

    logits, gold = _sampled(1.0, n=6000, k=3, seed=7)
    shifted = logits + np.array([0.0, 1.5, -1.0])  # a per-class offset: one temperature cannot undo it
    fitted = fit_calibration(shifted, gold)
    assert fitted.method == "vector"
    assert np.allclose(np.asarray(fitted.offset) - fitted.offset[0], [0.0, -1.5, 1.0], atol=0.25)
    fresh, fresh_gold = _sampled(1.0, n=6000, k=3, seed=8)
    assert _top_ece(fitted.apply(fresh + np.array([0.0, 1.5, -1.0])), fresh_gold) < 0.02


def test_calibration_of_a_tiny_split_falls_back_to_temperature():
    from monitor.training.calibrate import fit_calibration

    logits, gold = _sampled(1.0, n=6, seed=9)
    assert fit_calibration(logits, gold).method == "temperature"
    assert fit_calibration(np.zeros((0, 3)), np.zeros(0, dtype=np.int64)).method == "none"

def _accuracy(pred, gold):
    return float((pred == gold).mean())


def test_the_decision_policy_follows_the_metric():
    from monitor.training.calibrate import decision_policy

    assert decision_policy("macro_f1", over_all_labels=True) == "prior"
    assert decision_policy("f1_positive", over_all_labels=True) == "plugin"
    assert decision_policy("f1_positive", over_all_labels=True, labels=3) == "tuned"  # no one cut
    assert decision_policy("micro_f1", over_all_labels=True) == "tuned"  # the arg-max would never serve a rare class
    assert decision_policy("macro_f1", over_all_labels=False) == "tuned"


def test_each_policy_gives_its_rule():
    """On the same calibrated probabilities: the arg-max fits nothing, the prior rule undoes the
    classes' shares of validation, and biases tuned on 40 rows find a shift that only luck makes
    "help" (the arg-max of calibrated probabilities is what maximises accuracy)."""
    from monitor.training.calibrate import fit_decision

    rng = np.random.default_rng(5)
    probabilities = rng.dirichlet([1.0, 1.0, 1.0], size=40)
    gold = np.array([rng.choice(3, p=p) for p in probabilities])
    argmax = fit_decision(probabilities, gold, _accuracy, metric="micro_f1", policy="argmax")
    assert argmax.kind == "argmax" and argmax.fitted == "argmax" and argmax.tuned_for == "micro_f1"
    np.testing.assert_array_equal(argmax.apply(probabilities), probabilities.argmax(1))
    prior = fit_decision(probabilities, gold, _accuracy, policy="prior")
    assert prior.fitted == "prior"
    np.testing.assert_allclose(prior.biases, prior_biases(gold, 3))
    lucky = fit_decision(probabilities, gold, _accuracy, policy="tuned")
    assert lucky.fitted == "tuned" and any(lucky.biases)
    assert _accuracy(lucky.apply(probabilities), gold) > _accuracy(probabilities.argmax(1), gold)
    assert fit_decision(probabilities, gold, None, policy="prior") == fit_decision(probabilities, gold, None)


def test_the_prior_corrected_rule_maximises_mean_recall_of_calibrated_probabilities():
    """Calibrated probabilities of a rare class the model is never sure of: the arg-max never serves
    it, and dividing by the prior (on a large sample, which tuning would approach) serves it, with a
    higher mean recall than the arg-max and as high as the best tuned biases."""
    from monitor.training.calibrate import fit_decision

    rng = np.random.default_rng(2)
    n, k = 20000, 3
    prior = np.array([0.75, 0.2, 0.05])
    # Each row's calibrated posterior; its gold label drawn from it, so the probabilities are calibrated.
    probabilities = rng.dirichlet(8 * prior, size=n)
    gold = np.array([rng.choice(k, p=p) for p in probabilities])

    def mean_recall(pred, g):
        return float(np.mean([(pred[g == c] == c).mean() for c in range(k)]))

    corrected = fit_decision(probabilities, gold, mean_recall, policy="prior")
    tuned = fit_decision(probabilities, gold, mean_recall, policy="tuned")
    assert mean_recall(corrected.apply(probabilities), gold) > mean_recall(probabilities.argmax(1), gold) + 0.05
    assert mean_recall(corrected.apply(probabilities), gold) >= mean_recall(tuned.apply(probabilities), gold) - 0.01
    np.testing.assert_allclose(corrected.biases, prior_biases(gold, k), atol=1e-12)


def test_prior_biases():
    np.testing.assert_allclose(prior_biases(np.array([0] * 80 + [1] * 16 + [2] * 4), 3),
                               [0.0, np.log(5.0), np.log(20.0)])
    np.testing.assert_allclose(prior_biases(np.array([0, 0, 1, 1]), 3), [0.0, 0.0, np.log(4.0)])  # absent: half a row


def test_the_plug_in_f1_threshold_reads_no_label_and_lands_near_the_best_cut():
    """On calibrated probabilities the cut that maximises the F1 they expect is close to the cut that
    maximises the F1 of the drawn labels, and below 0.5 (about F1*/2)."""
    from monitor.training.calibrate import fit_decision, plugin_f1_threshold

    rng = np.random.default_rng(7)
    positive = 1 / (1 + np.exp(-rng.normal(-2.6, 1.6, 20000)))  # calibrated P(class 1), a 10% minority
    gold = (rng.random(20000) < positive).astype(np.int64)
    t = plugin_f1_threshold(positive)
    best = max(np.linspace(0.02, 0.98, 97), key=lambda c: _f1_positive((positive >= c).astype(int), gold))
    assert 0.1 < t < 0.45 and abs(t - best) < 0.08
    best_f1 = _f1_positive((positive >= best).astype(int), gold)
    assert _f1_positive((positive >= t).astype(int), gold) > best_f1 - 0.01
    assert _f1_positive((positive >= t).astype(int), gold) > _f1_positive((positive >= 0.5).astype(int), gold) + 0.03
    probabilities = np.stack([1 - positive, positive], axis=1)
    rule = fit_decision(probabilities, gold, _f1_positive, policy="plugin")
    assert rule.fitted == "plugin"
    np.testing.assert_array_equal(rule.apply(probabilities), (positive >= t - 1e-9).astype(int))
    # The labels play no part: other gold, the same rule.
    assert fit_decision(probabilities, 1 - gold, _f1_positive, policy="plugin") == rule
    # The positive class first: the same cut, on its column.
    swapped = fit_decision(probabilities[:, ::-1], gold, _f1_positive, policy="plugin", positive=0)
    np.testing.assert_array_equal(swapped.apply(probabilities[:, ::-1]), 1 - rule.apply(probabilities))
    with pytest.raises(ValueError, match="two classes"):
        fit_decision(np.full((4, 3), 1 / 3), np.zeros(4, dtype=np.int64), _f1_positive, policy="plugin")


def test_a_task_whose_metric_is_f1_of_one_class_gets_the_plug_in_cut_on_that_class():
    """``fit_head`` derives the rule from the task: f1_positive of two classes is the plug-in cut on
    the positive label's column, wherever that label stands."""
    from monitor.tasks import load_task
    from monitor.training.recipe import fit_head, metric_scorer, positive_index

    task = load_task("druglib_adverse")
    assert positive_index(task) == list(task.labels).index(task.positive_label)
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 1, (300, 2))
    logits[:, positive_index(task)] -= 1.5  # a minority
    gold = np.array([rng.choice(2, p=np.exp(z) / np.exp(z).sum()) for z in logits])
    head = fit_head(task, logits, gold, metric_scorer(task), dtype="float64", seed=0)
    assert head.decision.fitted == "plugin"
    assert head.decision.biases[positive_index(task)] > 0  # the cut lies below 0.5
