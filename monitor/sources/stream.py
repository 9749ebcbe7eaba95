"""A source's run loop: read platform streams, filter, send to the broker, store positions.

One reader task per stream (a Jetstream subscription, a Mastodon timeline) and one writer task:
- a reader connects, resumes from its position, and puts every event it reads, in order, on a bounded
  queue; when the queue is full it stops reading (back-pressure: memory stays flat while the broker is
  away, and the platform's socket, not this process, holds the backlog);
- it reconnects after an error, a close or a stall (no message for ``stall_s``) with capped exponential
  backoff and jitter, trying the next configured host each time;
- the writer sends each batch's posts, erasures and dead letters and waits for the broker's
  acknowledgement; only then does it move the streams' positions past the batch, and it stores them
  at most every ``commit_every_s``. A killed source therefore resumes before anything it lost, and the
  ids in the stored position keep the overlap from being sent twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from monitor import telemetry
from monitor.config import SourceSettings
from monitor.errors import BrokerError, ConfigError, PartlySent
from monitor.faults import backoff_delay
from monitor.sources import bluesky, mastodon
from monitor.sources.events import SourceEvent
from monitor.sources.filters import KEPT, PostFilter
from monitor.sources.positions import RECENT_LIMIT, Position

log = logging.getLogger(__name__)
#: Largest WebSocket frame or SSE event accepted (a post at the schema's limit is ~160 KB of JSON).
MAX_FRAME_BYTES = 4 * 1024 * 1024


class Stalled(Exception):  # noqa: N818 - a condition the reader handles, not an error to the user
    """No message for ``stall_s`` on a connected stream."""


class Platform(Protocol):
    """One platform stream: a name (its position key) and how to read it from a position."""

    name: str
    hosts: Sequence[str]

    def read(self, http: Any, host: int, position: int | None, stall_s: float) -> AsyncIterator[SourceEvent]:
        ...

    def position_time(self, position: int) -> float:
        """The platform time (Unix seconds) a position stands for."""
        ...

    def event_time(self, event: SourceEvent) -> float:
        """The platform time of a kept post, for the lag behind the platform."""
        ...


@dataclass
class JetstreamStream:
    """Bluesky posts from Jetstream; ``hosts`` are subscribe URLs, tried in turn."""

    hosts: Sequence[str]
    dids: Sequence[str] = ()
    rewind_s: float = 5.0
    name: str = bluesky.SOURCE

    def position_time(self, position: int) -> float:
        return position / 1_000_000  # time_us

    def event_time(self, event: SourceEvent) -> float:
        # The relay's clock, not the client's createdAt, which can be anything.
        if event.position is not None:
            return self.position_time(event.position)
        return event.post.created_at.timestamp() if event.post is not None else time.time()

    async def read(self, http: Any, host: int, position: int | None, stall_s: float) -> AsyncIterator[SourceEvent]:
        import aiohttp

        url = bluesky.subscribe_url(self.hosts[host], position=position, rewind_s=self.rewind_s, dids=self.dids)
        async with http.ws_connect(url, max_msg_size=MAX_FRAME_BYTES, heartbeat=max(5.0, stall_s / 2),
                                      autoping=True) as ws:
            log.info("connected to %s", url)
            while True:
                try:
                    message = await ws.receive(timeout=stall_s)
                except TimeoutError:
                    raise Stalled(f"no event from {self.hosts[host]} for {stall_s:.0f}s") from None
                if message.type == aiohttp.WSMsgType.TEXT:
                    yield bluesky.read_event(message.data, received=datetime.now(UTC))
                elif message.type == aiohttp.WSMsgType.BINARY:
                    yield bluesky.read_event(message.data, received=datetime.now(UTC))
                elif message.type == aiohttp.WSMsgType.ERROR:
                    raise ConnectionError(f"{self.hosts[host]}: {ws.exception()}")
                else:  # CLOSE, CLOSING, CLOSED
                    return


@dataclass
class MastodonStream:
    """One Mastodon timeline: its streaming API, and after a gap its REST timeline from the position."""

    timeline: mastodon.Timeline
    token: str | None
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or f"{mastodon.SOURCE}:{self.timeline.name}"
        self.hosts = (self.timeline.instance,)

    def position_time(self, position: int) -> float:
        return (position >> 16) / 1000  # a snowflake id: milliseconds << 16 | sequence

    def event_time(self, event: SourceEvent) -> float:
        return event.post.created_at.timestamp() if event.post is not None else time.time()

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def read(self, http: Any, host: int, position: int | None, stall_s: float) -> AsyncIterator[SourceEvent]:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=None, connect=30, sock_read=None)
        async with http.get(self.timeline.stream_url(), headers={**self._headers(), "Accept": "text/event-stream"},
                               timeout=timeout) as response:
            await _check(response, self.timeline.instance)
            log.info("connected to %s", self.timeline.stream_url())
            # The stream is open (its events wait in the socket): fill the gap since the position from the
            # REST timeline first; an overlap between the two is dropped by id.
            if position is not None:
                async for event in self._backfill(http, position):
                    yield event
            parser = mastodon.SseParser()
            decoder = _Utf8()
            while True:
                try:
                    chunk = await asyncio.wait_for(response.content.readany(), timeout=stall_s)
                except TimeoutError:
                    raise Stalled(f"no event or heartbeat from {self.timeline.instance} for {stall_s:.0f}s") from None
                if not chunk:
                    return  # the server closed the stream
                for name, data in parser.feed(decoder.decode(chunk)):
                    yield mastodon.read_event(name, data, timeline=self.timeline, received=datetime.now(UTC))
                if parser.buffered > MAX_FRAME_BYTES:
                    raise ConnectionError(f"{self.timeline.instance}: an event over {MAX_FRAME_BYTES} bytes")

    async def _backfill(self, http: Any, position: int) -> AsyncIterator[SourceEvent]:
        import aiohttp

        after = str(position)
        while True:
            async with http.get(self.timeline.timeline_url(min_id=after), headers=self._headers(),
                                   timeout=aiohttp.ClientTimeout(total=60)) as response:
                await _check(response, self.timeline.instance)
                page = await response.json(content_type=None)
            statuses = sorted((s for s in page if isinstance(s, dict) and isinstance(s.get("id"), str)
                               and mastodon.status_position(s["id"]) is not None),
                              key=lambda s: int(s["id"])) if isinstance(page, list) else []
            if not statuses:
                return
            for status in statuses:
                yield mastodon.read_status(status, timeline=self.timeline, received=datetime.now(UTC),
                                           raw=str(status.get("id")))
            after = statuses[-1]["id"]


async def _check(response: Any, instance: str) -> None:
    if response.status in (401, 403):
        raise ConfigError(f"{instance} refused the access token ({response.status}): set MONITOR_SOURCE__MASTODON_TOKEN")
    if response.status != 200:
        raise ConnectionError(f"{instance} answered {response.status}")


class _Utf8:
    """Decode a byte stream whose chunks may split a character."""

    def __init__(self) -> None:
        import codecs

        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def decode(self, chunk: bytes) -> str:
        return self._decoder.decode(chunk)


class RecentIds:
    """The ids of the last ``limit`` records sent, in order (``OrderedDict`` as a bounded ordered set)."""

    def __init__(self, ids: Sequence[str] = (), limit: int = RECENT_LIMIT) -> None:
        self.limit = limit
        self._ids: OrderedDict[str, None] = OrderedDict((i, None) for i in ids[-limit:])

    def __contains__(self, item: str) -> bool:
        return item in self._ids

    def add(self, item: str) -> None:
        self._ids[item] = None
        self._ids.move_to_end(item)
        while len(self._ids) > self.limit:
            self._ids.popitem(last=False)

    def ids(self) -> tuple[str, ...]:
        return tuple(self._ids)


@dataclass
class StreamState:
    """One stream's progress: what was read (reader) and what the broker acknowledged (writer)."""

    platform: Platform
    read_position: int | None
    acked_position: int | None
    queued: RecentIds
    acked: RecentIds
    host: int = 0
    connected: bool = False
    last_message: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] = self.counts.get(what, 0) + n

    def position(self) -> Position:
        return Position(source=self.platform.name, cursor=self.acked_position, recent=self.acked.ids(),
                        host=self.platform.hosts[self.host], updated_at=datetime.now(UTC).isoformat(),
                        counts=dict(self.counts))


@dataclass
class SourceRun:
    """A running source: its streams, and what ``run_source`` counted (for a CLI's status line)."""

    streams: list[StreamState]
    sent: dict[str, int] = field(default_factory=lambda: {"post": 0, "erase": 0, "bad": 0})
    started: float = field(default_factory=time.monotonic)
    pending: int = 0


class Health(Protocol):
    def mark_started(self) -> None: ...
    def block(self, key: str, reason: str) -> None: ...
    def unblock(self, key: str) -> None: ...
    def beat(self) -> None: ...


async def run_source(platforms: Sequence[Platform], sink: Any, settings: SourceSettings, post_filter: PostFilter,
                     positions: dict[str, Position], *, stop: asyncio.Event, health: Health | None = None,
                     on_start: Callable[[SourceRun], None] = lambda _run: None) -> SourceRun:
    """Watch ``platforms`` until ``stop`` is set; then send what was read and store the positions.

    ``sink`` is a ``BrokerSink`` (``send``/``store`` block, so they run in a thread).
    """
    import aiohttp

    streams = []
    for platform in platforms:
        stored = positions.get(platform.name)
        streams.append(StreamState(platform, stored.cursor if stored else None, stored.cursor if stored else None,
                                   RecentIds(stored.recent if stored else ()), RecentIds(stored.recent if stored else ())))
        for what in ("kept", "dropped_language", "dropped_keyword", "dropped_sample", "duplicate"):
            telemetry.SOURCE_POSTS.labels(platform.name, what)
        telemetry.SOURCE_STALLED.labels(platform.name).set(0)
    run = SourceRun(streams)
    on_start(run)
    queue: asyncio.Queue[tuple[StreamState, SourceEvent]] = asyncio.Queue(maxsize=settings.max_pending)
    connector = aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        readers = [asyncio.create_task(_read(s, http, queue, settings, post_filter, run, health), name=s.platform.name)
                   for s in streams]
        writer = asyncio.create_task(_write(streams, queue, sink, settings, run, health), name="writer")
        beat = asyncio.create_task(_beat(run, health, settings.stall_s))
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopping, writer, *readers], return_when=asyncio.FIRST_COMPLETED)
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for task in done:  # a reader or the writer that ended by itself ended with an error: raise it
            if task is not stopping and task.exception() is not None:
                writer.cancel()
                beat.cancel()
                raise task.exception()  # type: ignore[misc]
        await queue.put((streams[0], SourceEvent("skip", "stop")))  # the writer drains up to this, then ends
        await writer
        beat.cancel()
        stopping.cancel()
    return run


async def _beat(run: SourceRun, health: Health | None, stall_s: float) -> None:
    while True:
        now = time.monotonic()
        for s in run.streams:
            healthy = s.connected and now - s.last_message < stall_s
            telemetry.SOURCE_HEALTHY.labels(s.platform.name).set(1 if healthy else 0)
        telemetry.SOURCE_PENDING.labels(run.streams[0].platform.name).set(run.pending)
        if health is not None:
            health.beat()
        await asyncio.sleep(1.0)


async def _read(state: StreamState, http: Any, queue: asyncio.Queue[tuple[StreamState, SourceEvent]],
                settings: SourceSettings, post_filter: PostFilter, run: SourceRun, health: Health | None) -> None:
    name, rng, attempt = state.platform.name, random.Random(), 0
    while True:
        reason = "closed"
        try:
            async for event in state.platform.read(http, state.host, state.read_position, settings.stall_s):
                if not state.connected:
                    state.connected, attempt = True, 0
                    telemetry.SOURCE_CONNECTED.labels(name).set(1)
                    if health is not None:
                        health.mark_started()
                        health.unblock(f"source:{name}")
                state.last_message = time.monotonic()
                telemetry.SOURCE_STALLED.labels(name).set(0)
                event = _decide(state, event, post_filter)
                run.pending += 1
                await queue.put((state, event))  # waits while the broker is behind: back-pressure
        except Stalled as exc:
            reason = "stall"
            telemetry.SOURCE_STALLED.labels(name).set(1)
            log.warning("%s: %s; reconnecting", name, exc)
        except ConfigError:
            raise
        except (OSError, ConnectionError, TimeoutError) as exc:
            reason = "error"
            log.warning("%s: %s: %s; reconnecting", name, type(exc).__name__, exc)
        except Exception as exc:  # noqa: BLE001 - aiohttp's errors (and a server's odd answers) all mean reconnect
            reason = "error"
            log.warning("%s: %s: %s; reconnecting", name, type(exc).__name__, exc)
        state.connected = False
        telemetry.SOURCE_CONNECTED.labels(name).set(0)
        telemetry.SOURCE_RECONNECTS.labels(name, reason).inc()
        if health is not None:
            health.block(f"source:{name}", f"{reason}; reconnecting")
        state.host = (state.host + 1) % len(state.platform.hosts)  # fail over to the next host
        await asyncio.sleep(backoff_delay(attempt, base_s=settings.backoff_base_s, cap_s=settings.backoff_cap_s,
                                          rng=rng))
        attempt += 1


def once_key(event: SourceEvent) -> str | None:
    """What a resumed stream's overlap is recognised by: a post's id; a delete's or a bad frame's own key
    (apart from post ids: a post and its delete are two records to send)."""
    if event.kind == "post" and event.post is not None:
        return event.post.id
    if event.kind == "erase" and event.erasure is not None:
        return f"erase:{event.erasure.post_id or 'author:' + (event.erasure.author or '')}"
    if event.kind == "bad" and event.raw is not None:
        return "bad:" + hashlib.blake2b(event.raw, digest_size=12).hexdigest()
    return None


def _decide(state: StreamState, event: SourceEvent, post_filter: PostFilter) -> SourceEvent:
    """Count the event; a post the filters drop, or one already sent, becomes a skip that still moves the position."""
    name = state.platform.name
    telemetry.SOURCE_EVENTS.labels(name, event.kind, event.what).inc()
    state.count("events")
    state.count(event.kind)
    state.count(event.what)
    if event.position is not None:
        state.read_position = max(state.read_position or 0, event.position)
    key = once_key(event)
    if key is not None and event.kind != "post" and key in state.queued:  # a delete or bad frame seen already
        state.count("duplicate")
        return SourceEvent("skip", "duplicate", event.position)
    if key is not None and event.kind != "post":
        state.queued.add(key)
    if event.kind == "post" and event.post is not None:
        verdict = post_filter.verdict(event.post.id, event.post.text, langs=event.langs, tags=event.tags)
        if verdict == KEPT and event.post.id in state.queued:
            verdict = "duplicate"
        telemetry.SOURCE_POSTS.labels(name, verdict).inc()
        state.count(verdict)
        if verdict != KEPT:
            return SourceEvent("skip", verdict, event.position)
        state.queued.add(event.post.id)
        telemetry.SOURCE_LAG.labels(name).set(max(0.0, time.time() - state.platform.event_time(event)))
    return event


async def _take(queue: asyncio.Queue[Any], limit: int, within: float, first_within: float) -> list[Any]:
    """Up to ``limit`` items: the first within ``first_within`` (else none), the rest within ``within`` of it."""
    try:
        items = [await asyncio.wait_for(queue.get(), timeout=first_within)]
    except TimeoutError:
        return []
    deadline = time.monotonic() + within
    while len(items) < limit:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            items.append(await asyncio.wait_for(queue.get(), timeout=left))
        except TimeoutError:
            break
    return items


async def _write(streams: list[StreamState], queue: asyncio.Queue[tuple[StreamState, SourceEvent]], sink: Any,
                 settings: SourceSettings, run: SourceRun, health: Health | None) -> None:
    rng, last_store, dirty = random.Random(), time.monotonic(), False
    while True:
        # A quiet stream still gets its last position stored, within commit_every_s.
        batch = await _take(queue, settings.batch, within=0.2, first_within=settings.commit_every_s)
        final = bool(batch) and batch[-1][1].kind == "skip" and batch[-1][1].what == "stop"
        if final:
            batch = batch[:-1]
        events = [e for _, e in batch if e.kind in ("post", "erase", "bad")]
        attempt, counts = 0, Counter()
        while events:
            try:
                counts.update(await asyncio.to_thread(sink.send, events))
                break
            except BrokerError as exc:
                if isinstance(exc, PartlySent):  # the broker has the first events: only the rest go again
                    counts.update(exc.counts)
                    events = events[exc.done:]
                telemetry.SOURCE_SEND_FAILURES.inc()
                if health is not None:
                    health.block("broker", str(exc)[:300])
                log.warning("broker: %s; retrying the %d events it did not acknowledge", exc, len(events))
                await asyncio.sleep(backoff_delay(attempt, base_s=settings.backoff_base_s,
                                                  cap_s=min(settings.backoff_cap_s, 30.0), rng=rng))
                attempt += 1
        if health is not None and attempt:
            health.unblock("broker")
        for kind, n in counts.items():
            run.sent[kind] += n
            telemetry.SOURCE_SENT.labels(kind).inc(n)
        for state, event in batch:  # acknowledged: the positions may move past these events
            if event.position is not None:
                state.acked_position = max(state.acked_position or 0, event.position)
            if (key := once_key(event)) is not None:
                state.acked.add(key)
        run.pending -= len(batch)
        dirty = dirty or bool(batch)
        if dirty and (final or time.monotonic() - last_store >= settings.commit_every_s):
            try:
                await asyncio.to_thread(sink.store, [s.position() for s in streams if s.acked_position is not None])
                dirty, last_store = False, time.monotonic()
                for s in streams:
                    if s.acked_position is not None:
                        telemetry.SOURCE_POSITION.labels(s.platform.name).set(
                            s.platform.position_time(s.acked_position))
            except BrokerError as exc:  # the next round tries again; nothing is lost, a restart re-reads more
                log.warning("broker: could not store positions: %s", exc)
                if final:
                    raise
        if final:
            return

