"""Occlusion attribution: which numbered line of a post the classifier's decision rests on.

The evidence line comes from the model that decided (drop each line, see how far the predicted
class's calibrated probability falls), so it is faithful whatever the LLM's quality. Cost: one
batched pass of ``lines`` texts per post (the classify path already has the whole post's
probabilities), cheap for posts of a few lines.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from monitor.explainer.prompts import post_lines
from monitor.inference import Classifier

_DIGITS = 4


@dataclass(frozen=True)
class Attribution:
    lines: int
    """How many numbered lines the post has (``post_lines``)."""
    scores: tuple[float, ...]
    """Per line, in 1-based order: p(predicted | whole) - p(predicted | without that line)."""
    evidence_line: int
    """1-based: the line with the largest score (the first on ties)."""
    baseline: float
    """p(predicted | whole)."""


@dataclass(frozen=True)
class Faithfulness:
    posts: int
    """Posts of at least two lines, the ones measured."""
    single_line: int
    """Posts skipped: with one line there is nothing to choose between."""
    mean_drop_chosen: float
    mean_drop_random: float
    chosen_beats_random: float
    """Share of measured posts where the chosen line's drop beats a random line's."""


def _variants(lines: list[str]) -> list[str]:
    """The whole post, then the post without each line in turn (a one-line post's is "")."""
    whole = "\n".join(lines)
    return [whole, *("\n".join(lines[:i] + lines[i + 1:]) for i in range(len(lines)))]


def _predict_chunked(classifier: Classifier, texts: list[str], chunk: int) -> np.ndarray:
    """All texts in order, at most ``chunk`` per call, so a batch of long posts stays bounded in memory."""
    parts = [np.asarray(classifier.predict_proba(texts[start:start + chunk]), dtype=float)
             for start in range(0, len(texts), chunk)]
    return np.concatenate(parts, axis=0)


def occlusion(classifier: Classifier, texts: Sequence[str], predicted: Sequence[int] | None = None, *,
              whole: np.ndarray | None = None, chunk: int = 256) -> list[Attribution]:
    """Each post's per-line drop of its predicted class's probability, and the line that drops it most.

    Every occluded variant of every post goes through ``predict_proba`` together, in chunks of at most
    ``chunk`` texts, each distinct text once (a one-line post's variant, "", is shared). ``whole``: the
    probabilities the caller already has for the posts themselves (the classify path's own), so they
    are not computed again; else the wholes go in the same pass. When ``predicted`` is None it is
    ``decide`` on the wholes' rows, so deciding costs no extra call.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    if predicted is not None and len(predicted) != len(texts):
        raise ValueError(f"{len(predicted)} predicted labels for {len(texts)} texts")
    if whole is not None and len(whole) != len(texts):
        raise ValueError(f"{len(whole)} rows of probabilities for {len(texts)} texts")
    if not texts:
        return []
    per_post = [post_lines(text) for text in texts]
    distinct: dict[str, int] = {}  # each text to predict, and its row
    whole_rows: list[int] = []  # per post, when the caller gave no ``whole``
    variant_rows: list[list[int]] = []  # per post, its line-dropped variants' rows
    for lines in per_post:
        first, *variants = _variants(lines)
        if whole is None:
            whole_rows.append(distinct.setdefault(first, len(distinct)))
        variant_rows.append([distinct.setdefault(variant, len(distinct)) for variant in variants])
    computed = _predict_chunked(classifier, list(distinct), chunk)
    wholes = np.asarray(whole, dtype=float) if whole is not None else computed[whole_rows]
    if predicted is None:
        predicted = [int(i) for i in classifier.decide(wholes)]
    n_labels = len(classifier.labels)
    out: list[Attribution] = []
    for post, (lines, rows, label) in enumerate(zip(per_post, variant_rows, predicted, strict=True)):
        if not 0 <= label < n_labels:
            raise ValueError(f"predicted index {label} outside the {n_labels} labels")
        baseline = float(wholes[post, label])
        drops = tuple(round(baseline - float(computed[row, label]), _DIGITS) for row in rows)
        out.append(Attribution(lines=len(lines), scores=drops, evidence_line=int(np.argmax(drops)) + 1,
                               baseline=round(baseline, _DIGITS)))
    return out


def faithfulness(classifier: Classifier, texts: Sequence[str], *, seed: int = 13,
                 chunk: int = 256) -> Faithfulness:
    """How much more the chosen evidence line moves the model than a random line of the same post.

    The random line's drop is one of the scores ``occlusion`` already computed: no extra forward pass.
    """
    rng = random.Random(seed)
    chosen: list[float] = []
    drawn: list[float] = []
    single = 0
    for attribution in occlusion(classifier, texts, chunk=chunk):
        if attribution.lines < 2:
            single += 1
            continue
        chosen.append(attribution.scores[attribution.evidence_line - 1])
        drawn.append(attribution.scores[rng.randrange(attribution.lines)])
    if not chosen:
        return Faithfulness(posts=0, single_line=single, mean_drop_chosen=0.0, mean_drop_random=0.0,
                            chosen_beats_random=0.0)
    beats = sum(c > r for c, r in zip(chosen, drawn, strict=True))
    return Faithfulness(posts=len(chosen), single_line=single,
                        mean_drop_chosen=round(sum(chosen) / len(chosen), _DIGITS),
                        mean_drop_random=round(sum(drawn) / len(drawn), _DIGITS),
                        chosen_beats_random=round(beats / len(chosen), _DIGITS))
