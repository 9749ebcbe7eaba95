"""monitor.training.stacking: a stack of two members that err differently beats each, and its head is fitted out of fold."""

from __future__ import annotations

import numpy as np

from monitor.model_card import Calibration
from monitor.training.stacking import fit_stack, stack_folds


def _members(n: int, seed: int):
    """Two noisy views of the same 3-class truth: each alone is mediocre, together they are better."""
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, 3, n)
    truth = np.eye(3)[gold] * 2.0
    encoder = truth + rng.normal(0, 1.6, (n, 3))
    lexical = truth + rng.normal(0, 1.6, (n, 3))
    lexical_log_p = lexical - np.log(np.exp(lexical).sum(axis=1, keepdims=True))
    return gold, encoder, lexical_log_p


def test_the_stack_beats_each_member_on_fresh_rows():
    none = Calibration(method="none")
    gold, encoder, lexical = _members(1500, seed=1)
    fitted = fit_stack(none, encoder, lexical, gold, 3, seed=1)
    assert fitted is not None and fitted.spec.folds == 5
    fresh_gold, fresh_encoder, fresh_lexical = _members(5000, seed=2)
    stacked = fitted.spec.combine(fresh_encoder, fresh_lexical).argmax(axis=1)
    accuracy = {name: float((pred == fresh_gold).mean()) for name, pred in
                {"stack": stacked, "encoder": fresh_encoder.argmax(1), "lexical": fresh_lexical.argmax(1)}.items()}
    assert accuracy["stack"] > max(accuracy["encoder"], accuracy["lexical"]) + 0.03, accuracy
    # Out-of-fold logits score validation rows with meta-models that never saw them: about as good
    # as fresh rows, not better (in-sample would be optimistic).
    oof_accuracy = float((fitted.oof_logits.argmax(1) == gold).mean())
    assert abs(oof_accuracy - accuracy["stack"]) < 0.04


def test_folds_follow_the_rarest_class():
    assert stack_folds(np.array([0] * 50 + [1] * 3)) == 3
    assert stack_folds(np.array([0] * 50 + [1] * 30)) == 5
    assert stack_folds(np.array([0] * 50 + [1] * 1)) == 0
    assert stack_folds(np.array([0] * 10)) == 0
    gold = np.array([0] * 40 + [1])
    assert fit_stack(Calibration(method="none"), np.zeros((41, 2)), np.zeros((41, 2)), gold, 2) is None


def test_the_member_best_on_validation_serves_and_a_tie_goes_to_the_cheaper():
    from monitor.training.recipe import choose_member

    assert choose_member({"encoder": 0.61, "lexical": 0.58, "stack": 0.64}) == "stack"
    assert choose_member({"encoder": 0.61, "lexical": 0.66, "stack": 0.64}) == "lexical"
    assert choose_member({"encoder": 0.64, "lexical": 0.60, "stack": 0.64}) == "encoder"
    assert choose_member({"encoder": 0.64, "lexical": 0.64, "stack": 0.64}) == "lexical"
    assert choose_member({"encoder": 0.5}) == "encoder"


def _examples(rows: list[tuple[str, str]]):
    from monitor.corpus import Example

    return [Example(id=str(i), text=text, label=label) for i, (text, label) in enumerate(rows)]


def test_the_lexical_member_takes_the_regularisation_best_on_validation():
    from monitor.lexical import REGULARISATION_GRID
    from monitor.tasks import load_task
    from monitor.training.recipe import fit_lexical_member, metric_scorer

    task = load_task("druglib_adverse")
    rng = np.random.default_rng(3)
    signs = ["rash", "nausea", "dizzy", "vomiting", "hives", "fine", "great", "helped", "worked", "calm"]

    def rows(n: int) -> list[tuple[str, str]]:
        out = []
        for _ in range(n):
            severe = rng.random() < 0.2
            words = list(rng.choice(signs[:5] if severe else signs[5:], 2)) + list(rng.choice(signs, 3))
            out.append((" ".join(words), "severe_adr" if severe else "no_severe_adr"))
        return out

    index = {label: i for i, label in enumerate(task.labels)}
    train, val = _examples(rows(200)), _examples(rows(80))
    val_gold = np.array([index[e.label] for e in val])
    model, head, log_proba, notes = fit_lexical_member(task, train, val, val_gold, metric_scorer(task), seed=1)
    tried = notes["validation"]
    assert list(tried) == [setting.name() for setting in REGULARISATION_GRID]
    best = max(tried.values())
    assert notes["chosen"] == next(name for name, value in tried.items() if value == best)
    served = head.decision.apply(head.calibration.apply(model.read_posts([e.text for e in val])))
    assert round(float(metric_scorer(task)(served, val_gold)), 6) == tried[notes["chosen"]]
    np.testing.assert_allclose(log_proba, model.read_posts([e.text for e in val]))


def test_on_a_tie_the_plain_lexical_setting_is_kept():
    from monitor.tasks import load_task
    from monitor.training.recipe import fit_lexical_member, metric_scorer

    task = load_task("druglib_adverse")
    rows = [("awful rash and hives", "severe_adr"), ("terrible vomiting all night", "severe_adr")] * 6 + \
           [("worked fine for me", "no_severe_adr"), ("great drug, it helped", "no_severe_adr")] * 12
    examples = _examples(rows)
    gold = np.array([task.labels.index(e.label) for e in examples])
    _, _, _, notes = fit_lexical_member(task, examples, examples, gold, metric_scorer(task), seed=1)
    assert set(notes["validation"].values()) == {1.0}  # every setting separates these perfectly
    assert notes["chosen"] == "C=4, unweighted"


def test_the_pool_drops_a_member_that_carries_no_signal():
    """A lexical member that is pure noise gets a weight near 0, and the stack is as good as the encoder."""
    rng = np.random.default_rng(5)
    gold, encoder, _ = _members(1500, seed=5)
    noise = rng.normal(0, 1.0, (1500, 3))
    noise_log_p = noise - np.log(np.exp(noise).sum(axis=1, keepdims=True))
    fitted = fit_stack(Calibration(method="none"), encoder, noise_log_p, gold, 3, seed=1)
    assert fitted is not None and fitted.spec.meta == "pool"
    w_encoder, w_lexical = fitted.spec.weights
    assert w_lexical < 0.1 < w_encoder, fitted.spec.weights
    fresh_gold, fresh_encoder, _ = _members(5000, seed=6)
    fresh_noise = rng.normal(0, 1.0, (5000, 3))
    stacked = fitted.spec.combine(fresh_encoder, fresh_noise - np.log(np.exp(fresh_noise).sum(1, keepdims=True)))
    assert abs(float((stacked.argmax(1) == fresh_gold).mean()) - float((fresh_encoder.argmax(1) == fresh_gold).mean())) < 0.01


def test_the_pool_is_the_likelihood_optimum_and_serves_as_a_coefficient_matrix():
    """fit_pool's analytic gradient finds the optimum a derivative-free search finds, and the card's
    coef/intercept reproduce w_e * log p_e + w_l * log p_l + b."""
    from scipy.optimize import minimize

    from monitor.model_card import stack_features
    from monitor.training.stacking import OFFSET_L2, fit_pool

    gold, encoder, lexical = _members(600, seed=7)
    x = stack_features(Calibration(method="none"), encoder, lexical)
    weights, offsets = fit_pool(x, gold, 3)

    def loss(p: np.ndarray) -> float:
        z = p[0] * x[:, :3] + p[1] * x[:, 3:] + np.concatenate([[0.0], p[2:]])
        z = z - z.max(1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
        return -float(log_p[np.arange(len(gold)), gold].mean()) + OFFSET_L2 * float((p[2:] ** 2).sum())

    search = minimize(loss, np.array([1.0, 1.0, 0.0, 0.0]), method="Nelder-Mead",
                      options={"xatol": 1e-7, "fatol": 1e-10, "maxiter": 20000})
    assert loss(np.concatenate([weights, offsets[1:]])) <= search.fun + 1e-6
    np.testing.assert_allclose(weights, search.x[:2], atol=2e-3)
    fitted = fit_stack(Calibration(method="none"), encoder, lexical, gold, 3, seed=1)
    w = fitted.spec.weights
    expected = w[0] * x[:, :3] + w[1] * x[:, 3:] + np.asarray(fitted.spec.intercept)
    np.testing.assert_allclose(fitted.spec.combine(encoder, lexical), expected, atol=1e-4)


def test_the_pool_fits_three_members_and_its_out_of_fold_logits_come_from_pools_without_the_row():
    """Two informative members and one of pure noise: the noise gets (about) no weight, and each
    out-of-fold row is scored by a pool fitted on the other folds only."""
    from monitor.training.stacking import fit_pool, pool_matrix, pool_out_of_fold

    gold, encoder, lexical = _members(2000, seed=4)
    noise = np.random.default_rng(5).normal(0, 2.0, (2000, 3))
    noise -= np.log(np.exp(noise).sum(axis=1, keepdims=True))
    encoder_log_p = encoder - np.log(np.exp(encoder).sum(axis=1, keepdims=True))
    features = np.concatenate([encoder_log_p, lexical, noise], axis=1)
    weights, offsets, oof = pool_out_of_fold(features, gold, 3, folds=4, seed=1)
    assert weights.shape == (3,) and offsets.shape == (3,) and offsets[0] == 0.0
    assert weights[0] > 0.5 and weights[1] > 0.5 and weights[2] < 0.05, weights
    assert pool_matrix(weights, 3).shape == (3, 9)
    assert (fit_pool(features, gold, 3)[0] == weights).all()  # the served pool: every row
    # A row's out-of-fold logits are not those of the pool fitted on every row (it never saw the row).
    served = features @ pool_matrix(weights, 3).T + offsets
    assert not np.allclose(oof, served) and float((oof.argmax(1) == gold).mean()) > 0.6
