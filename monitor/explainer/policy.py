"""Which posts go to the explainer, and what its verdict may do to a label. Pure.

ALEX sends every predicted health-signal label to the LLM and lets a "no" remove it. Here the
selection is configurable (low calibrated confidence and/or the ALEX rule) and decided per post
from its own prediction alone, so a redelivered post is escalated again exactly when it was the first
time; ``select_for_explanation`` adds a cap on the share escalated for offline evaluation; and the verdict only changes labels in ``correct`` mode, which a measurement
(``monitor explain-eval``) must earn; otherwise (``explain`` mode) it only attaches the rationale.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Mode = Literal["explain", "correct"]


@dataclass(frozen=True)
class Policy:
    mode: Mode = "explain"
    below_threshold: bool = True       # escalate when calibrated confidence < the model card's threshold
    verify_signals: bool = False       # the ALEX rule: escalate every predicted health-signal label
    max_share: float = 0.10            # explain-eval: at most this share of an evaluation set is escalated
    threshold: float | None = None     # overrides the model card's escalation threshold

    @property
    def escalation_key(self) -> str:
        """Which posts this policy escalates in a stream (``max_share`` caps evaluations only, ``mode`` is
        what a measurement grants): a grant measured under one key does not hold under another."""
        threshold = "card" if self.threshold is None else f"{self.threshold:.4f}"
        return f"below_threshold={int(self.below_threshold)},verify_signals={int(self.verify_signals)},threshold={threshold}"

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_share <= 1.0:
            raise ValueError("max_share must be within [0, 1]")
        if self.mode not in ("explain", "correct"):
            raise ValueError(f"unknown mode {self.mode!r}")


@dataclass(frozen=True)
class Candidate:
    label: str
    confidence: float


def escalation_reason(candidate: Candidate, policy: Policy, *, threshold: float,
                      signal_labels: Sequence[str]) -> str | None:
    """Why this prediction should be explained ("low_confidence", "signal"), or None."""
    if policy.below_threshold and candidate.confidence < threshold:
        return "low_confidence"
    if policy.verify_signals and candidate.label in signal_labels:
        return "signal"
    return None


def select_for_explanation(candidates: Sequence[Candidate], policy: Policy, *, threshold: float,
                           signal_labels: Sequence[str]) -> list[int]:
    """Indices to escalate, least confident first, at most max(1, floor(max_share * n)) of the batch.

    The floor of one lets a single post (``monitor explain``) or a tiny batch be explained at all; the
    stream's explanation budget bounds the overall rate.
    """
    eligible = [i for i, c in enumerate(candidates)
                if escalation_reason(c, policy, threshold=threshold, signal_labels=signal_labels)]
    if not eligible or policy.max_share <= 0:
        return []
    cap = max(1, int(policy.max_share * len(candidates) + 1e-9))
    eligible.sort(key=lambda i: (candidates[i].confidence, i))
    return sorted(eligible[:cap])


def apply_verdict(predicted: str, verdict: str, corrected: str | None, mode: Mode) -> tuple[str, str]:
    """(final label, decided_by). Only a verified ``reject`` in ``correct`` mode changes the label:
    an unverified or over-budget case keeps the classifier's label. Unlike ALEX's original rule,
    a reject may also restore a missed signal, not only remove one."""
    if mode == "correct" and verdict == "reject" and corrected and corrected != predicted:
        return corrected, "llm"
    return predicted, "classifier"


class ExplanationBudget:
    """A token bucket: at most ``rate_per_s`` explanations per second on average, ``burst`` at once.

    Over budget, a case is not queued (a backlog would only grow): it is persisted with its
    classifier label and marked ``over_budget``. The clock is injected, so this stays pure.
    """

    def __init__(self, rate_per_s: float, *, burst: float | None = None, clock=None):  # noqa: ANN001
        import time

        if rate_per_s <= 0:
            raise ValueError("rate_per_s must be positive")
        self.rate = rate_per_s
        self.capacity = burst if burst is not None else max(1.0, rate_per_s * 5)
        self._clock = clock or time.monotonic
        self._tokens = self.capacity
        self._last = self._clock()
        self._lock = threading.Lock()  # several explain threads share one budget

    def try_take(self) -> bool:
        with self._lock:
            now = self._clock()
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False

    def available(self) -> float:
        """Explanations the bucket would allow right now (refilled to the clock, nothing taken)."""
        with self._lock:
            return min(self.capacity, self._tokens + (self._clock() - self._last) * self.rate)
