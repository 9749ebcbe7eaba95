"""Mastodon: the streaming and timeline URLs of a watched timeline, an incremental server-sent-events
parser, and what each streaming event means. Pure (the connection lives in ``monitor.sources.stream``).

A status's id is only unique on the instance that serves it, so a post is ``HOST/ID``: a redelivered or
backfilled status keeps its id, and a ``delete`` event (which carries only the id) finds it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from html import unescape
from html.parser import HTMLParser
from typing import Any
from urllib.parse import quote, urlsplit

from monitor.records import MAX_AUTHOR_CHARS, Erasure
from monitor.sources.events import SourceEvent, bad, erase, post_event, skip

SOURCE = "mastodon"
#: Statuses per timeline page (Mastodon's maximum).
PAGE = 40


@dataclass(frozen=True)
class Timeline:
    """One watched stream of one instance: ``public``, ``local`` or ``hashtag`` (with its tag)."""

    instance: str  # base URL, https://mastodon.social
    kind: str = "public"
    tag: str | None = None

    @property
    def host(self) -> str:
        return urlsplit(self.instance).netloc

    @property
    def name(self) -> str:
        """The position key: host, timeline and tag."""
        return f"{self.host}/{self.kind}" + (f"/{self.tag}" if self.tag else "")

    def stream_url(self) -> str:
        base = self.instance.rstrip("/") + "/api/v1/streaming"
        if self.kind == "hashtag":
            return f"{base}/hashtag?tag={quote(self.tag or '')}"
        return f"{base}/public/local" if self.kind == "local" else f"{base}/public"

    def timeline_url(self, *, min_id: str) -> str:
        """The REST page of statuses immediately newer than ``min_id`` (the backfill after a gap)."""
        base = self.instance.rstrip("/") + "/api/v1/timelines"
        query = f"min_id={quote(min_id)}&limit={PAGE}"
        if self.kind == "hashtag":
            return f"{base}/tag/{quote(self.tag or '')}?{query}"
        return f"{base}/public?{query}" + ("&local=true" if self.kind == "local" else "")


class SseParser:
    """Server-sent events from text chunks as they arrive: ``feed`` returns the complete (event, data) pairs.

    Comment lines (``:thump``, Mastodon's heartbeat) are dropped; multi-line data is joined with newlines.
    """

    def __init__(self) -> None:
        self._buffer = ""
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: str) -> list[tuple[str, str]]:
        self._buffer += chunk
        *lines, self._buffer = self._buffer.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        done: list[tuple[str, str]] = []
        for line in lines:
            if not line:
                if self._data:
                    done.append((self._event or "message", "\n".join(self._data)))
                self._event, self._data = "", []
            elif line.startswith(":"):
                continue
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "event":
                    self._event = value
                elif name == "data":
                    self._data.append(value)
        return done

    @property
    def buffered(self) -> int:
        return len(self._buffer) + sum(map(len, self._data))


class _Text(HTMLParser):
    """Status HTML to plain text: paragraphs and line breaks kept, tags dropped, entities read."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br":
            self.parts.append("\n")
        elif tag == "p" and self.parts:
            self.parts.append("\n\n")
        # Mastodon shortens links with invisible spans; their text is the URL's hidden part.
        if tag == "span" and ("class", "invisible") in attrs:
            self._hidden += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "span" and self._hidden:
            self._hidden -= 1

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.parts.append(data)


def html_text(content: str) -> str:
    parser = _Text()
    parser.feed(content)
    parser.close()
    return unescape("".join(parser.parts)).strip()


def author_name(acct: str, host: str) -> str:
    """``user@instance`` for every account (a local account's acct has no instance); a name past the
    schema's limit becomes a stable hash of it, so erasure by author still finds it."""
    name = acct if "@" in acct else f"{acct}@{host}"
    if len(name) <= MAX_AUTHOR_CHARS:
        return name
    return "sha256:" + hashlib.sha256(name.encode("utf-8")).hexdigest()[: MAX_AUTHOR_CHARS - 7]


def status_position(status_id: str) -> int | None:
    return int(status_id) if status_id.isdigit() and len(status_id) <= 19 else None


def read_event(event: str, data: str, *, timeline: Timeline, received: datetime) -> SourceEvent:
    """What one streaming event (or one status of a timeline page, as ``update``) means; never raises."""
    if event == "delete":
        status_id = data.strip()
        if not status_id or len(status_id) > 64 or not status_id.isascii():
            return bad("not_an_event", "a delete event without a status id", data)
        return erase(Erasure(source=SOURCE, post_id=f"{timeline.host}/{status_id}", time=received),
                     status_position(status_id))
    if event == "status.update":
        return skip("update", None)
    if event != "update":
        return skip(event[:32] or "message", None)
    try:
        status = json.loads(data)
    except (ValueError, RecursionError) as exc:
        return bad("not_json", f"the status is not JSON: {exc}"[:200], data)
    if not isinstance(status, dict) or not isinstance(status.get("id"), str):
        return bad("not_an_event", "a status is a JSON object with a string id", data)
    return read_status(status, timeline=timeline, received=received, raw=data)


def read_status(status: dict[str, Any], *, timeline: Timeline, received: datetime, raw: str) -> SourceEvent:
    position = status_position(status["id"])
    if status.get("reblog") is not None:
        return skip("boost", position)  # the boosted status arrives (or arrived) itself
    if status.get("visibility", "public") != "public":
        return skip("not_public", position)
    content = status.get("content")
    if not isinstance(content, str):
        return bad("wrong_type", "a status's content is HTML text", raw, position)
    spoiler = status.get("spoiler_text") if isinstance(status.get("spoiler_text"), str) else ""
    text = "\n\n".join(part for part in (spoiler.strip(), html_text(content)) if part)
    if not text:
        return skip("no_text", position)
    account = status.get("account") if isinstance(status.get("account"), dict) else {}
    acct = account.get("acct") if isinstance(account.get("acct"), str) else None
    lang = status.get("language") if isinstance(status.get("language"), str) else None
    tags = tuple(dict.fromkeys(t["name"][:64] for t in status.get("tags") or ()
                               if isinstance(t, dict) and isinstance(t.get("name"), str)))[:32]
    mapped = {"id": f"{timeline.host}/{status['id']}", "text": text, "source": SOURCE,
              "author": author_name(acct, timeline.host) if acct else None,
              "created_at": status.get("created_at"), **({"lang": lang} if lang else {})}
    context: dict[str, Any] = {"platform": SOURCE}
    for name, value in (("uri", status.get("uri")), ("url", status.get("url")),
                        ("reply_to", status.get("in_reply_to_id"))):
        if isinstance(value, str) and value:
            context[name] = value[:512]
    if tags:
        context["tags"] = list(tags)
    return post_event(mapped, received=received, position=position, raw=raw, langs=(lang,) if lang else (),
                      tags=tags, context=context)
