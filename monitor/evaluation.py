"""Metrics, calibration error and evaluation plots: pure functions over labels and probabilities.

Nothing here knows about models or files, except the ``plot_*`` functions, which write PNGs
(matplotlib, imported lazily with the Agg backend).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class ClassScores:
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class Report:
    """Everything ``monitor evaluate`` shows for one model on one split."""

    labels: tuple[str, ...]
    per_class: dict[str, ClassScores]
    task_metric_name: str
    task_metric: float
    macro_f1: float
    micro_f1: float
    accuracy: float
    confusion: list[list[int]]  # rows = gold, columns = predicted, in ``labels`` order
    ece: float | None = None  # top-label ECE of the probabilities (arg-max confidence vs arg-max right)
    ece_served: float | None = None  # the served label's probability vs the served label right
    # What a perfectly calibrated model with the same confidences would show on as many rows (mean
    # and 95th percentile, ``ece_if_calibrated``): ECE is biased upwards on small splits.
    ece_if_calibrated: float | None = None
    ece_if_calibrated_p95: float | None = None
    n: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "n": self.n,
            "labels": list(self.labels),
            "task_metric": {"name": self.task_metric_name, "value": self.task_metric},
            "macro_f1": self.macro_f1,
            "micro_f1": self.micro_f1,
            "accuracy": self.accuracy,
            "ece": self.ece,
            "ece_served": self.ece_served,
            "ece_if_calibrated": self.ece_if_calibrated,
            "ece_if_calibrated_p95": self.ece_if_calibrated_p95,
            "per_class": {k: vars(v) for k, v in self.per_class.items()},
            "confusion": self.confusion,
            **self.extra,
        }


def confusion_matrix(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> np.ndarray:
    index = {label: i for i, label in enumerate(labels)}
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for g, p in zip(gold, pred, strict=True):
        matrix[index[g], index[p]] += 1
    return matrix


def _prf(tp: float, fp: float, fn: float) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def per_class_scores(matrix: np.ndarray, labels: Sequence[str]) -> dict[str, ClassScores]:
    scores = {}
    for i, label in enumerate(labels):
        tp = float(matrix[i, i])
        fp = float(matrix[:, i].sum() - tp)
        fn = float(matrix[i, :].sum() - tp)
        p, r, f = _prf(tp, fp, fn)
        scores[label] = ClassScores(p, r, f, int(matrix[i, :].sum()))
    return scores


def micro_f1(matrix: np.ndarray, labels: Sequence[str], subset: Sequence[str] | None = None) -> float:
    """Micro-averaged F1 over ``subset`` (all labels by default, where it equals accuracy)."""
    chosen = [labels.index(label) for label in (subset or labels)]
    tp = sum(float(matrix[i, i]) for i in chosen)
    fp = sum(float(matrix[:, i].sum() - matrix[i, i]) for i in chosen)
    fn = sum(float(matrix[i, :].sum() - matrix[i, i]) for i in chosen)
    return _prf(tp, fp, fn)[2]


def task_metric(
    matrix: np.ndarray,
    labels: Sequence[str],
    metric: str,
    *,
    positive_label: str | None = None,
    metric_labels: Sequence[str] | None = None,
) -> float:
    """The task's official metric: ``f1_positive``, ``micro_f1`` or ``macro_f1``."""
    scores = per_class_scores(matrix, labels)
    if metric == "f1_positive":
        if positive_label is None:
            raise ValueError("f1_positive needs the positive label")
        return scores[positive_label].f1
    if metric == "micro_f1":
        return micro_f1(matrix, labels, metric_labels)
    if metric == "macro_f1":
        chosen = metric_labels or labels
        return float(np.mean([scores[label].f1 for label in chosen]))
    raise ValueError(f"unknown metric {metric!r}")


def confidence_bins(confidence: np.ndarray, bins: int) -> np.ndarray:
    """Each confidence's bin among ``bins`` equal-width bins of [0, 1] (a bin includes its upper edge)."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, *, bins: int = 15) -> float:
    """ECE with equal-width confidence bins: the weighted mean |accuracy - confidence| per bin."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    if confidence.size == 0:
        return 0.0
    which = confidence_bins(confidence, bins)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def auroc(scores: Sequence[float], positives: Sequence[bool]) -> float | None:
    """Area under the ROC curve: the chance a random positive scores above a random negative (ties
    count half); None when either class is empty."""
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives, dtype=bool)
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auroc_p_value(area: float, n_pos: int, n_neg: int) -> float:
    """One-sided p-value of an AUROC this high arising by chance (Mann-Whitney U against no
    association, normal approximation): small only when the area is high *and* measured on enough
    positive and negative cases to tell it from luck."""
    mean, variance = 0.5, (n_pos + n_neg + 1) / (12 * n_pos * n_neg)
    return float(0.5 * math.erfc((area - mean) / math.sqrt(variance) / math.sqrt(2)))


#: Outcomes drawn at once by ``ece_if_calibrated`` (8 bytes each while drawn).
_DRAW_CELLS = 4_000_000


def ece_if_calibrated(confidence: np.ndarray, *, bins: int = 15, draws: int = 400, seed: int = 0
                      ) -> tuple[float, float]:
    """(mean, 95th percentile) of the ECE a perfectly calibrated model with these ``confidence``s
    would show on as many rows: each draw makes every row right with probability its confidence.

    ECE is biased upwards by sampling noise, the more so on few rows (a calibrated model shows about
    0.1 on 70 rows and 15 bins), so a measured ECE means little until it is set against this."""
    confidence = np.asarray(confidence, dtype=np.float64)
    if confidence.size == 0:
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    which = confidence_bins(confidence, bins)
    masks = [which == b for b in np.unique(which)]
    ece = np.zeros(draws)
    # Draws in blocks of at most _DRAW_CELLS outcomes, so a split of a million rows does not hold
    # draws x rows floats at once (the generator fills row by row: the same numbers as one array).
    block = max(1, _DRAW_CELLS // confidence.size)
    for start in range(0, draws, block):
        correct = rng.random((min(block, draws - start), confidence.size)) < confidence  # (draws, rows)
        for mask in masks:
            ece[start:start + len(correct)] += mask.mean() * np.abs(
                correct[:, mask].mean(axis=1) - confidence[mask].mean())
    return float(ece.mean()), float(np.percentile(ece, 95))


def top_label_ece(probabilities: np.ndarray, gold: np.ndarray) -> float:
    """ECE of the probabilities themselves: the arg-max's probability against whether the arg-max is ``gold``."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.size == 0:
        return 0.0
    return expected_calibration_error(probabilities.max(axis=1), probabilities.argmax(axis=1) == np.asarray(gold))


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, *, bins: int = 15) -> list[tuple[float, float, int]]:
    """(mean confidence, accuracy, count) per non-empty bin, for a reliability diagram."""
    which = confidence_bins(confidence, bins)
    out = []
    for b in range(bins):
        mask = which == b
        if mask.any():
            out.append((float(confidence[mask].mean()), float(correct[mask].mean()), int(mask.sum())))
    return out


def evaluate(
    gold: Sequence[str],
    probabilities: np.ndarray,
    labels: Sequence[str],
    *,
    metric: str,
    positive_label: str | None = None,
    metric_labels: Sequence[str] | None = None,
    predicted: Sequence[str] | None = None,
) -> Report:
    """A full report; ``predicted`` (the served labels, e.g. after a decision rule) defaults to the
    arg-max of ``probabilities``. Scores are of ``predicted``; ``ece`` is the calibration of the
    probabilities themselves (top label), ``ece_served`` that of the served label's probability."""
    labels = tuple(labels)
    index = {label: i for i, label in enumerate(labels)}
    probabilities = np.asarray(probabilities, dtype=np.float64)
    pred = list(predicted) if predicted is not None else [labels[i] for i in probabilities.argmax(axis=1)]
    matrix = confusion_matrix(gold, pred, labels)
    correct = np.array([g == p for g, p in zip(gold, pred, strict=True)], dtype=np.float64)
    scores = per_class_scores(matrix, labels)
    ece = ece_served = floor = floor_p95 = None
    if probabilities.size:
        gold_index = np.array([index[g] for g in gold])
        ece = top_label_ece(probabilities, gold_index)
        floor, floor_p95 = ece_if_calibrated(probabilities.max(axis=1))
        served = np.array([index[p] for p in pred])
        ece_served = expected_calibration_error(probabilities[np.arange(len(served)), served], correct)
    return Report(
        labels=labels,
        per_class=scores,
        task_metric_name=metric + (f"({positive_label})" if metric == "f1_positive" else ""),
        task_metric=task_metric(matrix, labels, metric, positive_label=positive_label, metric_labels=metric_labels),
        macro_f1=float(np.mean([s.f1 for s in scores.values()])),
        micro_f1=micro_f1(matrix, labels),
        accuracy=float(correct.mean()) if correct.size else 0.0,
        confusion=matrix.tolist(),
        ece=ece,
        ece_served=ece_served,
        ece_if_calibrated=floor,
        ece_if_calibrated_p95=floor_p95,
        n=len(gold),
    )


def precision_recall_curve(scores: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall at every distinct score threshold (one-vs-rest), highest first."""
    order = np.argsort(-scores, kind="stable")
    hits = positives[order].astype(np.float64)
    tp = np.cumsum(hits)
    fp = np.cumsum(1 - hits)
    total = max(hits.sum(), 1.0)
    return tp / np.maximum(tp + fp, 1), tp / total


# -- plots -------------------------------------------------------------------------------------


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(report: Report, path: Path, *, title: str) -> Path:
    plt = pyplot()
    matrix = np.array(report.confusion)
    fig, ax = plt.subplots(figsize=(1.2 * len(report.labels) + 2.5, 1.1 * len(report.labels) + 2))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(report.labels)), report.labels, rotation=30, ha="right")
    ax.set_yticks(range(len(report.labels)), report.labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center",
                color="white" if value > matrix.max() / 2 else "black")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_reliability(probabilities: np.ndarray, gold: np.ndarray, path: Path, *, title: str,
                     before: np.ndarray | None = None) -> Path:
    """Top-label accuracy vs confidence per bin of ``probabilities`` (rows) against ``gold`` (class
    indices); ``before`` (the uncalibrated probabilities) is drawn too."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    series = [("calibrated", probabilities)] if before is None else [("before", before), ("after", probabilities)]
    for name, probs in series:
        probs = np.asarray(probs, dtype=np.float64)
        points = reliability_bins(probs.max(axis=1), probs.argmax(axis=1) == np.asarray(gold))
        ece = top_label_ece(probs, gold)
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=f"{name} (ECE {ece:.3f})")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_precision_recall(gold: Sequence[str], probabilities: np.ndarray, labels: Sequence[str], path: Path, *,
                          title: str) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    gold_arr = np.array(gold)
    for i, label in enumerate(labels):
        positives = gold_arr == label
        if not positives.any():
            continue
        precision, recall = precision_recall_curve(np.asarray(probabilities)[:, i], positives)
        ax.plot(recall, precision, label=f"{label} (n={int(positives.sum())})")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower left")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
