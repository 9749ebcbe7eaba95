"""Class balance for training: per-class loss weights, and resampling of the training split.

The two are independent (ALEX uses both, after augmentation); a caller that wants neither just
does not call them. Both are pure: counts in, weights or a seeded selection out.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Generic, Literal, Protocol, TypeVar

from monitor.errors import ConfigError, DataError

Scheme = Literal["inverse", "sqrt_inverse", "effective_number"]
Strategy = Literal["over", "under", "both"]


def class_weights(
    labels: Iterable[str], label_set: Sequence[str], *, scheme: Scheme = "inverse", beta: float = 0.999
) -> dict[str, float]:
    """A loss weight per class, from the class counts in ``labels``, in ``label_set`` order.

    - ``inverse``: ``n / (k * count)``, scikit-learn's "balanced" weights.
    - ``sqrt_inverse``: proportional to ``1 / sqrt(count)``, a milder correction.
    - ``effective_number``: proportional to ``(1 - beta) / (1 - beta**count)`` (Cui et al. 2019,
      "Class-Balanced Loss Based on Effective Number of Samples"); ``beta`` -> 1 approaches
      ``inverse``, ``beta`` = 0 gives equal weights.

    Every scheme is scaled so that the mean weight over the training *samples* is 1
    (``sum(count * weight) == n``): the loss keeps its scale and the learning rate stays valid.
    ``inverse`` is already so; Cui et al. scale to a mean of 1 over *classes* instead.
    A class of ``label_set`` with no example has no defined weight and is an error, as is a label
    outside ``label_set``.
    """
    counts = Counter(labels)
    unknown = sorted(set(counts) - set(label_set))
    if unknown:
        raise DataError(f"labels outside the task's label set: {', '.join(map(repr, unknown))}")
    missing = [label for label in label_set if counts[label] == 0]
    if missing:
        raise DataError(
            f"no training example of class {', '.join(map(repr, missing))}: its weight would be infinite; "
            "add examples or drop the class from the task"
        )
    n, k = sum(counts.values()), len(label_set)
    if scheme == "inverse":
        raw = {label: n / (k * counts[label]) for label in label_set}
    elif scheme == "sqrt_inverse":
        raw = {label: 1 / math.sqrt(counts[label]) for label in label_set}
    elif scheme == "effective_number":
        if not 0 <= beta < 1:
            raise ConfigError(f"beta must be in [0, 1), got {beta}")
        raw = {label: (1 - beta) / (1 - beta ** counts[label]) for label in label_set}
    else:
        raise ConfigError(f"unknown weighting scheme {scheme!r}; known: inverse, sqrt_inverse, effective_number")
    scale = n / sum(counts[label] * weight for label, weight in raw.items())
    return {label: weight * scale for label, weight in raw.items()}


class Labelled(Protocol):
    """What resampling needs of an example: a label, and an id to order by."""

    @property
    def id(self) -> str: ...
    @property
    def label(self) -> str: ...


L = TypeVar("L", bound=Labelled)


@dataclass(frozen=True)
class ResampleResult(Generic[L]):
    """The resampled examples and the class counts before and after."""

    examples: list[L]
    before: dict[str, int]
    after: dict[str, int]
    strategy: Strategy
    target_ratio: float

    def summary(self) -> str:
        changes = ", ".join(f"{label} {self.before[label]}->{self.after[label]}" for label in self.before)
        return f"resampled ({self.strategy}, ratio >= {self.target_ratio:g}): {changes}"


def resample_targets(
    counts: dict[str, int], *, target_ratio: float = 1.0, strategy: Strategy = "over"
) -> dict[str, int]:
    """The class sizes :func:`resample` aims at, so that ``min / max >= target_ratio``.

    - ``over``: the largest class stays; every class below ``ceil(ratio * max)`` grows to it.
    - ``under``: the smallest class stays; every class above ``floor(min / ratio)`` shrinks to it.
    - ``both``: meet in the geometric middle: the largest shrinks and the smallest grows by the
      same factor ``sqrt(ratio * max / min)``, so the ceiling is ``hi = round(sqrt(min * max / ratio))``
      and the floor ``ceil(ratio * hi)``; classes in between keep their size.

    Classes that already satisfy the ratio are left as they are.
    """
    if not 0 < target_ratio <= 1:
        raise ConfigError(f"target_ratio must be in (0, 1], got {target_ratio}")
    if strategy not in ("over", "under", "both"):
        raise ConfigError(f"unknown resampling strategy {strategy!r}; known: over, under, both")
    sizes = {label: n for label, n in counts.items() if n > 0}
    if not sizes:
        return dict(counts)
    # Exact arithmetic: ceil(0.3 * 10) must be 3, not 4.
    ratio = Fraction(target_ratio).limit_denominator(1_000_000)
    low, high = min(sizes.values()), max(sizes.values())
    if strategy == "over":
        floor_, ceiling = math.ceil(ratio * high), high
    elif strategy == "under":
        floor_, ceiling = low, math.floor(low / ratio)
    else:
        ceiling = min(high, max(1, math.floor(math.sqrt(low * high / ratio) + 0.5)))
        floor_ = math.ceil(ratio * ceiling)
    return {label: min(max(n, floor_), ceiling) if n > 0 else 0 for label, n in counts.items()}


def resample(
    examples: Sequence[L], *, seed: int, target_ratio: float = 1.0, strategy: Strategy = "over"
) -> ResampleResult[L]:
    """Repeat minority examples and/or drop majority ones until every class is within ``target_ratio``.

    Sizes come from :func:`resample_targets`. Oversampling repeats the class's examples round-robin
    over a seeded shuffle, so each repeats ``floor`` or ``ceil`` of (target / count) times; the
    repeats are the same objects (nothing is invented; ids repeat). Undersampling keeps a seeded
    random subset. Each class draws from its own generator seeded by (``seed``, label) and orders
    its examples by id first, so the result does not depend on the input order. Kept examples come
    in input order, then the repeats by class.
    """
    before = Counter(example.label for example in examples)
    targets = resample_targets(dict(sorted(before.items())), target_ratio=target_ratio, strategy=strategy)
    positions: dict[str, list[int]] = {}
    for i, example in enumerate(examples):
        positions.setdefault(example.label, []).append(i)
    kept: set[int] = set()
    repeats: list[L] = []
    for label in sorted(positions):
        order = sorted(positions[label], key=lambda i: (str(examples[i].id), i))
        # A string seed is hashed with SHA-512: stable across runs, unlike hash().
        rng = random.Random(f"{seed}|{label}")
        rng.shuffle(order)
        target, count = targets[label], len(order)
        if target <= count:
            kept.update(order[:target])
        else:
            kept.update(order)
            repeats += [examples[order[j % count]] for j in range(target - count)]
    resampled = [example for i, example in enumerate(examples) if i in kept] + repeats
    after = Counter(example.label for example in resampled)
    return ResampleResult(
        examples=resampled,
        before={label: before[label] for label in sorted(before)},
        after={label: after[label] for label in sorted(before)},
        strategy=strategy,
        target_ratio=target_ratio,
    )
