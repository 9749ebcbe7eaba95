"""A local stand-in for a Mastodon server: the public and hashtag streams (server-sent events) and the
public and hashtag timelines (REST, with Mastodon's id pagination), fed from one list of stream events;
and ``count_events``, which tallies what such a list holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable, Sequence
from typing import Any

from aiohttp import web

from monitor.sources.standin.server import Event, StandinServer, Subscriber

DEFAULT_LIMIT = 20
MAX_LIMIT = 40
# Query parameters Mastodon carries over into its Link header's pagination URLs.
_KEPT_IN_LINKS = ("local", "remote", "only_media", "limit")
_STREAMS = {
    "/api/v1/streaming/public": ("all", False),
    "/api/v1/streaming/public/local": ("local", False),
    "/api/v1/streaming/public/remote": ("remote", False),
    "/api/v1/streaming/hashtag": ("all", True),
    "/api/v1/streaming/hashtag/local": ("local", True),
}


class _BadParameterError(ValueError):
    """A timeline query parameter Mastodon would reject."""


def status_id(status: Any) -> int | None:
    """A status's id as an integer (Mastodon ids are numeric strings ordered by time), or None."""
    if not isinstance(status, dict):
        return None
    try:
        return int(status["id"])
    except (KeyError, TypeError, ValueError):
        return None


def is_local(status: dict[str, Any]) -> bool:
    account = status.get("account")
    return isinstance(account, dict) and "@" not in str(account.get("acct", ""))


def has_tag(status: dict[str, Any], tag: str) -> bool:
    tags = status.get("tags")
    return isinstance(tags, list) and any(
        isinstance(t, dict) and str(t.get("name", "")).lower() == tag.lower() for t in tags
    )


def is_in_scope(status: dict[str, Any], *, scope: str, tag: str | None) -> bool:
    """Whether a status belongs on a stream or timeline of this scope (all/local/remote) and hashtag."""
    if scope != "all" and is_local(status) != (scope == "local"):
        return False
    return tag is None or has_tag(status, tag)


def encode_event(event: Event) -> str:
    """One server-sent event: ``event: NAME``, ``data: PAYLOAD`` on one line, a blank line."""
    if isinstance(event, str):
        return event
    payload = event.get("payload")
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event.get('event')}\ndata: {data}\n\n"


def paginate(
    statuses: list[dict[str, Any]],
    *,
    limit: int,
    max_id: int | None,
    since_id: int | None,
    min_id: int | None,
) -> list[dict[str, Any]]:
    """Mastodon's ``paginate_by_id``: newest first; with ``min_id``, the page just above it.

    ``max_id``: strictly older. ``since_id``: strictly newer, the newest page. ``min_id``: strictly newer,
    the oldest such page (``since_id`` is then ignored), still returned newest first.
    """
    keyed = [(key, s) for s in statuses if (key := status_id(s)) is not None and (max_id is None or key < max_id)]
    if min_id is not None:
        newer = sorted((pair for pair in keyed if pair[0] > min_id), key=lambda pair: pair[0])[:limit]
        return [status for _, status in reversed(newer)]
    if since_id is not None:
        keyed = [pair for pair in keyed if pair[0] > since_id]
    keyed.sort(key=lambda pair: pair[0], reverse=True)
    return [status for _, status in keyed[:limit]]


def _integer(query: Any, name: str) -> int | None:
    raw = query.get(name)
    if raw in (None, ""):
        return None
    try:
        return int(raw)
    except ValueError:
        raise _BadParameterError(f"{name} must be an integer, got {raw!r}") from None


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "t", "on", "yes")


class MastodonStandin(StandinServer):
    """Serves Mastodon's streaming and timeline API from a list of stream events.

    Events are ``{"event": "update" | "delete" | "status.update", "payload": status dict or id str}``;
    a str is written to the stream verbatim (it carries its own ``event:``/``data:`` framing), for
    malformed data. Streaming needs ``token`` (``Authorization: Bearer`` or ``access_token``), else
    401; it sends ``:thump`` heartbeats every ``heartbeat_s`` (None: none) and, like every Mastodon
    stream, nothing from before the connection (no cursor, no replay). Paths: ``/api/v1/streaming/``
    ``public``, ``public/local``, ``public/remote``, ``hashtag?tag=``, ``hashtag/local?tag=``, ``health``;
    ``/api/v1/timelines/public`` (``local``, ``remote``) and ``/api/v1/timelines/tag/{hashtag}``
    (``local``), both with ``limit`` (default 20, at most 40), ``max_id``, ``since_id``, ``min_id`` and a
    ``Link`` header (``next``: max_id of the oldest, ``prev``: min_id of the newest) on a non-empty page.

    What the REST timeline holds is the ``published`` prefix of the event list: the statuses of the
    ``update`` events among the first ``published`` events, with ``status.update`` edits applied and
    ``delete``d ones removed. A stream connection starts at ``published`` (so the first one, at 0, gets
    everything), and ``published`` follows the furthest point any connection has passed. A test makes
    a gap by setting ``published`` ahead (say while a stream is stalled), or with
    ``missed_on_disconnect=K``: when the first connection is cut, the next K events are published
    without being streamed. A reconnecting client then sees them only by backfilling from REST with
    ``min_id``. Visibility rules are not applied: REST serves what the stream carries (boosts too).

    Faults and records as in ``JetstreamStandin``: ``disconnect_after`` (first stream connection only),
    ``stall_after`` (stops events and heartbeats, keeps the connection), ``connections`` (every stream
    attempt: path, query, authorized), ``requests`` (REST calls, same shape), ``sent``, ``append``.
    """

    def __init__(
        self,
        events: Iterable[Event],
        *,
        token: str = "test-token",
        host: str = "127.0.0.1",
        port: int = 0,
        rate: float | None = None,
        disconnect_after: int | None = None,
        stall_after: int | None = None,
        heartbeat_s: float | None = 15.0,
        missed_on_disconnect: int = 0,
        name: str = "mastodon",
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
        self.token = token
        self.missed_on_disconnect = missed_on_disconnect
        self.requests: list[dict[str, Any]] = []
        self._heartbeat_s = heartbeat_s
        self._published = 0

    @property
    def heartbeat_s(self) -> float | None:
        return self._heartbeat_s

    @heartbeat_s.setter
    def heartbeat_s(self, value: float | None) -> None:
        self._heartbeat_s = value
        self.notify()

    @property
    def published(self) -> int:
        """How many leading events have happened on the server (what REST can see)."""
        return self._published

    @published.setter
    def published(self, value: int) -> None:
        with self._lock:
            self._published = max(0, min(value, len(self._events)))

    def on_passed(self, position: int) -> None:
        with self._lock:
            self._published = max(self._published, position)

    def timeline(self, *, scope: str = "all", tag: str | None = None) -> list[dict[str, Any]]:
        """The published, undeleted statuses in scope, newest first (what REST pages through)."""
        with self._lock:
            events = self._events[: self._published]
        statuses: dict[int, dict[str, Any]] = {}
        for event in events:
            if not isinstance(event, dict):
                continue
            kind, payload = event.get("event"), event.get("payload")
            if kind in ("update", "status.update") and (key := status_id(payload)) is not None:
                statuses[key] = payload
            elif kind == "delete":
                with contextlib.suppress(TypeError, ValueError):
                    statuses.pop(int(payload), None)
        return [statuses[k] for k in sorted(statuses, reverse=True) if is_in_scope(statuses[k], scope=scope, tag=tag)]

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/v1/streaming/health", self._health)
        for path in _STREAMS:
            app.router.add_get(path, self._stream)
        app.router.add_get("/api/v1/timelines/public", self._public_timeline)
        app.router.add_get("/api/v1/timelines/tag/{hashtag}", self._tag_timeline)
        return app

    def _token(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        if header.lower().startswith("bearer "):
            return header[7:].strip()
        return request.query.get("access_token")

    def _record(self, request: web.Request, *, stream: bool) -> tuple[bool, str | None, int]:
        token = self._token(request)
        authorized = token == self.token
        record = {"path": request.path, "query": dict(request.query), "authorized": authorized}
        if stream and authorized:
            return authorized, token, self.register(record)
        with self._lock:
            (self.connections if stream else self.requests).append(record)
        return authorized, token, -1

    async def _health(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text="OK")

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        authorized, token, number = self._record(request, stream=True)
        if not authorized:
            error = "Missing access token" if token is None else "Invalid access token"
            return web.json_response({"error": error}, status=401)
        scope, tagged = _STREAMS[request.path]
        tag = request.query.get("tag") if tagged else None
        if tagged and not tag:
            return web.json_response({"error": "No tag for stream provided"}, status=400)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "private, no-store"}
        )
        await response.prepare(request)
        subscriber = Subscriber(number=number, position=self.published)
        writing = asyncio.Lock()
        heart = asyncio.create_task(self._beat(response, subscriber, writing))

        def wanted(event: Event) -> bool:
            payload = event.get("payload") if isinstance(event, dict) else None
            if not isinstance(event, dict) or event.get("event") == "delete" or not isinstance(payload, dict):
                return True  # deletes go to every public stream; unreadable data cannot be filtered
            return is_in_scope(payload, scope=scope, tag=tag)

        try:
            if self.cut_due(subscriber):
                return self._cut(request, response)
            async with contextlib.aclosing(self.feed(subscriber, wanted)) as events:
                async for event in events:
                    async with writing:
                        await response.write(encode_event(event).encode())
                    self.count_sent()
                    if self.cut_due(subscriber):
                        return self._cut(request, response)
            with contextlib.suppress(ConnectionError):
                await response.write_eof()  # the server is stopping: end the stream cleanly
        except ConnectionError:
            pass  # the client went away
        finally:
            heart.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await heart
        return response

    async def _beat(self, response: web.StreamResponse, subscriber: Subscriber, writing: asyncio.Lock) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while not self.closing:
            interval = self._heartbeat_s
            if interval is None:
                await self.wait_for_change()
                continue
            wait = last + interval - loop.time()
            if wait > 0:
                # Woken early when a setting changes, so a new heartbeat_s takes effect at once.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wait_for_change(), timeout=wait)
                continue
            if not self.stalled(subscriber):
                async with writing:
                    await response.write(b":thump\n\n")
            last = loop.time()

    def _cut(self, request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        with self._lock:
            self._published = min(len(self._events), self._published + self.missed_on_disconnect)
        transport = request.transport
        if transport is not None:
            transport.abort()  # a dropped connection, not the chunked stream's clean end
        return response

    async def _public_timeline(self, request: web.Request) -> web.StreamResponse:
        local, remote = _truthy(request.query.get("local")), _truthy(request.query.get("remote"))
        scope = "local" if local else "remote" if remote else "all"
        return self._page(request, scope=scope, tag=None)

    async def _tag_timeline(self, request: web.Request) -> web.StreamResponse:
        scope = "local" if _truthy(request.query.get("local")) else "all"
        return self._page(request, scope=scope, tag=request.match_info["hashtag"])

    def _page(self, request: web.Request, *, scope: str, tag: str | None) -> web.StreamResponse:
        authorized, token, _ = self._record(request, stream=False)
        if token is not None and not authorized:
            return web.json_response({"error": "The access token is invalid"}, status=401)
        query = request.query
        try:
            limit = _integer(query, "limit")
            page = paginate(
                self.timeline(scope=scope, tag=tag),
                limit=DEFAULT_LIMIT if limit is None else max(1, min(abs(limit), MAX_LIMIT)),
                max_id=_integer(query, "max_id"),
                since_id=_integer(query, "since_id"),
                min_id=_integer(query, "min_id"),
            )
        except _BadParameterError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        response = web.json_response(page, dumps=lambda data: json.dumps(data, ensure_ascii=False))
        if page:
            kept = {k: query[k] for k in _KEPT_IN_LINKS if k in query}
            older = request.url.with_query({**kept, "max_id": page[-1]["id"]})
            newer = request.url.with_query({**kept, "min_id": page[0]["id"]})
            response.headers["Link"] = f'<{older}>; rel="next", <{newer}>; rel="prev"'
        return response


def as_events(statuses: Iterable[dict[str, Any]], kind: str = "update") -> list[Event]:
    """Wrap plain statuses as stream events (a convenience for tests that start from statuses)."""
    return [{"event": kind, "payload": status} for status in statuses]



def parse_frame(frame: str) -> dict[str, Any] | None:
    """Read one raw server-sent event into ``{"event", "payload"}``; None when it is not a valid one."""
    fields: dict[str, str] = {}
    for line in frame.split("\n"):
        name, _, value = line.partition(":")
        if name in ("event", "data"):
            fields[name] = value.removeprefix(" ")
    kind, data = fields.get("event"), fields.get("data")
    if kind == "delete" and data:
        return {"event": kind, "payload": data}
    if kind not in ("update", "status.update") or data is None:
        return None
    try:
        payload = json.loads(data)
    except ValueError:
        return None
    return {"event": kind, "payload": payload} if isinstance(payload, dict) else None


def count_events(events: Sequence[Event], *, oversized_chars: int) -> dict[str, int]:
    """Count what a Mastodon event list holds, as a careful source would see it.

    ``malformed``: raw frames that are not a valid update/delete. ``duplicates``: exact repeats of an
    earlier event (counted nowhere else). ``invalid``: updates whose status has no id or no string
    content. ``posts``: valid original statuses (``boosts`` are counted apart); of them ``replies``,
    ``quotes``, ``non_english``, ``no_language``, ``with_hashtags``, ``oversized`` (content over
    ``oversized_chars``), ``with_nul``, ``content_warnings``, ``unlisted``, ``posts_after_deletes``.
    ``updates``: valid ``status.update`` edits. ``deletes`` splits into ``deletes_of_seen`` (of a status
    streamed earlier) and ``deletes_of_unseen``.
    """
    counts = dict.fromkeys(
        ("events", "malformed", "duplicates", "invalid", "posts", "replies", "quotes", "non_english",
         "no_language", "with_hashtags", "oversized", "with_nul", "content_warnings", "unlisted", "boosts",
         "updates", "deletes", "deletes_of_seen", "deletes_of_unseen", "posts_after_deletes"),
        0,
    )
    seen: set[str] = set()
    streamed: set[str] = set()
    originals: set[str] = set()
    removed: set[str] = set()
    for item in events:
        counts["events"] += 1
        event = parse_frame(item) if isinstance(item, str) else item
        if event is None:
            counts["malformed"] += 1
            continue
        fingerprint = json.dumps(event, sort_keys=True)
        if fingerprint in seen:
            counts["duplicates"] += 1
            continue
        seen.add(fingerprint)
        kind, status = event.get("event"), event.get("payload")
        if kind == "delete":
            counts["deletes"] += 1
            counts["deletes_of_seen" if str(status) in streamed else "deletes_of_unseen"] += 1
            removed.add(str(status))
        elif status_id(status) is None or not isinstance(status.get("content"), str):
            counts["invalid"] += 1
        elif kind == "status.update":
            counts["updates"] += 1
        elif status.get("reblog") is not None:
            counts["boosts"] += 1
            streamed.add(status["id"])
        else:
            streamed.add(status["id"])
            originals.add(status["id"])
            _count_status(counts, status, oversized_chars)
    counts["posts_after_deletes"] = len(originals - removed)
    return counts


def _count_status(counts: dict[str, int], status: dict[str, Any], oversized_chars: int) -> None:
    language, content = status.get("language"), status["content"]
    counts["posts"] += 1
    counts["replies"] += status.get("in_reply_to_id") is not None
    counts["quotes"] += status.get("quote") is not None
    counts["no_language"] += language is None
    counts["non_english"] += language is not None and language != "en"
    counts["with_hashtags"] += bool(status.get("tags"))
    counts["oversized"] += len(content) > oversized_chars
    counts["with_nul"] += "\x00" in content
    counts["content_warnings"] += bool(status.get("spoiler_text"))
    counts["unlisted"] += status.get("visibility") == "unlisted"
