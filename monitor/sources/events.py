"""What a source makes of one platform event: a post to send, an erasure to send, a bad frame to
dead-letter, or nothing (with the reason, for the counters). Pure: the platform modules build these.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from monitor.records import Erasure, Post, RecordError, encode_post, parse_time, post_from_record

Kind = Literal["post", "erase", "skip", "bad"]
#: A client's own clock sets a post's createdAt; one this far past the platform's receipt time is not believed.
CLOCK_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class SourceEvent:
    """One platform event, decided.

    ``what`` names the event for the counters (``create``, ``delete``, ``update``, ``account``, ``boost``,
    a reason code for ``bad``). ``position`` is where a resumed stream starts after this event (None: the
    event carries none, e.g. a frame that is not JSON). A ``post`` carries the validated ``post``, the
    bytes to send (``value``: the post schema plus a ``context`` member) and what the filters read.
    """

    kind: Kind
    what: str
    position: int | None = None
    post: Post | None = None
    value: bytes | None = None
    langs: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    erasure: Erasure | None = None
    raw: bytes | None = None
    message: str = ""
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> bytes:
        if self.post is not None:
            return self.post.id.encode("utf-8")
        if self.erasure is not None:
            return self.erasure.key
        return b""


def skip(what: str, position: int | None) -> SourceEvent:
    return SourceEvent("skip", what, position)


def bad(reason: str, message: str, raw: str | bytes, position: int | None = None) -> SourceEvent:
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    return SourceEvent("bad", reason, position, raw=data, message=message)


def erase(erasure: Erasure, position: int | None, what: str = "delete") -> SourceEvent:
    return SourceEvent("erase", what, position, erasure=erasure)


def post_event(record: dict[str, Any], *, received: datetime, position: int | None, raw: str,
               langs: tuple[str, ...] = (), tags: tuple[str, ...] = (), context: dict[str, Any] | None = None,
               ) -> SourceEvent:
    """Validate ``record`` (the post schema) as the pipeline will; a post it would refuse is ``bad`` here,
    with the same reason code, so it reaches the dead-letter topic once, from the source."""
    created = record.get("created_at")
    if isinstance(created, str):
        try:
            when = parse_time(created)
        except ValueError:
            when = None
        # The platform's receipt time when the client's clock is missing, unreadable or in the future.
        if when is None or when > received + CLOCK_SKEW:
            record = {**record, "created_at": received.isoformat()}
    try:
        post = post_from_record(record, fallback_time=received)
    except RecordError as exc:
        return bad(exc.reason, exc.message, raw, position)
    value = json.loads(encode_post(post))
    if context:
        value["context"] = context
    data = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return SourceEvent("post", "create", position, post=post, value=data, langs=langs, tags=tags,
                       context=context or {})


def from_unix_us(time_us: int) -> datetime:
    return datetime.fromtimestamp(time_us / 1_000_000, UTC)
