"""Stacking the fine-tuned encoder with the lexical model, fitted on the validation split.

The meta-model is a multinomial logistic regression over both members' log-probabilities (the
encoder's after its own calibration). It is fitted on validation, where both members predict rows
they were not trained on. Its calibration and decision rule are then fitted on *out-of-fold*
stacked logits (each validation row scored by a meta-model fitted without it), so they are not
tuned on predictions the meta-model has already seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from monitor.lexical import full_coefficients
from monitor.model_card import Calibration, StackSpec, stack_features


@dataclass(frozen=True)
class StackFit:
    spec: StackSpec
    oof_logits: np.ndarray  # the stack's logits of each validation row, from a meta-model fitted without it


def _meta(seed: int):  # noqa: ANN202 - a scikit-learn estimator
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=1.0, max_iter=2000, random_state=seed)


def stack_folds(gold: np.ndarray, *, most: int = 5) -> int:
    """Folds for the out-of-fold fit: at most ``most``, at least 2, and no more than the rarest class
    has validation rows; 0 when a class has fewer than 2 (too little to stack on)."""
    counts = np.bincount(gold)
    rarest = int(counts[counts > 0].min()) if counts.any() else 0
    return 0 if rarest < 2 or len(counts[counts > 0]) < 2 else min(most, rarest)


def fit_stack(encoder_calibration: Calibration, encoder_logits: np.ndarray, lexical_log_proba: np.ndarray,
              gold: np.ndarray, labels: int, *, seed: int = 13) -> StackFit | None:
    """The stack fitted on validation, with out-of-fold logits; None when validation is too small."""
    from sklearn.model_selection import StratifiedKFold

    gold = np.asarray(gold, dtype=np.int64)
    folds = stack_folds(gold)
    if not folds:
        return None
    x = stack_features(encoder_calibration, encoder_logits, lexical_log_proba)
    oof = np.zeros((len(gold), labels))
    for kept, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, gold):
        coef, intercept = full_coefficients(_meta(seed).fit(x[kept], gold[kept]), labels)
        oof[held] = x[held] @ coef.T + intercept
    coef, intercept = full_coefficients(_meta(seed).fit(x, gold), labels)
    spec = StackSpec(encoder_calibration=encoder_calibration, coef=coef.tolist(), intercept=intercept.tolist(),
                     folds=folds)
    return StackFit(spec, oof)
