"""Post-hoc calibration on the validation split: class biases, temperature, escalation threshold.

Pure numpy. Class biases (in logit space) move the decision to maximise the task's metric;
temperature scaling (Guo et al. 2017) then fits one scalar T so that softmax((logits + b) / T)
minimises the negative log-likelihood. T > 0 never changes the arg-max, so calibration keeps the
tuned decisions. The escalation threshold is chosen from the calibrated confidences.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from monitor.errors import ConfigError
from monitor.model_card import softmax

_GOLDEN = (np.sqrt(5.0) - 1.0) / 2.0


def calibrate(
    logits: np.ndarray, gold: np.ndarray, score: Callable[[np.ndarray, np.ndarray], float] | None
) -> tuple[np.ndarray, float]:
    """(logit biases, temperature) for validation ``logits``; biases are zero when ``score`` is None.

    ``score(predicted, gold)`` is the task's metric over class indices.
    """
    biases = np.zeros(np.asarray(logits).shape[1])
    if score is not None:
        t0 = fit_temperature(logits, gold)
        log_biases, _ = tune_biases(softmax(logits, t0), gold, lambda pred: score(pred, gold))
        biases = t0 * log_biases  # argmax(logits/t0 + b) == argmax(logits + t0*b)
    return biases, fit_temperature(np.asarray(logits) + biases, gold)


def nll(logits: np.ndarray, gold: np.ndarray, temperature: float) -> float:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(gold)), gold]))


def fit_temperature(logits: np.ndarray, gold: np.ndarray, *, low: float = 0.05, high: float = 20.0,
                    tolerance: float = 1e-5) -> float:
    """The temperature minimising validation NLL.

    NLL is convex in the inverse temperature, so a golden-section search over it finds the
    global minimum deterministically (no optimiser state, no learning rate).
    """
    gold = np.asarray(gold, dtype=np.int64)
    if len(gold) == 0:
        return 1.0
    a, b = 1.0 / high, 1.0 / low  # search over beta = 1/T

    def loss(beta: float) -> float:
        return nll(logits, gold, 1.0 / beta)

    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = loss(c), loss(d)
    while b - a > tolerance:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = loss(d)
    return float(2.0 / (a + b))


def tune_biases(
    probabilities: np.ndarray,
    gold: np.ndarray,
    score: Callable[[np.ndarray], float],
    *,
    span: float = 2.0,
    step: float = 0.1,
    rounds: int = 2,
) -> tuple[np.ndarray, float]:
    """Per-class log-biases maximising ``score(predicted indices)`` on validation, by coordinate ascent.

    The first class's bias stays 0 (only differences matter). Ties keep the smaller change, so a
    bias moves only when it helps; the search space is bounded to limit overfitting the split.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    log_p = np.log(np.clip(probabilities, 1e-12, 1.0))
    k = probabilities.shape[1]
    biases = np.zeros(k)
    best = score((log_p + biases).argmax(axis=1))
    grid = np.round(np.arange(-span, span + step / 2, step), 6)
    grid = grid[np.argsort(np.abs(grid), kind="stable")]  # try small shifts first: ties keep them
    for _ in range(rounds):
        improved = False
        for c in range(1, k):
            for value in grid:
                trial = biases.copy()
                trial[c] = value
                s = score((log_p + trial).argmax(axis=1))
                if s > best + 1e-12:
                    best, biases, improved = s, trial, True
        if not improved:
            break
    return biases, best


def choose_threshold(confidence: np.ndarray, max_share: float) -> float:
    """The highest threshold t with share(confidence < t) <= ``max_share``.

    Posts below t go to the explainer, so this sends at most ``max_share`` of posts like these.
    """
    if not 0.0 <= max_share <= 1.0:
        raise ConfigError("max_share must be within [0, 1]")
    values = np.sort(np.asarray(confidence, dtype=np.float64))
    n = len(values)
    if n == 0:
        return 0.0
    k = int(np.floor(max_share * n + 1e-9))
    if k >= n:
        return 1.0
    return float(values[k])
