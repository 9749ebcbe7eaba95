"""The machinery every stand-in shares: an aiohttp app on its own loop in a background thread, and the
feed that walks a connection through the event list (pacing, stalls, cuts, appended events).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from aiohttp import web

#: One item of a stand-in's stream: a JSON object to encode, or a string sent verbatim (malformed data).
Event = dict[str, Any] | str

# Handlers end on their own once the server is closing; this only bounds a stuck one.
_SHUTDOWN_TIMEOUT_S = 1.0


@dataclass
class Subscriber:
    """Where one streaming connection stands: its order among connections and its place in the list."""

    number: int
    position: int
    delivered: int = 0


class StandinServer:
    """Base of the stand-ins: owns the events, the settings a test may change while it runs, the thread.

    ``start()`` binds ``host:port`` (port 0: a free one), returns the base URL and leaves the server
    running in a daemon thread; ``stop()`` closes open streams and ends the thread. Also a context
    manager. Settings (``rate``, ``disconnect_after``, ``stall_after``) may be set from any thread at any
    time; waiting connections notice at once.
    """

    def __init__(
        self,
        events: Iterable[Event],
        *,
        host: str,
        port: int,
        rate: float | None,
        disconnect_after: int | None,
        stall_after: int | None,
        name: str,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.connections: list[dict[str, Any]] = []
        self.sent = 0
        self._events: list[Event] = list(events)
        self._lock = threading.Lock()
        self._rate = rate
        self._disconnect_after = disconnect_after
        self._stall_after = stall_after
        self._streams = 0
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._wake = asyncio.Event()

    # -- what subclasses provide -------------------------------------------------------------------

    def build_app(self) -> web.Application:
        raise NotImplementedError

    def on_passed(self, position: int) -> None:
        """Called when a connection moves past ``position`` events (whether or not it sent the last)."""

    # -- settings, events, counters ----------------------------------------------------------------

    @property
    def rate(self) -> float | None:
        return self._rate

    @rate.setter
    def rate(self, value: float | None) -> None:
        self._rate = value
        self.notify()

    @property
    def disconnect_after(self) -> int | None:
        return self._disconnect_after

    @disconnect_after.setter
    def disconnect_after(self, value: int | None) -> None:
        self._disconnect_after = value
        self.notify()

    @property
    def stall_after(self) -> int | None:
        return self._stall_after

    @stall_after.setter
    def stall_after(self, value: int | None) -> None:
        self._stall_after = value
        self.notify()

    @property
    def events(self) -> list[Event]:
        """A copy of the event list as it stands (appended events included)."""
        with self._lock:
            return list(self._events)

    def append(self, events: Iterable[Event]) -> None:
        """Add events at the end; connected clients that reached the end receive them."""
        with self._lock:
            self._events.extend(events)
        self.notify()

    def notify(self) -> None:
        """Wake every waiting connection so it looks again at the events and settings."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._rouse)
            except RuntimeError:  # the loop closed between the check and the call
                pass

    def _rouse(self) -> None:
        # A fresh Event per round: waiters hold the one they saw, so none misses a wake-up.
        wake, self._wake = self._wake, asyncio.Event()
        wake.set()

    def register(self, record: dict[str, Any], *, stream: bool = True) -> int:
        """Record a connection; return its number among streaming connections (0: the first)."""
        with self._lock:
            self.connections.append(record)
            number = self._streams
            if stream:
                self._streams += 1
            return number

    def count_sent(self) -> None:
        with self._lock:
            self.sent += 1

    def stalled(self, subscriber: Subscriber) -> bool:
        return self._stall_after is not None and subscriber.delivered >= self._stall_after

    def cut_due(self, subscriber: Subscriber) -> bool:
        """Whether this connection is to be cut now: only the first, after ``disconnect_after`` events."""
        limit = self._disconnect_after
        return subscriber.number == 0 and limit is not None and subscriber.delivered >= limit

    @property
    def closing(self) -> bool:
        return self._closing

    async def wait_for_change(self) -> None:
        await self._wake.wait()

    async def feed(
        self, subscriber: Subscriber, wanted: Callable[[Event], bool]
    ) -> AsyncGenerator[Event, None]:
        """Yield the events this connection is to send, in order, for as long as the server runs.

        Waits (without closing anything) at the end of the list and while stalled; paces by ``rate``.
        The caller sends each event, then asks ``cut_due``.
        """
        while not self._closing:
            wake = self._wake
            with self._lock:
                event = self._events[subscriber.position] if subscriber.position < len(self._events) else None
            if event is None or self.stalled(subscriber):
                await wake.wait()
                continue
            subscriber.position += 1
            self.on_passed(subscriber.position)
            if not wanted(event):
                continue
            if self._rate:
                await asyncio.sleep(1.0 / self._rate)
            subscriber.delivered += 1
            yield event

    # -- life cycle --------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> str:
        """Bind and serve in a background thread; return the base URL (``http://127.0.0.1:PORT``)."""
        if self._thread is not None:
            raise RuntimeError(f"{self.name} stand-in is already running")
        ready = threading.Event()
        failures: list[BaseException] = []
        self._closing = False
        thread = threading.Thread(
            target=self._serve, args=(ready, failures), name=f"standin-{self.name}", daemon=True
        )
        thread.start()
        ready.wait()
        if failures:
            thread.join()
            raise failures[0]
        self._thread = thread
        return self.base_url

    def stop(self) -> None:
        """Close open streams, stop serving and end the thread. Safe to call twice."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _serve(self, ready: threading.Event, failures: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._open())
        except BaseException as exc:  # handed to start(), which raises it in the caller's thread
            failures.append(exc)
            ready.set()
            loop.close()
            return
        self._loop = loop
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._close())
            loop.run_until_complete(loop.shutdown_asyncgens())
            self._loop = None
            loop.close()

    async def _open(self) -> None:
        self._wake = asyncio.Event()
        # handler_cancellation: a client that hangs up ends its idle stream handler at once.
        runner = web.AppRunner(
            self.build_app(),
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        await site.start()
        self.port = runner.addresses[0][1]
        self._runner = runner

    async def _close(self) -> None:
        self._closing = True
        self._rouse()
        if self._runner is not None:
            await self._runner.cleanup()  # runs the app's on_shutdown hooks, then waits for handlers
            self._runner = None
