"""Bluesky through Jetstream: the subscribe URL for a position, and what each Jetstream event means.
Pure (the connection lives in ``monitor.sources.stream``).

Jetstream (github.com/bluesky-social/jetstream) sends the network's repository commits as JSON over a
WebSocket. Every event has ``did``, ``time_us`` (the relay's clock, microseconds) and ``kind``
(``commit``, ``identity``, ``account``). A resumed subscription passes ``cursor`` = a ``time_us``;
events are only roughly in time order, so a source resumes a few seconds before its position.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from monitor.records import Erasure
from monitor.sources.events import SourceEvent, bad, erase, from_unix_us, post_event, skip

SOURCE = "bluesky"
POST_COLLECTION = "app.bsky.feed.post"
_TAG_FEATURE = "app.bsky.richtext.facet#tag"


def subscribe_url(base: str, *, position: int | None, rewind_s: float, dids: Iterable[str] = ()) -> str:
    """``base`` (``wss://host/subscribe``) with the collection, the accounts and the cursor to resume from."""
    query: list[tuple[str, str]] = [("wantedCollections", POST_COLLECTION)]
    query += [("wantedDids", did) for did in dids]
    if position is not None:
        query.append(("cursor", str(max(0, position - int(rewind_s * 1_000_000)))))
    parts = urlsplit(base)
    extra = parts.query + "&" if parts.query else ""
    return urlunsplit(parts._replace(query=extra + urlencode(query)))


def post_uri(did: str, rkey: str) -> str:
    return f"at://{did}/{POST_COLLECTION}/{rkey}"


def read_event(frame: str | bytes, *, received: datetime) -> SourceEvent:
    """What one Jetstream frame means; never raises (a frame that is not an event is ``bad``)."""
    text = frame.decode("utf-8", "replace") if isinstance(frame, bytes) else frame
    try:
        event = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return bad("not_json", f"the frame is not JSON: {exc}"[:200], text)
    if not isinstance(event, dict):
        return bad("not_object", "the frame is not a JSON object", text)
    time_us, did, kind = event.get("time_us"), event.get("did"), event.get("kind")
    if not isinstance(time_us, int) or isinstance(time_us, bool) or time_us <= 0 or not isinstance(did, str):
        return bad("not_an_event", "a Jetstream event has an integer time_us and a did", text)
    if kind == "account":
        account = event.get("account") or {}
        if isinstance(account, dict) and account.get("active") is False and account.get("status") == "deleted":
            return erase(Erasure(source=SOURCE, author=did, time=from_unix_us(time_us)), time_us, "account_deleted")
        return skip("account", time_us)
    if kind != "commit":
        return skip(str(kind)[:32] if isinstance(kind, str) else "unknown_kind", time_us)
    commit = event.get("commit")
    if not isinstance(commit, dict):
        return bad("not_an_event", "a commit event without its commit", text, time_us)
    if commit.get("collection") != POST_COLLECTION:
        return skip("other_collection", time_us)
    operation, rkey = commit.get("operation"), commit.get("rkey")
    if not isinstance(rkey, str) or not rkey:
        return bad("not_an_event", "a post commit without its rkey", text, time_us)
    if operation == "delete":
        return erase(Erasure(source=SOURCE, post_id=post_uri(did, rkey), time=from_unix_us(time_us)), time_us)
    if operation == "update":
        return skip("update", time_us)  # Bluesky has no post editing; an update rewrites a record we keep as posted
    if operation != "create":
        return bad("not_an_event", f"unknown commit operation {str(operation)[:32]!r}", text, time_us)
    record = commit.get("record")
    if not isinstance(record, dict):
        return bad("not_an_event", "a post create without its record", text, time_us)
    return _post(record, did=did, rkey=rkey, time_us=time_us, raw=text)


def _post(record: dict[str, Any], *, did: str, rkey: str, time_us: int, raw: str) -> SourceEvent:
    body = record.get("text")
    if isinstance(body, str) and not body.strip():
        return skip("no_text", time_us)  # an image or a quote alone: nothing to classify
    langs = tuple(lang for lang in record.get("langs") or () if isinstance(lang, str))
    tags = _tags(record)
    mapped: dict[str, Any] = {"id": post_uri(did, rkey), "text": body, "source": SOURCE, "author": did,
                              "created_at": record.get("createdAt")}
    if langs:
        mapped["lang"] = langs[0]
    return post_event(mapped, received=from_unix_us(time_us), position=time_us, raw=raw, langs=langs, tags=tags,
                      context=_context(record, langs, tags))


def _tags(record: dict[str, Any]) -> tuple[str, ...]:
    """Hashtags from the rich-text facets and the record's own ``tags``."""
    found: list[str] = [t for t in record.get("tags") or () if isinstance(t, str)]
    for facet in record.get("facets") or ():
        for feature in (facet.get("features") or ()) if isinstance(facet, dict) else ():
            if isinstance(feature, dict) and feature.get("$type") == _TAG_FEATURE and isinstance(feature.get("tag"), str):
                found.append(feature["tag"])
    return tuple(dict.fromkeys(t[:64] for t in found))[:32]


def _ref(value: object) -> str | None:
    uri = value.get("uri") if isinstance(value, dict) else None
    return uri[:512] if isinstance(uri, str) else None


def _context(record: dict[str, Any], langs: tuple[str, ...], tags: tuple[str, ...]) -> dict[str, Any]:
    """What the post refers to, kept on the topic beside the post schema (the classifier ignores it)."""
    context: dict[str, Any] = {"platform": SOURCE}
    reply = record.get("reply") if isinstance(record.get("reply"), dict) else {}
    if parent := _ref(reply.get("parent")):
        context["reply_to"] = parent
    if root := _ref(reply.get("root")):
        context["thread_root"] = root
    embed = record.get("embed") if isinstance(record.get("embed"), dict) else {}
    quoted = embed.get("record")
    if isinstance(quoted, dict) and "record" in quoted and not _ref(quoted):  # recordWithMedia nests it once more
        quoted = quoted.get("record")
    if quote := _ref(quoted):
        context["quote_of"] = quote
    if langs:
        context["langs"] = list(langs[:8])
    if tags:
        context["tags"] = list(tags)
    return context
