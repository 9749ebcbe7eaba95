"""What a Jetstream frame and a Mastodon streaming event mean to the monitor (pure mapping)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from monitor.records import decode_post
from monitor.sources import bluesky, mastodon

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)
DID = "did:plc:eygmaihciaxprqvxpfvl6flk"
TIME_US = 1_764_504_000_000_000  # 2025-11-30T12:00:00Z


def _commit(operation: str = "create", record: dict | None = None, collection: str = bluesky.POST_COLLECTION,
            **extra) -> str:
    commit = {"rev": "3l3qo2vutsw2b", "operation": operation, "collection": collection, "rkey": "3l3qo2vuowo2b"}
    if record is not None:
        commit["record"] = record
    return json.dumps({"did": DID, "time_us": TIME_US, "kind": "commit", "commit": commit, **extra})


def _post_record(**fields) -> dict:
    return {"$type": "app.bsky.feed.post", "createdAt": "2025-11-30T11:59:58.120Z", "langs": ["en"],
            "text": "Third day on sertraline and the nausea is easing", **fields}


def test_a_post_create_becomes_a_post_of_the_schema_with_its_references_in_context():
    record = _post_record(
        facets=[{"index": {"byteStart": 0, "byteEnd": 6}, "features": [
            {"$type": "app.bsky.richtext.facet#tag", "tag": "meds"}]}],
        reply={"parent": {"cid": "c1", "uri": "at://did:plc:a/app.bsky.feed.post/p"},
               "root": {"cid": "c2", "uri": "at://did:plc:a/app.bsky.feed.post/r"}},
        embed={"$type": "app.bsky.embed.record", "record": {"cid": "c3", "uri": "at://did:plc:b/app.bsky.feed.post/q"}})
    event = bluesky.read_event(_commit(record=record), received=NOW)
    assert (event.kind, event.position) == ("post", TIME_US)
    post = decode_post(event.value, fallback_time=NOW)  # the pipeline reads exactly what the source validated
    assert post == event.post
    assert post.id == f"at://{DID}/app.bsky.feed.post/3l3qo2vuowo2b"
    assert (post.source, post.author, post.lang) == ("bluesky", DID, "en")
    assert post.created_at == datetime(2025, 11, 30, 11, 59, 58, 120000, tzinfo=UTC)
    context = json.loads(event.value)["context"]
    assert context == {"platform": "bluesky", "reply_to": "at://did:plc:a/app.bsky.feed.post/p",
                       "thread_root": "at://did:plc:a/app.bsky.feed.post/r",
                       "quote_of": "at://did:plc:b/app.bsky.feed.post/q", "langs": ["en"], "tags": ["meds"]}
    assert event.tags == ("meds",)


def test_a_client_clock_in_the_future_or_unreadable_gives_way_to_the_relay_time():
    for created in ("2031-01-01T00:00:00Z", "yesterday", None):
        event = bluesky.read_event(_commit(record=_post_record(createdAt=created)), received=NOW)
        assert event.post.created_at == datetime(2025, 11, 30, 12, tzinfo=UTC), created


def test_deletes_account_deletions_and_other_events():
    delete = bluesky.read_event(_commit("delete"), received=NOW)
    assert (delete.kind, delete.erasure.post_id, delete.erasure.source) == (
        "erase", f"at://{DID}/app.bsky.feed.post/3l3qo2vuowo2b", "bluesky")
    gone = json.dumps({"did": DID, "time_us": TIME_US, "kind": "account",
                       "account": {"active": False, "did": DID, "seq": 1, "status": "deleted", "time": "x"}})
    event = bluesky.read_event(gone, received=NOW)
    assert (event.kind, event.what, event.erasure.author) == ("erase", "account_deleted", DID)
    paused = gone.replace('"deleted"', '"deactivated"')
    assert bluesky.read_event(paused, received=NOW).kind == "skip"  # may come back: not an erasure
    assert bluesky.read_event(_commit("update", _post_record()), received=NOW).what == "update"
    like = bluesky.read_event(_commit(record={"$type": "app.bsky.feed.like"}, collection="app.bsky.feed.like"),
                              received=NOW)
    assert (like.kind, like.what, like.position) == ("skip", "other_collection", TIME_US)
    image_only = bluesky.read_event(_commit(record=_post_record(text="")), received=NOW)
    assert (image_only.kind, image_only.what) == ("skip", "no_text")


def test_malformed_frames_are_bad_with_a_reason_and_never_raise():
    cases = {"{not json": "not_json", "[1, 2]": "not_object", '{"kind": "commit"}': "not_an_event",
             _commit(record=None): "not_an_event", _commit(record=_post_record(text=7)): "wrong_type",
             _commit(record=_post_record(text="x" * 40_001)): "text_too_long"}
    for frame, reason in cases.items():
        event = bluesky.read_event(frame, received=NOW)
        assert (event.kind, event.what) == ("bad", reason), frame[:40]
        assert event.raw == frame.encode()


def test_odd_unicode_is_cleaned_as_the_pipeline_would():
    event = bluesky.read_event(_commit(record=_post_record(text="pain\u0000 🙁 \u202eevil\ud800")), received=NOW)
    assert event.post.text == "pain 🙁 \u202eevil\ufffd"


def test_subscribe_url_asks_for_posts_and_rewinds_the_cursor():
    url = bluesky.subscribe_url("wss://jet.example/subscribe", position=TIME_US, rewind_s=5, dids=[DID])
    assert url == ("wss://jet.example/subscribe?wantedCollections=app.bsky.feed.post&wantedDids=did%3Aplc%3A"
                   f"eygmaihciaxprqvxpfvl6flk&cursor={TIME_US - 5_000_000}")
    assert "cursor" not in bluesky.subscribe_url("wss://jet.example/subscribe", position=None, rewind_s=5)


TIMELINE = mastodon.Timeline("https://mastodon.example", "public")


def _status(**fields) -> dict:
    return {"id": "113456789012345678", "created_at": "2025-11-30T11:59:00.000Z", "in_reply_to_id": None,
            "visibility": "public", "language": "en", "uri": "https://mastodon.example/users/al/statuses/1134",
            "url": "https://mastodon.example/@al/1134", "spoiler_text": "",
            "content": '<p>Booster done &amp; my arm is sore</p><p>day 2: fever <a href="https://mastodon.example/tags/'
                       'vaccine" class="mention hashtag" rel="tag">#<span>vaccine</span></a></p>',
            "account": {"id": "1", "username": "al", "acct": "al", "url": "https://mastodon.example/@al"},
            "tags": [{"name": "vaccine", "url": "https://mastodon.example/tags/vaccine"}], "reblog": None, **fields}


def test_sse_parser_handles_split_chunks_heartbeats_and_multiline_data():
    parser = mastodon.SseParser()
    assert parser.feed(":thump\n\nevent: upd") == []
    assert parser.feed('ate\ndata: {"a":\r\ndata: 1}\n\nevent: delete\n') == [("update", '{"a":\n1}')]
    assert parser.feed("data: 42\n\n") == [("delete", "42")]


def test_a_status_becomes_a_post_keyed_by_instance_and_id():
    event = mastodon.read_event("update", json.dumps(_status()), timeline=TIMELINE, received=NOW)
    post = event.post
    assert (post.id, post.source, post.author, post.lang) == (
        "mastodon.example/113456789012345678", "mastodon", "al@mastodon.example", "en")
    assert post.text == "Booster done & my arm is sore\n\nday 2: fever #vaccine"
    assert event.position == 113456789012345678 and event.tags == ("vaccine",)
    remote = mastodon.read_event("update", json.dumps(_status(account={"acct": "bo@else.example"})),
                                 timeline=TIMELINE, received=NOW)
    assert remote.post.author == "bo@else.example"


def test_boosts_private_statuses_edits_and_deletes():
    boost = mastodon.read_event("update", json.dumps(_status(reblog=_status())), timeline=TIMELINE, received=NOW)
    assert (boost.kind, boost.what) == ("skip", "boost")
    unlisted = mastodon.read_event("update", json.dumps(_status(visibility="unlisted")), timeline=TIMELINE,
                                   received=NOW)
    assert unlisted.what == "not_public"
    assert mastodon.read_event("status.update", json.dumps(_status()), timeline=TIMELINE, received=NOW).what == "update"
    delete = mastodon.read_event("delete", "113456789012345678", timeline=TIMELINE, received=NOW)
    assert (delete.kind, delete.erasure.post_id) == ("erase", "mastodon.example/113456789012345678")
    assert mastodon.read_event("update", "{oops", timeline=TIMELINE, received=NOW).what == "not_json"
    assert mastodon.read_event("delete", "", timeline=TIMELINE, received=NOW).kind == "bad"


def test_timeline_urls():
    assert TIMELINE.stream_url() == "https://mastodon.example/api/v1/streaming/public"
    local = mastodon.Timeline("https://m.example", "local")
    assert local.timeline_url(min_id="5") == "https://m.example/api/v1/timelines/public?min_id=5&limit=40&local=true"
    tag = mastodon.Timeline("https://m.example", "hashtag", "long covid")
    assert tag.stream_url() == "https://m.example/api/v1/streaming/hashtag?tag=long%20covid"
    assert tag.name == "m.example/hashtag/long covid"


def test_a_long_account_name_becomes_a_stable_hash_within_the_schema_limit():
    name = mastodon.author_name("a" * 60 + "@very.long.instance.example", "x")
    assert name.startswith("sha256:") and len(name) == 64
    assert name == mastodon.author_name("a" * 60 + "@very.long.instance.example", "y")
