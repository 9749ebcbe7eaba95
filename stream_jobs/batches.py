"""Durable batches: a batch's offsets are acknowledged only when every record in it has its result.

Each agent takes its records with ``stream.noack_take`` (Faust never acknowledges them by itself) and
hands every batch to ``StageRunner.settle`` with a ``handle`` coroutine that does the stage's work and
awaits the broker's acknowledgement of everything it sends. ``settle`` acknowledges the batch only
after ``handle`` succeeded for every record, or the records that fail alone are in the dead-letter
topic. Until then nothing is acknowledged, so a crash, a kill or a shutdown mid-batch redelivers it.

How each failure is met is ``monitor.faults``' policy: transient faults are waited out and the role
reported not ready; an unknown error is retried, then the batch is split to find the records that
fail alone (poison, dead-lettered once); if nothing succeeds alone the fault is the system's and is
waited out too.

While a stage waits, its consumer takes nothing more: the agent does not ask for the next batch, so
Faust's bounded stream buffer fills and its fetcher stops reading the partitions (backpressure);
the process sleeps between tries. The partitions are deliberately *not* paused with
``consumer.pause_partitions``: Faust drops the records of a batch already fetched for a partition
paused that way, and its gap tracking then commits past them, which loses them (seen in a soak run:
one post lost per pause).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from monitor import telemetry
from monitor.config import StreamSettings
from monitor.errors import BrokerError
from monitor.faults import FailureKind, FaultPlan, backoff_delay, failure_kind
from monitor.health import HealthReporter
from monitor.records import DeadLetter, Stage

log = logging.getLogger(__name__)

Handle = Callable[[Sequence[Any]], Awaitable[None]]  # Faust events in, raises on failure
#: Agents of each stage waiting out a fault in this process (persist has two agents, one gauge).
_waiting: Counter[str] = Counter()


async def deliver(sends: Sequence[Awaitable[Any]], *, timeout_s: float) -> None:
    """Start every send, then wait until the broker has acknowledged all of them (or raise).

    ``sends`` are ``topic.send(..., force=True)`` calls: forced, because Faust would otherwise attach
    them to the current event and publish them only when it is acknowledged, which here is after.
    """
    try:
        futures = [await send for send in sends]
        await asyncio.wait_for(asyncio.gather(*futures), timeout_s)
    except TimeoutError as exc:
        raise BrokerError(f"the broker did not acknowledge {len(sends)} record(s) within {timeout_s:.0f} s",
                          transient=True) from exc
    except Exception as exc:
        if type(exc).__module__.split(".")[0] not in ("aiokafka", "kafka"):
            raise
        # The client says itself whether a retry can help (a leader change, a broker restarting).
        raise BrokerError(f"the broker refused a record: {type(exc).__name__}: {exc}",
                          transient=bool(getattr(exc, "retriable", False))) from exc


class StageRunner:
    """Settles the batches of one stage (one agent): retries, isolation, dead letters, readiness."""

    def __init__(self, stage: Stage, *, agent: str, dead_letter: Any,
                 settings: StreamSettings, health: HealthReporter, faults: FaultPlan,
                 rng: random.Random | None = None) -> None:
        self.stage = stage
        self.agent = agent  # its log lines and its readiness block (a stage may have several agents)
        self.dead_letter = dead_letter
        self.settings = settings
        self.health = health
        self.faults = faults
        self.rng = rng or random.Random()
        self._waiting = False
        self._retries = 0

    async def settle(self, stream: Any, events: Sequence[Any], handle: Handle) -> None:
        """Process ``events`` until each has a durable result, then acknowledge them all."""
        number = self.faults.new_batch(self.stage)
        pending = list(events)
        waits = 0
        try:
            while pending:
                error = await self._attempt(pending, handle, number, attempts=self.settings.max_attempts)
                if error is None:
                    break
                if failure_kind(error) == "poison" and len(pending) == 1:
                    await self._dead_letter(pending[0], error)
                    break
                failed, succeeded = (await self._isolate(pending, handle, number) if len(pending) > 1
                                     else ([(pending[0], error)], 0))
                if failed and not succeeded and all(failure_kind(e) != "poison" for _, e in failed):
                    # Every record fails, alone too, with no sign it is the data's fault: the fault is
                    # the system's (a bug, a broken dependency). Wait it out; never empty the stream.
                    pending = [event for event, _ in failed]
                    await self._wait("systemic", waits, failed[0][1])
                    waits += 1
                    continue
                for event, exc in failed:
                    await self._dead_letter(event, exc)
                break
        finally:
            self._recovered()
        for event in events:
            await stream.ack(event)

    async def _attempt(self, events: Sequence[Any], handle: Handle, number: int, *, attempts: int) -> Exception | None:
        """``handle(events)`` until it succeeds (None), waiting out transient faults for as long as they
        last; the error once it is poison or an unknown error has failed ``attempts`` times."""
        failures = waits = 0
        while True:
            try:
                self.faults.before(self.stage, number, [_key_text(e) for e in events])
                await handle(events)
                return None
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every error is classified below
                kind = failure_kind(exc)
                if kind == "poison":
                    return exc
                if kind == "unknown":
                    failures += 1
                    log.warning("%s: %d record(s) failed (try %d of %d): %r", self.agent, len(events), failures,
                                attempts, exc, exc_info=failures == 1)
                    if failures >= attempts:
                        return exc
                await self._wait(kind, waits, exc)
                waits += 1

    async def _isolate(self, events: Sequence[Any], handle: Handle,
                       number: int) -> tuple[list[tuple[Any, Exception]], int]:
        """Split the batch until every failing record is alone: (failures, records that succeeded).

        Halves are tried once each (a failing half is split again at once); a record alone gets the
        full ``max_attempts`` before it counts as failing.
        """
        failed: list[tuple[Any, Exception]] = []
        succeeded = 0
        middle = len(events) // 2
        parts = [list(events[middle:]), list(events[:middle])]
        while parts:
            part = parts.pop()
            attempts = self.settings.max_attempts if len(part) == 1 else 1
            error = await self._attempt(part, handle, number, attempts=attempts)
            if error is None:
                succeeded += len(part)
            elif len(part) == 1:
                failed.append((part[0], error))
            else:
                middle = len(part) // 2
                parts += [part[middle:], part[:middle]]
        return failed, succeeded

    async def _wait(self, kind: FailureKind | str, attempt: int, exc: BaseException) -> None:
        """Back off with the role not ready (and nothing more taken); counted by stage and kind."""
        delay = backoff_delay(attempt, base_s=self.settings.retry_base_s, cap_s=self.settings.retry_cap_s,
                              rng=self.rng)
        telemetry.RETRIES.labels(self.stage, kind).inc()
        self._retries += 1
        if not self._waiting:
            self._waiting = True
            _waiting[self.stage] += 1
            telemetry.FAULT_WAITING.labels(self.stage).set(1)
            log.warning("%s: waiting out a %s fault: %s", self.agent, kind, exc)
        elif attempt % 10 == 0:
            log.warning("%s: still waiting out a %s fault after %d retries: %s", self.agent, kind, self._retries,
                        exc)
        self.health.block(self.agent, f"{kind} fault: {str(exc)[:300]}")
        await asyncio.sleep(delay)

    def _recovered(self) -> None:
        if not self._waiting:
            return
        self._waiting = False
        _waiting[self.stage] -= 1
        telemetry.FAULT_WAITING.labels(self.stage).set(1 if _waiting[self.stage] > 0 else 0)
        self.health.unblock(self.agent)
        log.warning("%s: recovered after %d retries", self.agent, self._retries)
        self._retries = 0

    async def _dead_letter(self, event: Any, exc: Exception) -> None:
        """The record's bytes, stage and reason to the dead-letter topic (waited for: it is the record's
        durable result)."""
        message = event.message
        letter = DeadLetter.from_error(exc, raw=message.value or b"", stage=self.stage, key=message.key,
                                       topic=message.topic, partition=message.partition, offset=message.offset,
                                       time=datetime.now(UTC))
        reason = letter.reason
        log.error("%s: record %s[%s]@%s dead-lettered: %s", self.agent, message.topic, message.partition,
                  message.offset, exc)
        tries = 0
        while True:  # the dead letter itself must land; the broker being down is waited out
            try:
                await deliver([self.dead_letter.send(key=message.key, value=letter.to_bytes(), force=True)],
                              timeout_s=self.settings.send_timeout_s)
                break
            except BrokerError as failure:
                if not failure.transient:
                    raise
                await self._wait("transient", tries, failure)
                tries += 1
        telemetry.DEAD_LETTERS.labels(self.stage, reason).inc()


def position(event: Any) -> tuple[int, int]:
    """Where a record sits in its topic (an agent reads one topic): (partition, offset)."""
    return event.message.partition, event.message.offset


def _key_text(event: Any) -> str:
    key = event.message.key
    return key.decode("utf-8", "replace") if isinstance(key, bytes | bytearray) else str(key or "")
