"""StageRunner: what is acknowledged, retried, dead-lettered and waited out, on stand-in Faust objects.

The runner is the thing under test; the Faust event, stream, consumer and topic are minimal stand-ins
that record what the runner did to them.
"""

import asyncio
import random
from dataclasses import dataclass, field

import pytest

from monitor.config import StreamSettings
from monitor.errors import StorageError
from monitor.faults import FaultPlan
from monitor.health import HealthReporter
from monitor.records import DeadLetter, RecordError
from stream_jobs.batches import StageRunner

SETTINGS = StreamSettings(retry_base_s=0.001, retry_cap_s=0.004, max_attempts=3)


@dataclass
class Message:
    key: bytes
    value: bytes
    offset: int
    topic: str = "posts"
    partition: int = 0
    timestamp: float = 0.0


@dataclass
class Event:
    message: Message


@dataclass
class Stream:
    acked: list[int] = field(default_factory=list)

    async def ack(self, event):
        self.acked.append(event.message.offset)


@dataclass
class DeadLetterTopic:
    sent: list[DeadLetter] = field(default_factory=list)

    async def send(self, *, key, value, force):
        assert force
        self.sent.append(DeadLetter.from_bytes(value))
        future = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def _events(n):
    return [Event(Message(key=f"p{i}".encode(), value=f"v{i}".encode(), offset=i)) for i in range(n)]


def _runner(faults=None):
    letters = DeadLetterTopic()
    health = HealthReporter(None, "test")
    health.mark_started()
    runner = StageRunner("persist", agent="persist-predictions", dead_letter=letters, settings=SETTINGS,
                         health=health, faults=faults or FaultPlan(), rng=random.Random(1))
    return runner, letters, health


def test_a_transient_fault_is_waited_out_with_the_role_not_ready():
    runner, letters, health = _runner()
    stream, done, seen = Stream(), [], []

    async def handle(events):
        seen.append(health.state().ready)
        if len(seen) <= 4:
            raise StorageError("connection refused", transient=True)
        done.extend(e.message.offset for e in events)

    asyncio.run(runner.settle(stream, _events(5), handle))
    assert done == [0, 1, 2, 3, 4] and stream.acked == [0, 1, 2, 3, 4]
    assert letters.sent == []
    assert seen == [True, False, False, False, False]
    assert health.state().ready and health.state().blocks == {}


def test_nothing_is_acknowledged_while_a_fault_lasts_nor_when_the_batch_is_cancelled():
    runner, _, _ = _runner()
    stream = Stream()

    async def handle(events):
        raise StorageError("database restarting", transient=True)

    async def main():
        task = asyncio.create_task(runner.settle(stream, _events(3), handle))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert stream.acked == []


def test_an_unknown_error_on_one_batch_is_retried_and_the_batch_lands():
    runner, letters, _ = _runner()
    stream, calls = Stream(), []

    async def handle(events):
        calls.append(len(events))
        if len(calls) == 1:
            raise KeyError("a bug that goes away")

    asyncio.run(runner.settle(stream, _events(8), handle))
    assert calls == [8, 8] and stream.acked == list(range(8)) and letters.sent == []


def test_a_record_that_always_fails_is_dead_lettered_alone_and_the_rest_lands():
    runner, letters, _ = _runner()
    stream, stored = Stream(), set()

    async def handle(events):
        if any(e.message.key == b"p5" for e in events):
            raise ValueError("cannot be written")
        stored.update(e.message.offset for e in events)

    asyncio.run(runner.settle(stream, _events(16), handle))
    assert stored == set(range(16)) - {5}
    assert [(dl.original, dl.stage, dl.reason, dl.offset) for dl in letters.sent] == [(b"v5", "persist", "ValueError", 5)]
    assert sorted(stream.acked) == list(range(16))


def test_a_poison_record_is_dead_lettered_without_retries():
    runner, letters, _ = _runner()
    stream, calls = Stream(), []

    async def handle(events):
        calls.append(len(events))
        if any(e.message.key == b"p1" for e in events):
            raise RecordError("not_json", "not one JSON value")

    asyncio.run(runner.settle(stream, _events(2), handle))
    assert [dl.reason for dl in letters.sent] == ["not_json"]
    assert calls == [2, 1, 1]  # the batch, then each half once: no retries of the poison record


def test_when_every_record_fails_alone_the_fault_is_systemic_and_is_waited_out_not_dead_lettered():
    runner, letters, health = _runner()
    stream, calls, readiness = Stream(), [], []

    async def handle(events):
        calls.append(len(events))
        readiness.append(health.state().ready)
        if len(calls) < 40:
            raise RuntimeError("the schema is broken")

    asyncio.run(runner.settle(stream, _events(4), handle))
    assert letters.sent == [] and stream.acked == [0, 1, 2, 3]
    assert False in readiness and health.state().ready


def test_a_drill_fails_the_chosen_batch_once():
    runner, letters, _ = _runner(FaultPlan(fail_batch_stage="persist", fail_batch_number=2))
    stream, calls = Stream(), []

    async def handle(events):
        calls.append(events[0].message.offset)

    async def main():
        for start in (0, 10, 20):
            await runner.settle(stream, [Event(Message(key=b"k", value=b"v", offset=start + i)) for i in range(2)],
                                handle)

    asyncio.run(main())
    assert calls == [0, 10, 20] and letters.sent == [] and len(stream.acked) == 6
