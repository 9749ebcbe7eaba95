"""The local stand-ins speak Jetstream's and Mastodon's protocols, and the recordings hold what they claim."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from monitor.sources.standin import JetstreamStandin, MastodonStandin
from monitor.sources.standin.recording import (
    JETSTREAM_FILE,
    MASTODON_FILE,
    OVERSIZED_CHARS,
    jetstream_events,
    load_recording,
    summary,
    write_recording,
    write_recordings,
)

T = TypeVar("T")
POST, LIKE, FOLLOW = "app.bsky.feed.post", "app.bsky.feed.like", "app.bsky.graph.follow"
# Generous for a loaded machine; the tests finish long before unless something is wrong.
WAIT_S = 1.5
QUIET_S = 0.25


def run(test: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(test(), timeout=5))


def commit(time_us: int, did: str = "did:plc:alice", collection: str = POST, **commit_fields: Any) -> dict[str, Any]:
    body = {"rev": f"r{time_us}", "operation": "create", "collection": collection, "rkey": f"k{time_us}"}
    record = {"$type": collection, "text": f"post {time_us}", "createdAt": "2026-11-12T14:00:00.000Z"}
    body.update(record=record, cid=f"bafyrei{time_us}", **commit_fields)
    return {"did": did, "time_us": time_us, "kind": "commit", "commit": body}


def identity(time_us: int, did: str) -> dict[str, Any]:
    return {"did": did, "time_us": time_us, "kind": "identity", "identity": {"did": did, "handle": "x.bsky.social"}}


def account(time_us: int, did: str) -> dict[str, Any]:
    return {"did": did, "time_us": time_us, "kind": "account", "account": {"active": False, "did": did,
                                                                          "status": "deleted"}}


async def receive(ws: aiohttp.ClientWebSocketResponse, count: int) -> list[str]:
    frames = []
    while len(frames) < count:
        message = await asyncio.wait_for(ws.receive(), WAIT_S)
        assert message.type is aiohttp.WSMsgType.TEXT, f"after {len(frames)} frames: {message}"
        frames.append(message.data)
    return frames


async def assert_quiet(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Nothing more arrives, and the connection is still open."""
    with pytest.raises(TimeoutError):
        message = await asyncio.wait_for(ws.receive(), QUIET_S)
        pytest.fail(f"expected silence, got {message}")
    assert not ws.closed


async def subscribe(url: str, count: int, *, quiet: bool = True) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        frames = await receive(ws, count)
        if quiet:
            await assert_quiet(ws)
    return [json.loads(frame) for frame in frames]


# -- Jetstream -------------------------------------------------------------------------------------


def test_cursor_replays_events_from_that_time_on_and_no_cursor_replays_all():
    events = [commit(1_000 + i) for i in range(10)]
    with JetstreamStandin(events) as standin:
        replayed = run(lambda: subscribe(standin.ws_url + "?cursor=1005", 5))
        everything = run(lambda: subscribe(standin.ws_url, 10))
    assert [e["time_us"] for e in replayed] == [1005, 1006, 1007, 1008, 1009]
    assert everything == events
    assert standin.connections[0] == {"wantedCollections": [], "wantedDids": [], "cursor": 1005}
    assert standin.connections[1]["cursor"] is None
    assert standin.sent == 15


def test_a_cursor_past_the_end_waits_for_appended_events():
    with JetstreamStandin([commit(1), commit(2)]) as standin:

        async def tail() -> list[str]:
            async with aiohttp.ClientSession() as session, session.ws_connect(standin.ws_url + "?cursor=3") as ws:
                await assert_quiet(ws)
                standin.append([commit(3), "not json"])
                return await receive(ws, 2)

        frames = run(tail)
    assert json.loads(frames[0])["time_us"] == 3
    assert frames[1] == "not json"


def test_wanted_collections_filter_commits_but_let_identity_and_account_events_through():
    events = [commit(1), commit(2, collection=LIKE), identity(3, "did:plc:bob"), commit(4, collection=FOLLOW),
              account(5, "did:plc:bob"), commit(6)]
    with JetstreamStandin(events) as standin:
        posts = run(lambda: subscribe(f"{standin.ws_url}?wantedCollections={POST}", 4))
        feed = run(lambda: subscribe(
            f"{standin.ws_url}?wantedCollections=app.bsky.feed.*&wantedCollections={FOLLOW}", 6))
        prefix = run(lambda: subscribe(f"{standin.ws_url}?wantedCollections=app.bsky.feed.*", 5))
    assert [e["time_us"] for e in posts] == [1, 3, 5, 6]
    assert [e["time_us"] for e in feed] == [1, 2, 3, 4, 5, 6]
    assert [e["time_us"] for e in prefix] == [1, 2, 3, 5, 6]
    assert standin.connections[1]["wantedCollections"] == ["app.bsky.feed.*", FOLLOW]


def test_wanted_dids_apply_to_every_kind_of_event():
    events = [commit(1, did="did:plc:a"), commit(2, did="did:plc:b"), identity(3, "did:plc:b"),
              account(4, "did:plc:a"), commit(5, did="did:plc:c")]
    with JetstreamStandin(events) as standin:
        got = run(lambda: subscribe(f"{standin.ws_url}?wantedDids=did:plc:a&wantedDids=did:plc:c", 3))
    assert [(e["did"], e["time_us"]) for e in got] == [("did:plc:a", 1), ("did:plc:a", 4), ("did:plc:c", 5)]
    assert standin.connections[0]["wantedDids"] == ["did:plc:a", "did:plc:c"]


def test_disconnect_after_drops_only_the_first_connection():
    events = [commit(i) for i in range(1, 8)]
    with JetstreamStandin(events, disconnect_after=3) as standin:

        async def twice() -> tuple[list[str], aiohttp.WSMessage, int | None, list[dict[str, Any]]]:
            async with aiohttp.ClientSession() as session, session.ws_connect(standin.ws_url) as ws:
                first = await receive(ws, 3)
                end = await asyncio.wait_for(ws.receive(), WAIT_S)
                code = ws.close_code
            second = await subscribe(f"{standin.ws_url}?cursor=4", 4)
            return first, end, code, second

        first, end, code, second = run(twice)
    assert [json.loads(f)["time_us"] for f in first] == [1, 2, 3]
    # Dropped, not closed: no close frame with a normal or going-away code.
    assert end.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
    assert code not in (1000, 1001)
    assert [e["time_us"] for e in second] == [4, 5, 6, 7]


def test_stall_after_stops_sending_but_keeps_the_connection_open_until_released():
    events = [commit(i) for i in range(1, 6)]
    with JetstreamStandin(events, stall_after=2) as standin:

        async def stalled() -> tuple[list[str], list[str]]:
            async with aiohttp.ClientSession() as session, session.ws_connect(standin.ws_url) as ws:
                before = await receive(ws, 2)
                await assert_quiet(ws)
                standin.stall_after = None
                return before, await receive(ws, 3)

        before, after = run(stalled)
    assert [json.loads(f)["time_us"] for f in before + after] == [1, 2, 3, 4, 5]


def test_str_events_are_sent_verbatim_and_dicts_as_compact_json():
    events = ['{"did": "did:plc:x", "time_us": 5, "kind": "comm', "[1, 2]", commit(6)]
    with JetstreamStandin(events) as standin:

        async def frames() -> list[str]:
            async with aiohttp.ClientSession() as session, session.ws_connect(standin.ws_url) as ws:
                return await receive(ws, 3)

        got = run(frames)
    assert got[:2] == events[:2]
    assert json.loads(got[2]) == events[2] and ": " not in got[2]


def test_a_bad_cursor_is_rejected_and_stop_closes_open_streams():
    with JetstreamStandin([commit(1)]) as standin:

        async def check() -> tuple[int, aiohttp.WSMessage]:
            async with aiohttp.ClientSession() as session:
                async with session.get(standin.base_url + "/subscribe?cursor=yesterday") as response:
                    status = response.status
                async with session.ws_connect(standin.ws_url) as ws:
                    await receive(ws, 1)
                    await asyncio.to_thread(standin.stop)
                    return status, await asyncio.wait_for(ws.receive(), WAIT_S)

        status, closing = run(check)
    assert status == 400
    assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 1001


def test_rate_paces_the_events():
    with JetstreamStandin([commit(i) for i in range(1, 6)], rate=40) as standin:
        started = time.monotonic()
        run(lambda: subscribe(standin.ws_url, 5, quiet=False))
        assert time.monotonic() - started >= 5 / 40


# -- Mastodon --------------------------------------------------------------------------------------

TOKEN = {"Authorization": "Bearer test-token"}


def status(sid: int | str, *, text: str = "hi", acct: str = "alice", tags: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"id": str(sid), "created_at": "2026-11-12T14:00:00.000Z", "content": f"<p>{text}</p>",
            "account": {"id": "1", "username": acct.split("@")[0], "acct": acct},
            "tags": [{"name": t, "url": f"https://mastodon.example/tags/{t}"} for t in tags], "reblog": None}


def update(sid: int | str, **fields: Any) -> dict[str, Any]:
    return {"event": "update", "payload": status(sid, **fields)}


async def read_stream(url: str, until: Callable[[str], bool], headers: dict[str, str] | None = None) -> str:
    text = ""
    headers = TOKEN if headers is None else headers
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        while not until(text):
            chunk = await asyncio.wait_for(response.content.readany(), WAIT_S)
            assert chunk, f"stream ended early after {text!r}"
            text += chunk.decode()
    return text


async def get_json(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any, str | None]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers or {}) as response:
        return response.status, await response.json(), response.headers.get("Link")


async def get_text(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.text()


def ids(page: list[dict[str, Any]]) -> list[int]:
    return [int(s["id"]) for s in page]


def test_streaming_needs_the_token_in_a_header_or_the_query():
    with MastodonStandin([update(1)]) as standin:
        url = standin.base_url + "/api/v1/streaming/public"
        missing = run(lambda: get_json(url))
        wrong = run(lambda: get_json(url, {"Authorization": "Bearer nope"}))
        by_header = run(lambda: read_stream(url, lambda t: "\n\n" in t))
        standin.published = 0  # a stream has no replay: rewind the server so the next one sees the event too
        by_query = run(lambda: read_stream(url + "?access_token=test-token", lambda t: "\n\n" in t, {}))
        health = run(lambda: get_text(standin.base_url + "/api/v1/streaming/health"))
    assert missing[0] == wrong[0] == 401 and "error" in missing[1] and "error" in wrong[1]
    assert by_header.startswith("event: update\n") and by_query == by_header
    assert [c["authorized"] for c in standin.connections] == [False, False, True, True]
    assert health == "OK"


def test_server_sent_events_are_framed_as_mastodon_frames_them_with_heartbeats():
    edited = status(2, text="edited & fixed")
    events = [update(2, text="ünïcode ✅"), {"event": "delete", "payload": "1"},
              {"event": "status.update", "payload": edited}, "event: update\ndata: {broken\n\n"]
    with MastodonStandin(events, heartbeat_s=0.05) as standin:
        text = run(lambda: read_stream(standin.base_url + "/api/v1/streaming/public",
                                       lambda t: "{broken" in t and ":thump\n\n" in t))
    blocks = [b for b in text.split("\n\n") if b and b != ":thump"]
    assert blocks[0] == "event: update\ndata: " + json.dumps(events[0]["payload"], ensure_ascii=False,
                                                              separators=(",", ":"))
    assert blocks[1] == "event: delete\ndata: 1"
    assert blocks[2].startswith("event: status.update\ndata: ") and json.loads(blocks[2].split("data: ")[1]) == edited
    assert blocks[3] == "event: update\ndata: {broken"
    assert standin.sent == 4


def test_hashtag_and_local_streams_filter_statuses_but_not_deletes():
    events = [update(1, tags=("covid",)), update(2, acct="bob@other.example", tags=("Covid",)),
              update(3), {"event": "delete", "payload": "9"}]
    with MastodonStandin(events) as standin:
        tagged = run(lambda: read_stream(standin.base_url + "/api/v1/streaming/hashtag?tag=covid",
                                         lambda t: t.count("\n\n") == 3))
        standin.published = 0
        local = run(lambda: read_stream(standin.base_url + "/api/v1/streaming/public/local",
                                        lambda t: t.count("\n\n") == 3))
    assert [json.loads(b.split("data: ")[1])["id"] for b in tagged.split("\n\n")[:2]] == ["1", "2"]
    assert "event: delete\ndata: 9" in tagged
    assert '"id":"2"' not in local and '"id":"3"' in local


def test_rest_pages_by_integer_id_like_mastodon():
    numbers = [7, 8, 9, 10, 11, 12, 100, 1000] + list(range(2000, 2040))  # 48 statuses
    with MastodonStandin([update(n) for n in numbers]) as standin:
        standin.published = len(numbers)
        base = standin.base_url + "/api/v1/timelines/public"

        def page(query: str) -> tuple[int, Any, str | None]:
            return run(lambda: get_json(f"{base}?{query}"))

        default, limited, older, since, above = (
            page(""), page("limit=3"), page("max_id=10"), page("since_id=9&limit=2"), page("min_id=9&limit=2"))
        capped, empty = page("limit=100"), page("min_id=5000")
    assert ids(default[1]) == list(range(2039, 2019, -1))
    assert ids(limited[1]) == [2039, 2038, 2037]
    assert ids(older[1]) == [9, 8, 7]
    assert ids(since[1]) == [2039, 2038]
    assert ids(above[1]) == [11, 10]
    assert len(capped[1]) == 40
    link = limited[2]
    assert link is not None and 'rel="next"' in link and 'rel="prev"' in link
    next_url, prev_url = (part.split(">")[0].lstrip("<, ") for part in link.split(","))
    assert "max_id=2037" in next_url and "limit=3" in next_url
    assert "min_id=2039" in prev_url
    assert empty[1] == [] and empty[2] is None


def test_rest_serves_what_is_published_with_edits_applied_and_deletes_removed():
    events = [update(1), update(2), {"event": "status.update", "payload": status(1, text="edited")},
              {"event": "delete", "payload": "2"}, update(3, tags=("covid",))]
    with MastodonStandin(events) as standin:
        url = standin.base_url + "/api/v1/timelines/public"
        nothing = run(lambda: get_json(url))
        standin.published = 2
        two = run(lambda: get_json(url))
        standin.published = 5
        final = run(lambda: get_json(url))
        tagged = run(lambda: get_json(standin.base_url + "/api/v1/timelines/tag/covid"))
        bad_token = run(lambda: get_json(url, {"Authorization": "Bearer nope"}))
    assert nothing[1] == [] and ids(two[1]) == [2, 1]
    assert ids(final[1]) == [3, 1] and final[1][1]["content"] == "<p>edited</p>"
    assert ids(tagged[1]) == [3]
    assert bad_token[0] == 401


def test_a_cut_stream_leaves_a_gap_that_rest_backfills_with_min_id():
    with MastodonStandin([update(n) for n in range(1, 9)], disconnect_after=2, missed_on_disconnect=3) as standin:
        stream = standin.base_url + "/api/v1/streaming/public"

        async def first() -> tuple[str, type[BaseException] | None]:
            text = ""
            async with aiohttp.ClientSession() as session, session.get(stream, headers=TOKEN) as response:
                try:
                    while chunk := await asyncio.wait_for(response.content.readany(), WAIT_S):
                        text += chunk.decode()
                except aiohttp.ClientPayloadError as exc:
                    return text, type(exc)
            return text, None

        text, error = run(first)
        backfill = run(lambda: get_json(standin.base_url + "/api/v1/timelines/public?min_id=2"))
        resumed = run(lambda: read_stream(stream, lambda t: '"id":"8"' in t))
    assert text.count("event: update") == 2 and error is aiohttp.ClientPayloadError
    assert ids(backfill[1]) == [5, 4, 3]
    assert '"id":"6"' in resumed and '"id":"5"' not in resumed


def test_mastodon_stall_stops_events_and_heartbeats_without_closing():
    with MastodonStandin([update(1), update(2)], stall_after=1, heartbeat_s=0.05) as standin:

        async def stalled() -> tuple[str, bytes]:
            async with aiohttp.ClientSession() as session:
                url = standin.base_url + "/api/v1/streaming/public"
                async with session.get(url, headers=TOKEN) as response:
                    first = (await asyncio.wait_for(response.content.readany(), WAIT_S)).decode()
                    with pytest.raises(TimeoutError):
                        await asyncio.wait_for(response.content.readany(), QUIET_S)
                    standin.stall_after = None
                    return first, await asyncio.wait_for(response.content.readany(), WAIT_S)

        first, resumed = run(stalled)
    assert first.count("event: update") == 1 and '"id":"1"' in first
    assert b'"id":"2"' in resumed or resumed == b":thump\n\n"


# -- recordings ------------------------------------------------------------------------------------


def test_the_generator_is_deterministic_and_the_shipped_files_are_its_output(tmp_path: Path):
    first, again = write_recordings(tmp_path / "a"), write_recordings(tmp_path / "b")
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    assert first[0].read_bytes() == JETSTREAM_FILE.read_bytes()
    assert first[1].read_bytes() == MASTODON_FILE.read_bytes()
    assert jetstream_events(seed=8, count=60) != jetstream_events(seed=7, count=60)
    assert all(p.stat().st_size < 300_000 for p in first)


def test_load_recording_gives_back_str_frames_and_odd_text(tmp_path: Path):
    events = ['{"truncated', "[1]", {"raw": 1, "text": "a\u0000b \u202eevil\u202c 🤕"}, {"raw": "x", "y": 1}]
    path = tmp_path / "r.jsonl"
    write_recording(path, events)
    assert load_recording(path) == events
    assert len(path.read_text(encoding="utf-8").split("\n")) == 5


def test_summary_counts_a_handmade_jetstream_list():
    deleted = {**commit(9, did="did:plc:a"), "commit": {"rev": "r", "operation": "delete", "collection": POST,
                                                        "rkey": "k1"}}
    no_record = commit(10)
    del no_record["commit"]["record"]
    events = [commit(1, did="did:plc:a"), commit(1, did="did:plc:a"), commit(2, collection=LIKE), "{bad", "[]",
              deleted, no_record, account(11, "did:plc:a")]
    counts = summary(events)
    assert counts["events"] == 8 and counts["duplicates"] == 1 and counts["malformed"] == 2
    assert counts["posts"] == 1 and counts["deletes_of_seen"] == 1 and counts["posts_after_deletes"] == 0
    assert counts["invalid"] == 1 and counts["other_commits"] == 1 and counts["posts_by_deleted_accounts"] == 1


def test_the_shipped_jetstream_recording_holds_what_the_docstring_promises():
    events = load_recording(JETSTREAM_FILE)
    counts = summary(events)
    assert counts == {
        "events": 300, "malformed": 2, "duplicates": 2, "invalid": 2, "posts": 221, "replies": 43, "quotes": 22,
        "non_english": 32, "no_language": 3, "with_hashtags": 49, "oversized": 1, "with_nul": 1, "updates": 1,
        "deletes": 5, "deletes_of_seen": 3, "deletes_of_unseen": 2, "other_commits": 63, "identity": 2,
        "account": 2, "account_deletions": 1, "posts_after_deletes": 218, "posts_by_deleted_accounts": 3,
    }
    objects = [e for e in events if isinstance(e, dict)]
    times = [e["time_us"] for e in objects]
    assert all(a < b or objects[i] == objects[i + 1] for i, (a, b) in enumerate(zip(times, times[1:])))
    records = [e["commit"]["record"] for e in objects if e["kind"] == "commit" and "record" in e["commit"]]
    texts = [r["text"] for r in records if isinstance(r.get("text"), str)]
    assert {r["langs"][0] for r in records if r.get("langs")} >= {"en", "de", "es", "pt", "ja", "ar"}
    assert max(len(t) for t in texts) > OVERSIZED_CHARS
    for record in records:
        for facet in record.get("facets", []):
            span = record["text"].encode()[facet["index"]["byteStart"]: facet["index"]["byteEnd"]]
            assert span.decode() == "#" + facet["features"][0]["tag"]
    gone = next(e["did"] for e in objects if e["kind"] == "account" and e["account"].get("status") == "deleted")
    first_gone = next(i for i, e in enumerate(objects) if e["kind"] == "account" and e["did"] == gone)
    assert any(e["did"] == gone for e in objects[:first_gone])
    assert all(e["did"] != gone for e in objects[first_gone + 1:])


def test_the_shipped_mastodon_recording_holds_what_the_docstring_promises():
    events = load_recording(MASTODON_FILE)
    assert summary(events) == {
        "events": 200, "malformed": 2, "duplicates": 2, "invalid": 2, "posts": 170, "replies": 34, "quotes": 5,
        "non_english": 31, "no_language": 10, "with_hashtags": 41, "oversized": 1, "with_nul": 1,
        "content_warnings": 8, "unlisted": 1, "boosts": 18, "updates": 1, "deletes": 5, "deletes_of_seen": 3,
        "deletes_of_unseen": 2, "posts_after_deletes": 167,
    }
    statuses = [e["payload"] for e in events if isinstance(e, dict) and e["event"] == "update"]
    numbers = [int(s["id"]) for s in statuses]
    assert all(a < b or a == b for a, b in zip(numbers, numbers[1:])) and len(str(numbers[0])) == 18
    contents = " ".join(s.get("content") or "" for s in statuses)
    assert "&amp;" in contents and "&lt;" in contents and 'class="mention hashtag" rel="tag">#<span>' in contents
    assert {s["language"] for s in statuses} >= {"en", "de", "es", "pt", "ja", "ar", None}


def test_a_recording_replays_through_the_standin():
    events = load_recording(JETSTREAM_FILE)
    counts = summary(events)
    wanted = len(events) - counts["other_commits"]  # every post event, identity, account and malformed frame
    with JetstreamStandin(events) as standin:

        async def replay() -> list[str]:
            url = f"{standin.ws_url}?wantedCollections={POST}"
            async with aiohttp.ClientSession() as session, session.ws_connect(url, max_msg_size=0) as ws:
                frames = await receive(ws, wanted)
                await assert_quiet(ws)
                return frames

        frames = run(replay)
    assert sum(1 for f in frames if len(f) > OVERSIZED_CHARS) == 1
    assert standin.sent == wanted
