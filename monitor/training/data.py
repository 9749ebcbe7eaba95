"""Labelled data for training: exact and near duplicates kept on one side of the
train/validation/test split. Reading files is ``monitor.corpus``'s; this module only splits.

Pure; deterministic given a seed.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain, islice

from monitor.corpus import Example
from monitor.encoding import normalise_text
from monitor.errors import ConfigError

# ---------------------------------------------------------------- duplicates and splits

SHINGLE_WORDS = 3
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class DedupeReport:
    """What deduplication removed before the split (counts of examples)."""

    exact_duplicates_removed: int
    near_duplicates_removed: int
    conflicting_label_dropped: int
    kept: int
    near_duplicate_threshold: float


@dataclass(frozen=True)
class Splits:
    """Disjoint train/validation/test parts of the deduplicated examples, each in input order."""

    train: tuple[Example, ...]
    val: tuple[Example, ...]
    test: tuple[Example, ...]
    report: DedupeReport
    seed: int


def duplicate_key(text: str) -> str:
    """Two texts with the same key are exact duplicates: normalised and case-folded."""
    return normalise_text(text).casefold()


Shingle = tuple[str, ...]


def shingles(text: str, size: int = SHINGLE_WORDS) -> frozenset[Shingle]:
    """Word ``size``-grams of the normalised, case-folded words (a shorter text is one shingle)."""
    return _key_shingles(duplicate_key(text), size)


def _key_shingles(key: str, size: int) -> frozenset[Shingle]:
    words = _WORD.findall(key)
    if len(words) <= size:
        return frozenset({tuple(words)}) if words else frozenset()
    return frozenset(zip(*(words[k:] for k in range(size)), strict=False))


def jaccard(a: frozenset[Shingle], b: frozenset[Shingle]) -> float:
    if not a or not b:
        return 0.0
    common = len(a & b)
    return common / (len(a) + len(b) - common)


def near_duplicate_pairs(sets: Sequence[frozenset[Shingle]], threshold: float) -> list[tuple[int, int]]:
    """Every pair (i, j), i < j, whose Jaccard similarity is >= ``threshold``; exact, no sampling.

    Prefix filtering (Bayardo et al., "Scaling up all pairs similarity search", WWW 2007): with the
    shingles of every set ordered rarest first, two sets with J >= t must share one of the first
    ``|s| - ceil(t*|s|) + 1`` shingles of each, and their sizes lie within a factor t. Only those
    candidates are compared. Unlike MinHash/LSH it misses no pair, needs no seed and, at a high
    threshold, is faster in pure Python (a few rare shingles per post instead of 128 hashes each).
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    frequency = Counter(chain.from_iterable(sets))
    order = sorted((i for i, s in enumerate(sets) if s), key=lambda i: (len(sets[i]), i))
    index: dict[Shingle, list[int]] = defaultdict(list)
    pairs: list[tuple[int, int]] = []
    for i in order:
        size = len(sets[i])
        # Float products like 0.7 * 10 land just above the integer; the epsilon keeps ceil honest.
        prefix_size = size - math.ceil(threshold * size - 1e-9) + 1
        # Shingles no other set has sort first; when they fill the prefix, no pair is possible,
        # and that is most posts: skip them without sorting.
        unique = (shingle for shingle in sets[i] if frequency[shingle] == 1)
        if sum(1 for _ in islice(unique, prefix_size)) == prefix_size:
            continue
        prefix = sorted(sets[i], key=lambda shingle: (frequency[shingle], shingle))[:prefix_size]
        candidates = {j for shingle in prefix for j in index[shingle]
                      if len(sets[j]) >= threshold * size - 1e-9}
        for j in sorted(candidates):
            if jaccard(sets[i], sets[j]) >= threshold - 1e-12:
                pairs.append((min(i, j), max(i, j)))
        for shingle in prefix:
            index[shingle].append(i)
    return sorted(pairs)


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def deduplicate(examples: Sequence[Example], *, near_duplicate_threshold: float = 0.9
                ) -> tuple[tuple[Example, ...], DedupeReport]:
    """One representative per group of exact or near duplicates; groups whose labels disagree go.

    Groups are the connected components of "same duplicate key" and "Jaccard >= threshold over
    word shingles". The representative is the group's first example in input order, so the choice
    does not depend on any seed. A group with more than one label is dropped whole: there is no
    telling which label is right, and keeping one would put a contradicted label in the data.
    """
    by_key: dict[str, list[int]] = {}
    for i, example in enumerate(examples):
        by_key.setdefault(duplicate_key(example.text), []).append(i)
    exact_groups = list(by_key.values())  # in order of first appearance
    parent = list(range(len(exact_groups)))
    head_shingles = [_key_shingles(key, SHINGLE_WORDS) for key in by_key]
    for a, b in near_duplicate_pairs(head_shingles, near_duplicate_threshold):
        root_a, root_b = _find(parent, a), _find(parent, b)
        if root_a != root_b:
            parent[max(root_a, root_b)] = min(root_a, root_b)
    components: dict[int, list[int]] = defaultdict(list)
    for g in range(len(exact_groups)):
        components[_find(parent, g)].append(g)
    kept: list[int] = []
    exact = near = conflicting = 0
    for groups in components.values():
        members = [i for g in groups for i in exact_groups[g]]
        if len({examples[i].label for i in members}) > 1:
            conflicting += len(members)
            continue
        kept.append(min(members))
        exact += sum(len(exact_groups[g]) - 1 for g in groups)
        near += len(groups) - 1
    kept.sort()
    report = DedupeReport(exact_duplicates_removed=exact, near_duplicates_removed=near,
                          conflicting_label_dropped=conflicting, kept=len(kept),
                          near_duplicate_threshold=near_duplicate_threshold)
    return tuple(examples[i] for i in kept), report


def _allocate(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(val, test) counts for one label: rounded shares, at least one each from 3 examples up."""
    n_val, n_test = math.floor(n * val_fraction + 0.5), math.floor(n * test_fraction + 0.5)
    if n >= 3:
        n_val, n_test = max(n_val, int(val_fraction > 0)), max(n_test, int(test_fraction > 0))
    # Training keeps at least one of every label. From 3 examples up the larger share is then >= 2,
    # so giving one back never undoes the guarantee above.
    while n > 0 and n_val + n_test > n - 1:
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def split_examples(examples: Sequence[Example], *, seed: int, val_fraction: float = 0.1,
                   test_fraction: float = 0.2, near_duplicate_threshold: float = 0.9) -> Splits:
    """Deduplicate, then a seeded split stratified by label.

    Deduplicating first is what keeps a post and its copies from sitting on both sides of a split.
    Each label is shuffled on its own and cut by the fractions, so every split keeps the label
    balance; a label with three or more examples gets at least one in validation and in test.
    Each split keeps the input order.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ConfigError(f"fractions must be >= 0 and sum below 1, got val={val_fraction}, test={test_fraction}")
    kept, report = deduplicate(examples, near_duplicate_threshold=near_duplicate_threshold)
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, example in enumerate(kept):
        by_label[example.label].append(i)
    rng = random.Random(seed)
    where: dict[int, str] = {}
    for label in sorted(by_label):
        members = by_label[label]
        rng.shuffle(members)
        n_val, n_test = _allocate(len(members), val_fraction, test_fraction)
        for rank, i in enumerate(members):
            where[i] = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"

    def part(name: str) -> tuple[Example, ...]:
        return tuple(example for i, example in enumerate(kept) if where[i] == name)

    return Splits(train=part("train"), val=part("val"), test=part("test"), report=report, seed=seed)
