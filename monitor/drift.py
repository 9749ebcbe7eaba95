"""The recent label mix and mean confidence per task: what a model-drift alert compares.

Pure: a bounded window of the latest predictions per task. A drifting model (or a changed stream)
shows as a label share far from the share in the model's test split, or as falling confidence, which
the alert rules tell apart from a public-health spike (more signal posts *and* a normal mix elsewhere).
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass
class LabelWindow:
    """The last ``size`` (label, confidence) pairs of one task."""

    labels: Sequence[str]
    size: int = 1000
    _recent: deque[tuple[str, float]] = field(init=False, repr=False)
    _counts: Counter[str] = field(init=False, repr=False)
    _confidence_sum: float = field(init=False, default=0.0, repr=False)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"window size must be at least 1, got {self.size}")
        self._recent = deque()
        self._counts = Counter()

    def add(self, predictions: Iterable[tuple[str, float]]) -> None:
        for label, confidence in predictions:
            self._recent.append((label, confidence))
            self._counts[label] += 1
            self._confidence_sum += confidence
            if len(self._recent) > self.size:
                old_label, old_confidence = self._recent.popleft()
                self._counts[old_label] -= 1
                self._confidence_sum -= old_confidence

    def __len__(self) -> int:
        return len(self._recent)

    def shares(self) -> dict[str, float]:
        """Share of each of the task's labels in the window (0 for a label not seen; empty window: {})."""
        n = len(self._recent)
        return {label: self._counts[label] / n for label in self.labels} if n else {}

    def mean_confidence(self) -> float | None:
        return self._confidence_sum / len(self._recent) if self._recent else None
