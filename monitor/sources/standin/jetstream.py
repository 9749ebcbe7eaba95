"""A local stand-in for Bluesky's Jetstream (the ``/subscribe`` WebSocket, its filters and cursor replay),
and ``count_events``, which tallies what a list of Jetstream events holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from aiohttp import WSCloseCode, web

from monitor.sources.standin.server import Event, StandinServer, Subscriber


def matches_collection(collection: str, wanted: Sequence[str]) -> bool:
    """Jetstream's rule: an exact NSID, or a prefix written ``app.bsky.feed.*``."""
    for pattern in wanted:
        if pattern.endswith(".*"):
            if collection.startswith(pattern[:-1]):
                return True
        elif collection == pattern:
            return True
    return False


def is_wanted(
    event: Event, *, collections: Sequence[str], dids: Sequence[str], cursor: int | None
) -> bool:
    """Whether a subscription with these parameters receives ``event``.

    Identity and account events ignore ``wantedCollections``; every kind respects ``wantedDids``. A
    frame that is not a JSON object cannot be filtered, so it is always sent.
    """
    if isinstance(event, str):
        return True
    time_us = event.get("time_us")
    if cursor is not None and isinstance(time_us, int) and time_us < cursor:
        return False
    if dids and event.get("did") not in dids:
        return False
    if not collections or event.get("kind") != "commit":
        return True
    commit = event.get("commit")
    collection = commit.get("collection") if isinstance(commit, dict) else None
    return isinstance(collection, str) and matches_collection(collection, collections)


def encode_frame(event: Event) -> str:
    # Compact, UTF-8 JSON, as Jetstream's Go encoder writes it.
    if isinstance(event, str):
        return event
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


class JetstreamStandin(StandinServer):
    """Serves ``GET /subscribe`` the way Jetstream does, from a fixed (appendable) list of events.

    Query parameters: ``wantedCollections`` and ``wantedDids`` (repeatable), ``cursor`` (unix µs:
    replay events with ``time_us >= cursor``; absent: from the first event), ``compress`` (ignored;
    frames are always uncompressed JSON text). A non-integer cursor gets HTTP 400. Dict events are
    JSON-encoded; str events are sent verbatim. After the last event a connection stays open and idle,
    like a quiet live stream, and receives what ``append`` adds.

    Faults: ``disconnect_after=N`` drops the TCP connection (no close frame) after N events on the first
    connection only; ``stall_after=N`` stops sending after N events on every connection but keeps it
    open. Each connection's parameters are recorded in ``connections``; ``sent`` counts frames sent.
    """

    def __init__(
        self,
        events: Iterable[Event],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        rate: float | None = None,
        disconnect_after: int | None = None,
        stall_after: int | None = None,
        name: str = "jetstream",
    ) -> None:
        super().__init__(
            events,
            host=host,
            port=port,
            rate=rate,
            disconnect_after=disconnect_after,
            stall_after=stall_after,
            name=name,
        )
        self._sockets: set[web.WebSocketResponse] = set()

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/subscribe"

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/subscribe", self._subscribe)
        app.on_shutdown.append(self._close_sockets)
        return app

    def start_position(self, cursor: int | None) -> int:
        """Index of the first event a cursor replays (events are in ``time_us`` order)."""
        events = self.events
        if cursor is None:
            return 0
        for index, event in enumerate(events):
            if isinstance(event, dict) and isinstance(event.get("time_us"), int) and event["time_us"] >= cursor:
                return index
        return len(events)

    async def _subscribe(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        collections = query.getall("wantedCollections", [])
        dids = query.getall("wantedDids", [])
        raw_cursor = query.get("cursor", "")
        try:
            cursor = int(raw_cursor) if raw_cursor else None
        except ValueError:
            return web.json_response({"error": "InvalidCursor", "message": f"bad cursor {raw_cursor!r}"}, status=400)
        socket = web.WebSocketResponse(timeout=1.0, compress=False)
        if not socket.can_prepare(request).ok:
            return web.json_response({"error": "BadRequest", "message": "expected a WebSocket upgrade"}, status=400)
        number = self.register({"wantedCollections": collections, "wantedDids": dids, "cursor": cursor})
        subscriber = Subscriber(number=number, position=self.start_position(cursor))
        await socket.prepare(request)
        self._sockets.add(socket)

        def wanted(event: Event) -> bool:
            return is_wanted(event, collections=collections, dids=dids, cursor=cursor)

        sender = asyncio.create_task(self._send(socket, request, subscriber, wanted))
        try:
            # Jetstream's subscriber messages (options updates) are read and ignored; the loop ends
            # when the client closes, the connection drops, or the server closes the socket.
            async for _message in socket:
                pass
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await sender
            self._sockets.discard(socket)
        return socket

    async def _send(
        self,
        socket: web.WebSocketResponse,
        request: web.Request,
        subscriber: Subscriber,
        wanted: Callable[[Event], bool],
    ) -> None:
        if self.cut_due(subscriber):
            self._cut(request)
            return
        async with contextlib.aclosing(self.feed(subscriber, wanted)) as events:
            async for event in events:
                await socket.send_str(encode_frame(event))
                self.count_sent()
                if self.cut_due(subscriber):
                    self._cut(request)
                    return

    @staticmethod
    def _cut(request: web.Request) -> None:
        # Abort the TCP connection: the client sees a dropped stream, not a clean close.
        transport = request.transport
        if transport is not None:
            transport.abort()

    async def _close_sockets(self, app: web.Application) -> None:
        await asyncio.gather(
            *(socket.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown") for socket in list(self._sockets)),
            return_exceptions=True,
        )


def count_events(events: Sequence[Event], *, oversized_chars: int) -> dict[str, int]:
    """Count what a Jetstream event list holds, as a careful source would see it.

    ``malformed``: frames that are not a JSON object. ``duplicates``: exact repeats of an earlier event
    (counted nowhere else). ``invalid``: post creates/updates with no record or non-string text.
    ``posts``: valid post creates; of them ``replies``, ``quotes``, ``non_english`` (first lang not en),
    ``no_language``, ``with_hashtags``, ``oversized`` (text over ``oversized_chars``), ``with_nul``,
    ``posts_after_deletes`` (no later delete names them), ``posts_by_deleted_accounts``. ``updates``:
    valid post updates. ``deletes`` splits into ``deletes_of_seen`` (of a post created earlier) and
    ``deletes_of_unseen``. ``other_commits``: other collections (likes, reposts, follows).
    """
    counts = dict.fromkeys(
        ("events", "malformed", "duplicates", "invalid", "posts", "replies", "quotes", "non_english",
         "no_language", "with_hashtags", "oversized", "with_nul", "updates", "deletes", "deletes_of_seen",
         "deletes_of_unseen", "other_commits", "identity", "account", "account_deletions",
         "posts_after_deletes", "posts_by_deleted_accounts"),
        0,
    )
    seen: set[str] = set()
    created: dict[tuple[Any, Any], Any] = {}
    removed: set[tuple[Any, Any]] = set()
    gone: set[Any] = set()
    for item in events:
        counts["events"] += 1
        event = _parse(item)
        if event is None:
            counts["malformed"] += 1
            continue
        fingerprint = json.dumps(event, sort_keys=True)
        if fingerprint in seen:
            counts["duplicates"] += 1
            continue
        seen.add(fingerprint)
        kind, did = event.get("kind"), event.get("did")
        body = event.get(kind) if isinstance(kind, str) else None
        if kind in ("identity", "account"):
            counts[kind] += 1
            if kind == "account" and isinstance(body, dict) and body.get("status") == "deleted":
                counts["account_deletions"] += 1
                gone.add(did)
            continue
        if not isinstance(body, dict) or body.get("collection") != "app.bsky.feed.post":
            counts["other_commits" if isinstance(body, dict) else "invalid"] += 1
            continue
        key, operation, record = (did, body.get("rkey")), body.get("operation"), body.get("record")
        if operation == "delete":
            counts["deletes"] += 1
            counts["deletes_of_seen" if key in created else "deletes_of_unseen"] += 1
            removed.update({key} & created.keys())
        elif not isinstance(record, dict) or not isinstance(record.get("text"), str):
            counts["invalid"] += 1
        elif operation == "update":
            counts["updates"] += 1
        else:
            created[key] = did
            _count_post(counts, record, oversized_chars)
    counts["posts_after_deletes"] = len(created.keys() - removed)
    counts["posts_by_deleted_accounts"] = sum(1 for author in created.values() if author in gone)
    return counts


def _parse(item: Event) -> dict[str, Any] | None:
    if isinstance(item, dict):
        return item
    try:
        parsed = json.loads(item)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _count_post(counts: dict[str, int], record: dict[str, Any], oversized_chars: int) -> None:
    text, langs, embed = record["text"], record.get("langs"), record.get("embed")
    facets = record.get("facets") if isinstance(record.get("facets"), list) else []
    counts["posts"] += 1
    counts["replies"] += "reply" in record
    counts["quotes"] += isinstance(embed, dict) and str(embed.get("$type", "")).startswith("app.bsky.embed.record")
    counts["no_language"] += not langs
    counts["non_english"] += bool(langs) and langs[0] != "en"
    counts["with_hashtags"] += any(
        f.get("$type") == "app.bsky.richtext.facet#tag"
        for facet in facets if isinstance(facet, dict) for f in facet.get("features", []) if isinstance(f, dict)
    )
    counts["oversized"] += len(text) > oversized_chars
    counts["with_nul"] += "\x00" in text
