"""What the pipeline needs of a classifier and of an explainer, as typed Protocols.

``pipeline``, ``runtime`` and the stream agents are written against these, never against
``EncoderClassifier`` (torch) or ``ExplainerPool`` (llama.cpp) directly, so a role that neither
classifies nor explains never imports either, and tests can pass their own implementations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from monitor.model_card import ModelCard
from monitor.records import Explanation
from monitor.tasks import TaskDefinition


class Classifier(Protocol):
    """A trained model folder, loaded: calibrated class probabilities for a batch of texts."""

    card: ModelCard
    labels: tuple[str, ...]
    device: str

    @property
    def model_version(self) -> str: ...

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """One row per text, one column per label (``labels`` order), rows summing to 1."""
        ...

    def decide(self, probabilities: np.ndarray) -> np.ndarray:
        """The served label of each row of ``predict_proba``'s output, as an index into ``labels``."""
        ...

    def device_memory_bytes(self) -> int | None:
        """Accelerator memory the model holds now; None on a CPU."""
        ...


class Explainer(Protocol):
    """An LLM that confirms or rejects a predicted label with a short reason."""

    model_name: str

    @property
    def parallel(self) -> int:
        """How many posts it can explain at once (callers run that many in threads)."""
        ...

    @property
    def cache_hits(self) -> int:
        """How many replies came from the reply cache so far (no LLM call)."""
        ...

    def warm(self, tasks: Sequence[TaskDefinition]) -> int:
        """Prepare what every task's prompts share, so the first explanations are not slow."""
        ...

    def explain(self, task: TaskDefinition, text: str, predicted_label: str, *, evidence_line: int | None = None,
                threshold: float = 0.5) -> Explanation:
        """A verdict on ``predicted_label``: confirm when P(confirm) >= ``threshold``; the reason is about
        ``evidence_line`` (1-based, of ``prompts.post_lines``) when the classifier chose one."""
        ...
