"""What a failed batch is, and how long to wait before trying it again. Pure.

Every error a stream stage meets is one of three kinds, and each has its own fate:

- ``transient``: the service's fault, not the data's (a database or broker that is unreachable,
  restarting or failing over; a serialisation failure or deadlock). Waited out: the batch is retried
  with capped exponential backoff and jitter, for as long as it takes, and nothing is acknowledged.
- ``poison``: the record's own fault, certain to fail again (it cannot be decoded, validated or
  written). It goes to the dead-letter topic with its bytes, stage and reason, and the stream moves on.
- ``unknown``: anything else (a bug, an injected fault). Tried a few times; if it persists, the batch
  is split to find the records that fail alone. Those are poison; if every record fails alone, the
  fault is the system's (``systemic``) and is waited out like a transient one, so a broken
  deployment never empties the stream into the dead-letter topic.

The fault drills (``FaultPlan``) raise ``InjectedFault``, an unknown kind, so a drill runs the same
path a real bug would.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import ValidationError

from monitor.records import RecordError

FailureKind = Literal["transient", "poison", "unknown"]

# Builtin errors that say "the other side did not answer in time or hung up".
_TRANSIENT_BUILTINS = (ConnectionError, TimeoutError)


class InjectedFault(RuntimeError):
    """Raised by a fault drill (``MONITOR_FAULTS__*``); not a real failure."""


def failure_kind(exc: BaseException) -> FailureKind:
    """Which of the three kinds ``exc`` is (see the module docstring)."""
    if isinstance(exc, InjectedFault):
        return "unknown"
    if getattr(exc, "transient", False) is True:  # MonitorError(transient=True), set by the adapters
        return "transient"
    if isinstance(exc, RecordError | ValidationError | UnicodeError):
        return "poison"
    if isinstance(exc, _TRANSIENT_BUILTINS):
        return "transient"
    if getattr(exc, "retriable", False) is True:  # kafka-python / aiokafka errors say so themselves
        return "transient"
    return "unknown"


def backoff_delay(attempt: int, *, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Seconds to wait before try ``attempt + 1`` (``attempt`` counts from 0).

    Exponential (``base_s * 2**attempt``), capped at ``cap_s``, with "equal jitter": a random point in
    the upper half of the step, so workers that failed together do not retry together, and no wait
    is ever near zero (a busy loop against a service that is down).
    """
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    step = min(cap_s, base_s * 2 ** min(attempt, 62))
    return step / 2 + rng.random() * step / 2


@dataclass
class FaultPlan:
    """Fault drills for one worker: the n-th batch of a stage fails once; poison records always fail.

    ``before`` is called by the stream before each try of a batch with the post ids it holds.
    """

    fail_batch_stage: str = ""
    fail_batch_number: int = 1
    poison_stage: str = ""
    poison_marker: str = ""
    _batches: dict[str, int] = field(default_factory=dict)
    _fired: bool = False

    def new_batch(self, stage: str) -> int:
        """Count a batch of ``stage`` (once per batch, not per try); returns its number from 1."""
        self._batches[stage] = self._batches.get(stage, 0) + 1
        return self._batches[stage]

    def before(self, stage: str, batch_number: int, post_ids: Iterable[str]) -> None:
        if (not self._fired and stage == self.fail_batch_stage and batch_number == self.fail_batch_number):
            self._fired = True
            raise InjectedFault(f"fault drill: batch {batch_number} of stage {stage} fails once")
        if self.poison_marker and stage == self.poison_stage:
            poisoned = [i for i in post_ids if self.poison_marker in i]
            if poisoned:
                raise InjectedFault(f"fault drill: poison record(s) {', '.join(sorted(poisoned)[:3])} at {stage}")


@dataclass
class StallWatchdog:
    """Finds partitions a consumer group has stopped making progress on.

    A partition is stalled when it has records to process (end > committed) and its committed offset
    has not moved for ``stall_after_s``, while the role is not waiting out a known fault. That is
    what an agent stuck forever in ``take()`` looks like from outside (faust-streaming has reports
    of it after days), and a restart cures it, as the redelivery loses nothing.
    """

    stall_after_s: float
    _since: dict[tuple[str, int], tuple[int, float]] = field(default_factory=dict)

    def observe(self, positions: dict[tuple[str, int], tuple[int, int]], *, now: float,
                waiting: bool) -> list[str]:
        """Feed one measurement of (committed, end) per partition; the stalled ones, described."""
        stalled = []
        for tp, (committed, end) in positions.items():
            previous = self._since.get(tp)
            if waiting or end <= committed or previous is None or previous[0] != committed:
                self._since[tp] = (committed, now)
                continue
            if now - previous[1] >= self.stall_after_s:
                stalled.append(f"{tp[0]}[{tp[1]}] at offset {committed} with {end - committed} record(s) "
                               f"waiting, no progress for {now - previous[1]:.0f} s")
        return stalled
