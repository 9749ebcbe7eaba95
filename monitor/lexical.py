"""A lexical model: TF-IDF word 1-2-grams and character 2-5-grams, multinomial logistic regression.

A model folder's second member (``monitor.training.stacking``), stacked with the encoder or, where
it won on validation, served alone by ``LexicalClassifier`` (no torch, no transformer in the process): cheap on a CPU (a sparse product
per post), strong where a few words decide (a drug name, "side effect"), and wrong in different ways
from a fine-tuned encoder, which is what makes stacking the two pay.

Saved as plain arrays (``lexical.npz``, no pickle): both vocabularies, their idf weights and the
regression's coefficients; the transform is rebuilt from them exactly (scikit-learn's analyzers with
the same options, then sublinear tf, idf and L2 normalisation, as ``TfidfVectorizer`` does).
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import chain, repeat
from pathlib import Path
from typing import Any

import numpy as np

from monitor.encoding import normalise_text
from monitor.errors import ModelError
from monitor.model_card import ModelCard, read_card

LEXICAL_FILE = "lexical.npz"
#: The lexical model reads at most this many characters of a post (its n-grams cost per character).
LEXICAL_CHARS = 20_000
#: (name, CountVectorizer options, most features kept): the two views of the text.
VIEWS = (
    ("word", {"analyzer": "word", "ngram_range": (1, 2), "lowercase": True}, 100_000),
    ("char", {"analyzer": "char_wb", "ngram_range": (2, 5), "lowercase": True}, 150_000),
)


@dataclass(frozen=True)
class Regularisation:
    """The regression's inverse regularisation strength and class weighting (None, or "balanced":
    each class weighted inversely to its frequency in the training rows)."""

    c: float = 4.0
    class_weight: str | None = None

    def name(self) -> str:
        return f"C={self.c:g}, {self.class_weight or 'unweighted'}"


#: What ``monitor train`` tries for its lexical member, the plain default first (it wins ties).
REGULARISATION_GRID = tuple(Regularisation(c, weight) for weight in (None, "balanced") for c in (4.0, 1.0, 16.0))


def _counter(options: dict, max_features: int | None = None):
    from sklearn.feature_extraction.text import CountVectorizer

    return CountVectorizer(min_df=2, max_features=max_features, **options)


class _TermCounts:
    """Each text's n-gram counts for one view, by scikit-learn's own analyzer; the last few batches
    are kept, so the lexical models of every task (the classify path asks each of them about the same
    batch) analyse a batch once. Only batches of at most ``max_texts`` are kept (a training or
    evaluation set is analysed once per call and let go). Thread-safe; a pure function's memo."""

    def __init__(self, keep: int = 4, max_texts: int = 512):
        self._analyzers: dict[str, Any] = {}
        self._kept: OrderedDict[tuple[str, tuple[str, ...]], list[Counter[str]]] = OrderedDict()
        self._keep, self._max_texts = keep, max_texts
        self._lock = threading.Lock()

    def __call__(self, view: str, options: dict, texts: tuple[str, ...]) -> list[Counter[str]]:
        key = (view, texts)
        with self._lock:
            if (hit := self._kept.get(key)) is not None:
                self._kept.move_to_end(key)
                return hit
            analyze = self._analyzers.get(view)
        if analyze is None:
            analyze = _counter(options).build_analyzer()
        counts = [Counter(analyze(text)) for text in texts]
        with self._lock:
            self._analyzers[view] = analyze
            if len(texts) > self._max_texts:
                return counts
            self._kept[key] = counts
            while len(self._kept) > self._keep:
                self._kept.popitem(last=False)
        return counts


_TERM_COUNTS = _TermCounts()


def count_matrix(counts: Sequence[Counter[str]], index: dict[str, int]):  # noqa: ANN201 - a scipy CSR matrix
    """The term-count matrix of ``counts`` over a vocabulary (term -> column), terms outside it
    dropped: what ``CountVectorizer(vocabulary=...).transform`` gives, each distinct term looked up once
    (in C, through ``map``)."""
    from scipy.sparse import csr_matrix

    lengths = [len(row) for row in counts]
    total, look_up = sum(lengths), index.get
    columns = np.fromiter(chain.from_iterable(map(look_up, row, repeat(-1)) for row in counts), dtype=np.int64,
                          count=total)
    values = np.fromiter(chain.from_iterable(row.values() for row in counts), dtype=np.int64, count=total)
    rows = np.repeat(np.arange(len(counts), dtype=np.int64), lengths)
    known = columns >= 0
    matrix = csr_matrix((values[known], (rows[known], columns[known])), shape=(len(counts), len(index)),
                        dtype=np.int64)
    matrix.sort_indices()
    return matrix


def full_coefficients(regression, labels: int) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    """(coef, intercept) of a fitted scikit-learn logistic regression over class indices 0..labels-1,
    one row per label whichever classes it saw: scikit-learn keeps a single row for two classes, and a
    label absent from the training rows gets an intercept of -30 (never predicted)."""
    coef = np.zeros((labels, regression.coef_.shape[1]))
    intercept = np.full(labels, -30.0)
    present = list(regression.classes_)
    if len(present) == 2:
        coef[present[1]], intercept[present[1]] = regression.coef_[0], regression.intercept_[0]
        coef[present[0]], intercept[present[0]] = 0.0, 0.0
    else:
        for row, label in enumerate(present):
            coef[label], intercept[label] = regression.coef_[row], regression.intercept_[row]
    return coef, intercept


def _tfidf(counts, idf: np.ndarray):  # noqa: ANN001, ANN202 - scipy sparse in and out
    from sklearn.preprocessing import normalize

    x = counts.astype(np.float64)
    x.data = 1.0 + np.log(x.data)  # sublinear tf
    return normalize(x.multiply(idf).tocsr(), norm="l2", copy=False)


@dataclass
class LexicalModel:
    labels: tuple[str, ...]
    vocabularies: dict[str, list[str]]
    idf: dict[str, np.ndarray]
    coef: np.ndarray  # (labels, features)
    intercept: np.ndarray  # (labels,)

    @classmethod
    def fit(cls, texts: Sequence[str], gold: Sequence[str], labels: Sequence[str], *, c: float = 4.0,
            class_weight: str | None = None, seed: int = 13) -> LexicalModel:
        """Fit both vocabularies (terms in at least 2 posts, the most frequent kept) and the regression."""
        return cls.fit_grid(texts, gold, labels, [Regularisation(c, class_weight)], seed=seed)[0]

    @classmethod
    def fit_grid(cls, texts: Sequence[str], gold: Sequence[str], labels: Sequence[str],
                 grid: Sequence[Regularisation], *, seed: int = 13) -> list[LexicalModel]:
        """One model per ``grid`` entry, over the same vocabularies (counted once)."""
        from scipy.sparse import hstack
        from sklearn.linear_model import LogisticRegression

        vocabularies, idf, blocks = {}, {}, []
        n = len(texts)
        for name, options, most in VIEWS:
            counter = _counter(options, max_features=most)
            try:
                counts = counter.fit_transform(texts).tocsr()
            except ValueError:  # no term in two posts (a tiny set): this view adds nothing
                vocabularies[name], idf[name] = [], np.zeros(0)
                continue
            vocabulary = sorted(counter.vocabulary_, key=counter.vocabulary_.get)
            document_frequency = np.bincount(counts.indices, minlength=len(vocabulary))
            vocabularies[name] = vocabulary
            idf[name] = np.log((1 + n) / (1 + document_frequency)) + 1.0  # smooth idf, as scikit-learn's
            blocks.append(_tfidf(counts, idf[name]))
        if not blocks:
            raise ModelError("the lexical model found no term used in two posts: too little training text")
        x = hstack(blocks).tocsr()
        index = {label: i for i, label in enumerate(labels)}
        y = np.array([index[g] for g in gold])
        models = []
        for setting in grid:
            regression = LogisticRegression(C=setting.c, class_weight=setting.class_weight, max_iter=3000,
                                            random_state=seed).fit(x, y)
            models.append(cls(tuple(labels), vocabularies, idf, *full_coefficients(regression, len(labels))))
        return models

    @cached_property
    def _columns(self) -> dict[str, dict[str, int]]:
        """Each view's term -> column, built once per loaded model (not per batch)."""
        return {name: {term: i for i, term in enumerate(self.vocabularies.get(name) or [])} for name, _, _ in VIEWS}

    def features(self, texts: Sequence[str]):  # noqa: ANN201 - a scipy CSR matrix
        from scipy.sparse import csr_matrix, hstack

        blocks, batch = [], tuple(texts)
        for name, options, _ in VIEWS:
            if not self.vocabularies.get(name):
                continue
            counts = count_matrix(_TERM_COUNTS(name, options, batch), self._columns[name])
            blocks.append(_tfidf(counts, self.idf[name]))
        return hstack(blocks).tocsr() if blocks else csr_matrix((len(texts), 0))

    def log_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Log class probabilities, one row per text, in ``labels`` order."""
        scores = np.asarray(self.features(texts) @ self.coef.T) + self.intercept
        scores -= scores.max(axis=1, keepdims=True)
        return scores - np.log(np.exp(scores).sum(axis=1, keepdims=True))

    @staticmethod
    def prepare(texts: Sequence[str]) -> list[str]:
        """Posts as the model reads them: normalised as the training rows were, and cut at
        ``LEXICAL_CHARS`` (a 1 MB post never reaches the n-gram counter whole)."""
        return [normalise_text(t)[:LEXICAL_CHARS] for t in texts]

    def read_posts(self, texts: Sequence[str]) -> np.ndarray:
        """``log_proba`` of posts as they arrive (``prepare``d first)."""
        return self.log_proba(self.prepare(texts))

    def save(self, folder: Path) -> Path:
        path = folder / LEXICAL_FILE
        arrays = {"labels": np.array(self.labels), "coef": self.coef.astype(np.float32),
                  "intercept": self.intercept}
        for name, _, _ in VIEWS:
            arrays[f"vocabulary_{name}"] = np.array(self.vocabularies.get(name) or [], dtype=str)
            arrays[f"idf_{name}"] = self.idf.get(name, np.zeros(0))
        np.savez_compressed(path, **arrays)
        return path

    @classmethod
    def load(cls, folder: Path) -> LexicalModel:
        path = folder / LEXICAL_FILE
        try:
            with np.load(path, allow_pickle=False) as saved:
                return cls(labels=tuple(str(v) for v in saved["labels"]),
                           vocabularies={name: [str(t) for t in saved[f"vocabulary_{name}"]] for name, _, _ in VIEWS},
                           idf={name: saved[f"idf_{name}"] for name, _, _ in VIEWS},
                           coef=saved["coef"].astype(np.float64), intercept=saved["intercept"])
        except (OSError, KeyError, ValueError) as exc:
            raise ModelError(f"cannot read the lexical model {path}: {exc}") from exc


class LexicalClassifier:
    """A model folder that serves its lexical model alone (``card.served == "lexical"``): the card's
    calibration and decision rule over the lexical model's log-probabilities. The same ``Classifier``
    API as the encoder's, on the CPU, without importing torch."""

    device = "cpu"
    dtype = "float64"
    tuning = None
    calibration_note = ""

    def __init__(self, card: ModelCard, lexical: LexicalModel):
        if card.served != "lexical":
            raise ModelError(f"{card.model_version} serves its {card.served}, not the lexical model alone")
        if tuple(lexical.labels) != tuple(card.labels):
            raise ModelError(f"{card.model_version}: the lexical model's labels {list(lexical.labels)} are not the "
                             f"card's {card.labels}")
        self.card = card
        self.lexical = lexical
        self.labels = tuple(card.labels)
        self.calibration = card.calibration

    @classmethod
    def load(cls, folder: Path) -> LexicalClassifier:
        return cls(read_card(folder), LexicalModel.load(folder))

    @property
    def model_version(self) -> str:
        return self.card.model_version

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """The lexical model's log-probabilities (before the card's calibration), in the order of ``texts``."""
        if not texts:
            return np.zeros((0, len(self.labels)))
        return self.lexical.read_posts(texts)

    def calibrate(self, logits: np.ndarray) -> np.ndarray:
        return self.card.probabilities(logits)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        return self.calibrate(self.logits(texts))

    def decide(self, probabilities: np.ndarray) -> np.ndarray:
        return self.card.decide(probabilities)

    def device_memory_bytes(self) -> int | None:
        return None
