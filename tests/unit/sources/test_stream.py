"""The source run loop with platforms and a broker of our own (``Platform`` and the sink's two calls): it
reconnects and fails over, retries a batch the broker did not acknowledge, stores a position only past
acknowledged events, stops reading when the broker is behind, and does not send an id twice."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from monitor.config import SourceSettings
from monitor.errors import BrokerError, ConfigError, PartlySent
from monitor.records import Post
from monitor.sources.events import SourceEvent
from monitor.sources.filters import PostFilter
from monitor.sources.positions import Position
from monitor.sources.stream import RecentIds, Stalled, run_source

NOW = datetime(2026, 11, 30, tzinfo=UTC)
FAST = SourceSettings(backoff_base_s=0.01, backoff_cap_s=0.02, commit_every_s=0.01, stall_s=5, batch=10)


def post(i: int, text: str = "my meds") -> SourceEvent:
    p = Post(id=f"p{i}", text=text, created_at=NOW, source="test")
    return SourceEvent("post", "create", position=i, post=p, value=p.model_dump_json().encode())


@dataclass
class Script:
    """Each connection plays the next list of events, then ends as told: an exception or a clean close."""

    connections: list[tuple[list[SourceEvent], BaseException | None]]
    hosts: tuple[str, ...] = ("h0", "h1")
    name: str = "test"
    seen: list[tuple[int, int | None]] = field(default_factory=list)  # (host, position) of each connection

    def position_time(self, position):
        return float(position)

    def event_time(self, event):
        return event.post.created_at.timestamp()

    async def read(self, session, host, position, stall_s):
        self.seen.append((host, position))
        if not self.connections:
            await asyncio.Event().wait()  # a quiet, open stream
        events, end = self.connections.pop(0)
        for event in events:
            yield event
        if end is not None:
            raise end


class Broker:
    """Acknowledges what it is sent, after failing the first ``failures`` sends."""

    def __init__(self, failures: int = 0, gate: threading.Event | None = None) -> None:
        self.failures, self.gate = failures, gate
        self.sent: list[str] = []
        self.stored: list[Position] = []
        self.calls = 0

    def send(self, events):
        self.calls += 1
        if self.gate is not None:
            self.gate.wait(5)
        if self.failures:
            self.failures -= 1
            raise BrokerError("broker away")
        self.sent += [e.post.id for e in events if e.post is not None]
        return {"post": sum(e.kind == "post" for e in events), "erase": 0, "bad": 0}

    def store(self, positions):
        self.stored += positions


async def _run_until(script, broker, *, done, settings=FAST, positions=None, keep=PostFilter()):
    stop = asyncio.Event()
    task = asyncio.create_task(run_source([script], broker, settings, keep, positions or {}, stop=stop))
    for _ in range(500):
        if done() or task.done():
            break
        await asyncio.sleep(0.01)
    stop.set()
    return await asyncio.wait_for(task, 5)


def test_reconnects_with_failover_resumes_from_what_it_read_and_sends_each_id_once():
    script = Script([([post(1), post(2)], ConnectionError("reset")),
                     ([post(2), post(3)], Stalled("quiet")),  # the overlap of a rewind: p2 again
                     ([post(4)], None)])
    broker = Broker()
    run = asyncio.run(_run_until(script, broker, done=lambda: len(broker.sent) >= 4))
    assert broker.sent == ["p1", "p2", "p3", "p4"]
    assert script.seen[:3] == [(0, None), (1, 2), (0, 3)]  # next host each time, from the last position read
    assert run.streams[0].counts["duplicate"] == 1
    assert broker.stored[-1].cursor == 4 and broker.stored[-1].recent == ("p1", "p2", "p3", "p4")


def test_a_batch_the_broker_refuses_is_retried_and_no_position_moves_before_it_is_acknowledged():
    broker = Broker(failures=3)
    script = Script([([post(1), post(2)], None)])
    asyncio.run(_run_until(script, broker, done=lambda: len(broker.sent) >= 2))
    assert broker.calls == 4 and broker.sent == ["p1", "p2"]
    assert all(p.cursor == 2 for p in broker.stored)  # stored only after the acknowledged send


class PartBroker(Broker):
    """Takes the first ``take`` events of the first batch, then goes away once (as the real sink says it)."""

    def __init__(self, take: int) -> None:
        super().__init__()
        self.take: int | None = take

    def send(self, events):
        if self.take is None:
            return super().send(events)
        taken, self.take = events[:self.take], None
        self.calls += 1
        self.sent += [e.post.id for e in taken]
        raise PartlySent("metadata timed out", done=len(taken), counts={"post": len(taken)})


def test_a_batch_the_broker_took_in_part_is_retried_from_where_it_stopped():
    broker = PartBroker(take=2)
    script = Script([([post(1), post(2), post(3), post(4)], None)])
    run = asyncio.run(_run_until(script, broker, done=lambda: len(broker.sent) >= 4))
    assert broker.sent == ["p1", "p2", "p3", "p4"]  # p1 and p2 not sent a second time
    assert run.sent["post"] == 4
    assert broker.stored[-1].cursor == 4


def test_reading_stops_while_the_broker_is_behind():
    gate = threading.Event()  # the broker takes nothing until the gate opens
    broker = Broker(gate=gate)
    script = Script([([post(i) for i in range(100)], None)])
    settings = FAST.model_copy(update={"max_pending": 5, "batch": 2})

    task_run: list = []
    original = run_source

    async def tracked(*args, **kwargs):
        return await original(*args, on_start=task_run.append, **kwargs)

    async def scenario_tracked():
        stop = asyncio.Event()
        task = asyncio.create_task(tracked([script], broker, settings, PostFilter(), {}, stop=stop))
        await asyncio.sleep(0.3)
        read_while_blocked = task_run[0].streams[0].counts.get("events", 0)
        gate.set()
        for _ in range(300):
            if len(broker.sent) == 100:
                break
            await asyncio.sleep(0.01)
        stop.set()
        await task
        return read_while_blocked

    read_while_blocked = asyncio.run(scenario_tracked())
    # The writer holds one batch (2), the queue max_pending (5), the reader one more waiting to be queued.
    assert read_while_blocked <= 2 + 5 + 1
    assert broker.sent == [f"p{i}" for i in range(100)]


def test_a_stored_position_resumes_there_and_its_ids_are_not_sent_again():
    script = Script([([post(8), post(9), post(10)], None)])
    broker = Broker()
    stored = {"test": Position(source="test", cursor=9, recent=("p8", "p9"))}
    asyncio.run(_run_until(script, broker, positions=stored, done=lambda: len(broker.sent) >= 1))
    assert script.seen[0] == (0, 9)
    assert broker.sent == ["p10"]


def test_filtered_posts_move_the_position_without_being_sent():
    script = Script([([post(1, "sunny day"), post(2, "my meds again"), post(3, "lunch")], None)])
    broker = Broker()
    asyncio.run(_run_until(script, broker, keep=PostFilter(terms=("meds",)),
                           done=lambda: bool(broker.stored) and broker.stored[-1].cursor == 3))
    assert broker.sent == ["p2"]
    assert broker.stored[-1].cursor == 3


def test_a_refused_token_stops_the_source_with_a_config_error():
    script = Script([([], ConfigError("token refused"))])
    with pytest.raises(ConfigError, match="token"):
        asyncio.run(_run_until(script, Broker(), done=lambda: False))


def test_recent_ids_are_bounded_and_ordered():
    recent = RecentIds(["a", "b"], limit=3)
    for item in ("c", "d", "b"):
        recent.add(item)
    assert recent.ids() == ("c", "d", "b") and "a" not in recent


def test_a_position_reads_as_platform_time_whatever_the_source_is_named():
    from monitor.sources.mastodon import Timeline
    from monitor.sources.stream import JetstreamStream, MastodonStream

    assert JetstreamStream(("wss://j",), name="bsky-vaccines").position_time(1_764_504_000_000_000) == 1_764_504_000.0
    snowflake = 1_764_504_000_000 << 16 | 7  # milliseconds << 16 | sequence
    assert MastodonStream(Timeline("https://m.example"), None, name="m").position_time(snowflake) == 1_764_504_000.0
