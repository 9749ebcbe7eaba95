"""Recorded-format event files for the stand-ins: seeded, health-flavoured Jetstream and Mastodon streams
holding every awkward case a source must survive, and ``summary`` to count exactly what they hold.

Both streams (``count`` events in all) are mostly original posts (English; some de, es, pt, ja; a few
with no language; some with hashtags), replies and quotes, and in each exactly: 2 exact duplicates
(an event repeated at once, same ``time_us``), 3 deletes of earlier posts, 2 deletes of posts never
seen, 1 edit of an earlier post, 2 malformed frames (invalid JSON, a JSON array), 2 invalid events (a
post without its record/content, a post whose text/content is not a string), 1 oversized post (over
``OVERSIZED_CHARS``) and 3 posts of odd Unicode (emoji with ZWJ, Arabic and Hebrew, a NUL). Jetstream
adds likes, reposts, follows, 2 handle changes, 1 reactivation and 1 account deletion (of an author
who posted before and posts nothing after). Mastodon adds boosts, 1 unlisted post, content warnings
and HTML with entities, line breaks, mentions and hashtag links. Apart from the duplicates, ``time_us``
and Mastodon ids strictly increase. In the files a malformed frame is a ``{"raw": frame}`` line.

Regenerate the shipped files with ``python -m monitor.sources.standin.recording [OUTDIR]``.
"""

from __future__ import annotations

import copy
import json
import random
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from monitor.sources.standin import jetstream, mastodon
from monitor.sources.standin.phrasebook import (
    HASHTAG,
    ODD,
    OVERSIZED_CHARS,
    choose_language,
    compose,
    compose_long,
    fill,
)
from monitor.sources.standin.server import Event

DATA_DIR = Path(__file__).with_name("data")
JETSTREAM_FILE = DATA_DIR / "jetstream.jsonl"
MASTODON_FILE = DATA_DIR / "mastodon.jsonl"
LOCAL_HOST = "mastodon.example"
_START = datetime(2026, 11, 12, 14, 0, tzinfo=UTC)
_POST = "app.bsky.feed.post"
_B32 = "abcdefghijklmnopqrstuvwxyz234567"
_TID32 = "234567abcdefghijklmnopqrstuvwxyz"
_SYLLABLES = ["mi", "ra", "ko", "ta", "len", "jo", "sa", "ni", "vel", "do", "ka", "ri", "an", "el", "mo", "lu"]
# Special units every stream holds, each a run of consecutive events, placed at random.
_COMMON = [("post", "duplicate"), ("post", "duplicate"), ("delete_seen",), ("delete_seen",), ("delete_seen",),
           ("delete_unseen",), ("delete_unseen",), ("edit",), ("bad_json",), ("json_array",), ("missing",),
           ("non_string",), ("oversized",), ("emoji",), ("rtl",), ("nul",), ("post_de",), ("post_es",),
           ("post_pt",), ("post_ja",), ("no_language",), ("reply",), ("quote",)]
_LEAD = 8  # plain posts first, so deletes, edits and replies always have something to point at


def _plan(rng: random.Random, count: int, specials: Sequence[tuple[str, ...]], filler: dict[str, float]) -> list[str]:
    fill_count = count - _LEAD - sum(len(unit) for unit in specials)
    if fill_count < 0:
        raise ValueError(f"count must be at least {count - fill_count}")
    drawn = rng.choices(list(filler), list(filler.values()), k=fill_count)
    units = [*specials, *((kind,) for kind in drawn)]
    rng.shuffle(units)
    return ["post"] * _LEAD + [kind for unit in units for kind in unit]


def _at_us(micros: int) -> str:
    moment = datetime.fromtimestamp(0, UTC) + timedelta(microseconds=micros)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _tid(micros: int, clock: int) -> str:
    """An atproto TID: microseconds and a clock id in 13 sortable base32 characters."""
    value, chars = (micros << 10) | clock, []
    for _ in range(13):
        chars.append(_TID32[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def _snowflake(millis: int, rng: random.Random) -> str:
    """A Mastodon id: milliseconds since the epoch above 16 random bits."""
    return str((millis << 16) | rng.getrandbits(16))


def _name(rng: random.Random) -> str:
    digits = str(rng.randint(1, 99)) if rng.random() < 0.4 else ""
    return "".join(rng.choices(_SYLLABLES, k=rng.randint(2, 3))) + digits


def _escape(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("'", "&#39;"))


class _Stream:
    """A stream being recorded: turns each planned kind into an event, advancing the clock."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.events: list[Event] = []

    def tick(self) -> None:
        raise NotImplementedError

    def original(self, language: str | None, text: str) -> Event:
        raise NotImplementedError

    def emit(self, kind: str) -> None:
        if kind == "duplicate":
            self.events.append(copy.deepcopy(self.events[-1]))
            return
        self.tick()
        if kind.startswith("post_"):
            self.events.append(self.original(kind[5:], compose(self.rng, kind[5:])))
        elif kind in ("post", "no_language"):
            language = None if kind == "no_language" else choose_language(self.rng)
            self.events.append(self.original(language, compose(self.rng, language or "en")))
        elif kind in ODD:
            language, template = ODD[kind]
            self.events.append(self.original(language, fill(self.rng, template)))
        else:
            self.events.append(getattr(self, kind)())


class _Jetstream(_Stream):
    """Bluesky as Jetstream shows it: authors, their posts, the clock in microseconds."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self.authors = [
            {"did": "did:plc:" + "".join(rng.choices(_B32, k=24)), "handle": _name(rng) + ".bsky.social"}
            for _ in range(40)
        ]
        self.active = list(self.authors)
        self.posts: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self.time_us = int(_START.timestamp()) * 1_000_000
        self.seq = 9_600_000_000 + rng.randrange(1_000_000)

    def tick(self) -> None:
        self.time_us += self.rng.randint(8_000, 90_000)

    def original(self, language: str | None, text: str) -> Event:
        return self.post(language, text)

    def commit(self, did: str, operation: str, collection: str, rkey: str, record: Any = None) -> dict[str, Any]:
        rev = _tid(self.time_us - self.rng.randint(200, 5_000), self.rng.randrange(1024))
        body: dict[str, Any] = {"rev": rev, "operation": operation, "collection": collection, "rkey": rkey}
        if record is not None:
            body.update(record=record, cid="bafyrei" + "".join(self.rng.choices(_B32, k=52)))
        return {"did": did, "time_us": self.time_us, "kind": "commit", "commit": body}

    def record(self, collection: str, **fields: Any) -> tuple[str, dict[str, Any]]:
        created = self.time_us - self.rng.randint(30_000, 900_000)
        return _tid(created, self.rng.randrange(1024)), {"$type": collection, "createdAt": _at_us(created), **fields}

    def post(self, language: str | None, text: Any, *, register: bool = True, **extra: Any) -> dict[str, Any]:
        did = self.rng.choice(self.active)["did"]
        fields: dict[str, Any] = {"langs": [language]} if language else {}
        if "reply" in extra:
            fields["reply"] = extra.pop("reply")
        fields["text"] = text
        facets = [
            {"index": {"byteStart": len(text[: m.start()].encode()), "byteEnd": len(text[: m.end()].encode())},
             "features": [{"$type": "app.bsky.richtext.facet#tag", "tag": m.group(1)}]}
            for m in HASHTAG.finditer(text if isinstance(text, str) else "")
        ]
        if facets:
            fields["facets"] = facets
        rkey, record = self.record(_POST, **fields, **extra)
        event = self.commit(did, "create", _POST, rkey, record)
        if register:
            ref = {"cid": event["commit"]["cid"], "uri": f"at://{did}/{_POST}/{rkey}"}
            root = record["reply"]["root"] if "reply" in record else ref
            self.posts.append({"did": did, "rkey": rkey, "ref": ref, "root": root, "record": record})
        return event

    def alive(self) -> list[dict[str, Any]]:
        dids = [a["did"] for a in self.active]
        return [p for p in self.posts
                if p["rkey"] not in self.deleted and p["did"] in dids and len(p["record"]["text"]) < 500]

    def reply(self) -> Event:
        parent = self.rng.choice(self.posts[-40:])
        reply = {"parent": parent["ref"], "root": parent["root"]}
        return self.post("en", compose(self.rng, "en", "reply"), reply=reply)

    def quote(self) -> Event:
        embed = {"$type": "app.bsky.embed.record", "record": self.rng.choice(self.posts)["ref"]}
        return self.post("en", compose(self.rng, "en", "quote"), embed=embed)

    def subject(self, collection: str, subject: Any) -> Event:
        rkey, record = self.record(collection, subject=subject)
        return self.commit(self.rng.choice(self.active)["did"], "create", collection, rkey, record)

    def like(self) -> Event:
        return self.subject("app.bsky.feed.like", self.rng.choice(self.posts)["ref"])

    def repost(self) -> Event:
        return self.subject("app.bsky.feed.repost", self.rng.choice(self.posts)["ref"])

    def follow(self) -> Event:
        return self.subject("app.bsky.graph.follow", self.rng.choice(self.authors)["did"])

    def delete_seen(self) -> Event:
        target = self.rng.choice(self.alive())
        self.deleted.append(target["rkey"])
        return self.commit(target["did"], "delete", _POST, target["rkey"])

    def delete_unseen(self) -> Event:
        rkey = _tid(self.time_us - self.rng.randint(10**9, 10**11), self.rng.randrange(1024))
        return self.commit(self.rng.choice(self.active)["did"], "delete", _POST, rkey)

    def edit(self) -> Event:
        target = self.rng.choice(self.alive())
        record = copy.deepcopy(target["record"])
        record["text"] += " (edit: " + compose(self.rng, "en", "edit") + ")"  # appended: facets stay valid
        return self.commit(target["did"], "update", _POST, target["rkey"], record)

    def bad_json(self) -> Event:
        event = self.post("en", compose(self.rng, "en"), register=False)
        frame = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        return frame[: len(frame) * 2 // 3]

    def json_array(self) -> Event:
        event = self.post("en", compose(self.rng, "en"), register=False)
        return "[" + json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "]"

    def missing(self) -> Event:
        return self.commit(self.rng.choice(self.active)["did"], "create", _POST, self.record(_POST)[0])

    def non_string(self) -> Event:
        return self.post("en", 12345, register=False)

    def oversized(self) -> Event:
        return self.post("en", compose_long(self.rng))

    def account_event(self, kind: str, author: dict[str, Any], **fields: Any) -> Event:
        self.seq += self.rng.randint(50, 5_000)
        body = {"did": author["did"], **fields, "seq": self.seq, "time": _at_us(self.time_us - 20_000)}
        return {"did": author["did"], "time_us": self.time_us, "kind": kind, kind: body}

    def identity(self) -> Event:
        author = self.rng.choice(self.active)
        author["handle"] = _name(self.rng) + ".bsky.social"
        return self.account_event("identity", author, handle=author["handle"])

    def account_active(self) -> Event:
        return self.account_event("account", self.rng.choice(self.active), active=True)

    def account_delete(self) -> Event:
        posted = [a for a in self.active if any(p["did"] == a["did"] for p in self.posts)]
        author = self.rng.choice(posted)
        self.active.remove(author)
        return self.account_event("account", author, active=False, status="deleted")


class _Mastodon(_Stream):
    """A Mastodon server's public stream: local and remote accounts, their statuses, the clock in ms."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__(rng)
        self.accounts: list[dict[str, Any]] = []
        joined = int(datetime(2022, 11, 1, tzinfo=UTC).timestamp()) * 1000
        for index in range(36):
            username = _name(rng)
            host = LOCAL_HOST if index % 5 < 3 else rng.choice(["toot.example", "health.example", "social.example"])
            self.accounts.append({
                "id": _snowflake(joined + rng.randrange(10**11), rng), "username": username,
                "acct": username if host == LOCAL_HOST else f"{username}@{host}",
                "display_name": username.capitalize(), "url": f"https://{host}/@{username}", "bot": False,
            })
        self.statuses: list[dict[str, Any]] = []
        self.deleted: list[str] = []
        self.ms = int(_START.timestamp()) * 1000

    def tick(self) -> None:
        self.ms += self.rng.randint(40, 2_500)

    def original(self, language: str | None, text: str) -> Event:
        return self.update(language, text)

    def status(self, language: str | None, text: str, *, reply_to: dict[str, Any] | None = None,
               quote: dict[str, Any] | None = None, visibility: str = "public") -> dict[str, Any]:
        account = self.rng.choice(self.accounts)
        host, username = account["url"].split("/")[2], account["username"]
        sid = _snowflake(self.ms, self.rng)
        # A remote status keeps its home server's id in its URI; only the local id orders the timeline.
        origin = sid if host == LOCAL_HOST else _snowflake(self.ms - self.rng.randint(200, 4_000), self.rng)
        body = HASHTAG.sub(
            lambda m: f'<a href="https://{host}/tags/{m.group(1).lower()}" class="mention hashtag" '
                      f'rel="tag">#<span>{m.group(1)}</span></a>', _escape(text))
        body = body.replace("\n", "<br />" if host == LOCAL_HOST else "<br>")
        mentions = []
        if reply_to is not None:
            parent = reply_to["account"]
            mentions.append({key: parent[key] for key in ("id", "username", "url", "acct")})
            body = (f'<span class="h-card" translate="no"><a href="{parent["url"]}" class="u-url mention">'
                    f'@<span>{parent["username"]}</span></a></span> {body}')
        content = f"<p>{body}</p>"
        if quote is not None:
            content += f'<p class="quote-inline">RE: <a href="{quote["url"]}">{quote["url"]}</a></p>'
        warning = self.rng.choice(["mental health", "meds", "needles"]) if self.rng.random() < 0.05 else ""
        tags = [t.lower() for t in HASHTAG.findall(text)]
        return {
            "id": sid, "created_at": _at_us(self.ms * 1000),
            "in_reply_to_id": reply_to["id"] if reply_to else None,
            "in_reply_to_account_id": reply_to["account"]["id"] if reply_to else None,
            "sensitive": bool(warning), "spoiler_text": warning, "visibility": visibility, "language": language,
            "uri": f"https://{host}/users/{username}/statuses/{origin}", "url": f"https://{host}/@{username}/{origin}",
            "replies_count": self.rng.randint(0, 3), "reblogs_count": self.rng.randint(0, 5),
            "favourites_count": self.rng.randint(0, 12), "edited_at": None, "content": content, "reblog": None,
            "quote": None if quote is None else {"state": "accepted", "quoted_status": quote},
            "account": account, "media_attachments": [], "mentions": mentions,
            "tags": [{"name": tag, "url": f"https://{LOCAL_HOST}/tags/{tag}"} for tag in tags],
            "emojis": [],
        }

    def update(self, language: str | None, text: str, *, register: bool = True, **extra: Any) -> dict[str, Any]:
        status = self.status(language, text, **extra)
        if register:
            self.statuses.append(status)
        return {"event": "update", "payload": status}

    def alive(self) -> list[dict[str, Any]]:
        return [s for s in self.statuses
                if s["id"] not in self.deleted and s["quote"] is None and len(s["content"]) < 2_000]

    def reply(self) -> Event:
        return self.update("en", compose(self.rng, "en", "reply"), reply_to=self.rng.choice(self.statuses[-40:]))

    def quote(self) -> Event:
        return self.update("en", compose(self.rng, "en", "quote"), quote=copy.deepcopy(self.rng.choice(self.alive())))

    def unlisted(self) -> Event:
        return self.update("en", compose(self.rng, "en"), visibility="unlisted")

    def boost(self) -> Event:
        wrapper = self.status(None, "")
        booster = wrapper["account"]
        wrapper.update(
            content="", url=None, sensitive=False, spoiler_text="",
            uri=f"{booster['url'].replace('/@', '/users/')}/statuses/{wrapper['id']}/activity",
            reblog=copy.deepcopy(self.rng.choice(self.alive())),
        )
        return {"event": "update", "payload": wrapper}

    def delete_seen(self) -> Event:
        target = self.rng.choice(self.alive())["id"]
        self.deleted.append(target)
        return {"event": "delete", "payload": target}

    def delete_unseen(self) -> Event:
        return {"event": "delete", "payload": _snowflake(self.ms - self.rng.randint(3_600_000, 86_400_000), self.rng)}

    def edit(self) -> Event:
        status = copy.deepcopy(self.rng.choice(self.alive()))
        note = _escape(compose(self.rng, "en", "edit"))
        status["content"] = status["content"].removesuffix("</p>") + f"<br />Edit: {note}</p>"
        status["edited_at"] = _at_us(self.ms * 1000)
        return {"event": "status.update", "payload": status}

    def frame(self) -> str:
        status = self.update("en", compose(self.rng, "en"), register=False)["payload"]
        return json.dumps(status, ensure_ascii=False, separators=(",", ":"))

    def bad_json(self) -> Event:
        frame = self.frame()
        return f"event: update\ndata: {frame[: len(frame) * 2 // 3]}\n\n"

    def json_array(self) -> Event:
        return f"event: update\ndata: [{self.frame()}]\n\n"

    def missing(self) -> Event:
        event = self.update("en", compose(self.rng, "en"), register=False)
        del event["payload"]["content"]
        return event

    def non_string(self) -> Event:
        event = self.update("en", compose(self.rng, "en"), register=False)
        event["payload"]["content"] = None
        return event

    def oversized(self) -> Event:
        return self.update("en", compose_long(self.rng))


def jetstream_events(seed: int = 7, count: int = 300) -> list[Event]:
    """A recorded Jetstream stream of ``count`` events (the module docstring says what it holds)."""
    rng = random.Random(f"jetstream-{seed}")
    specials = [*_COMMON, ("identity",), ("identity",), ("account_active",), ("account_delete",)]
    filler = {"post": 0.58, "reply": 0.14, "quote": 0.05, "like": 0.16, "repost": 0.04, "follow": 0.03}
    stream = _Jetstream(rng)
    for kind in _plan(rng, count, specials, filler):
        stream.emit(kind)
    return stream.events


def mastodon_events(seed: int = 7, count: int = 200) -> list[Event]:
    """A recorded Mastodon public stream of ``count`` events (the module docstring says what it holds)."""
    rng = random.Random(f"mastodon-{seed}")
    specials = [*_COMMON, ("unlisted",), ("entities",), ("boost",)]
    filler = {"post": 0.62, "reply": 0.14, "boost": 0.14, "quote": 0.05}
    stream = _Mastodon(rng)
    for kind in _plan(rng, count, specials, filler):
        stream.emit(kind)
    return stream.events


def summary(events: Sequence[Event]) -> dict[str, int]:
    """Count what a recorded stream holds (Jetstream or Mastodon, told apart by the events' shape).

    The keys are those of ``jetstream.count_events`` or ``mastodon.count_events``.
    """
    for event in events:
        if isinstance(event, dict):
            if "kind" in event:
                return jetstream.count_events(events, oversized_chars=OVERSIZED_CHARS)
            if "event" in event:
                return mastodon.count_events(events, oversized_chars=OVERSIZED_CHARS)
    raise ValueError("cannot tell the platform: no Jetstream or Mastodon event among these")


def write_recording(path: Path, events: Sequence[Event]) -> None:
    """One event a line, compact UTF-8 JSON; a str frame becomes ``{"raw": frame}``."""
    lines = (json.dumps({"raw": e} if isinstance(e, str) else e, ensure_ascii=False, separators=(",", ":"))
             for e in events)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8", newline="\n")


def load_recording(path: Path | str) -> list[Event]:
    """Read a recording back: dict events as written, ``{"raw": ...}`` lines as their str frame."""
    events: list[Event] = []
    # Split on "\n" only: str.splitlines would also break on characters JSON leaves unescaped.
    for line in Path(path).read_text(encoding="utf-8").split("\n"):
        if line:
            item = json.loads(line)
            raw = item.get("raw") if isinstance(item, dict) and len(item) == 1 else None
            events.append(raw if isinstance(raw, str) else item)
    return events


def write_recordings(directory: Path | str, seed: int = 7) -> list[Path]:
    """Write ``jetstream.jsonl`` and ``mastodon.jsonl`` into ``directory``; return their paths."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    written = [folder / JETSTREAM_FILE.name, folder / MASTODON_FILE.name]
    write_recording(written[0], jetstream_events(seed))
    write_recording(written[1], mastodon_events(seed))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) > 1 or (args and args[0].startswith("-")):
        print("usage: python -m monitor.sources.standin.recording [OUTDIR]", file=sys.stderr)
        return 2
    for path in write_recordings(args[0] if args else DATA_DIR):
        print(f"{path}: {path.stat().st_size} bytes, {json.dumps(summary(load_recording(path)))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
