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
