"""Erasure on a real (SQLite, migrated) database: the rows go with everything derived from them, alert
excerpts are scrubbed, a tombstone keeps a late or replayed post out, and a repeat changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from monitor.cases import Case
from monitor.pipeline import persist
from monitor.records import Erasure, Post, Prediction
from monitor.storage import erasures, repository
from monitor.storage.alerts import insert_alerts
from monitor.storage.session import transaction
from monitor.storage.tables import Alert, Prediction as PredictionRow, Signal
from monitor.storage.tables import Post as PostRow

KEY = b"k" * 32
T0 = datetime(2030, 1, 1, tzinfo=UTC)
TASK = "druglib_adverse"


def _case(post_id: str, author: str | None = "alice", source: str = "bluesky") -> Case:
    post = Post(id=post_id, text=f"my legs hurt {post_id}", created_at=T0, source=source, author=author)
    prediction = Prediction(post_id=post_id, source=source, task=TASK, model_version="m1", label="severe_adr",
                            probabilities={"severe_adr": 0.9, "no_severe_adr": 0.1}, confidence=0.9, escalated=False)
    return Case(post=post, prediction=prediction)


def _decide(case: Case):
    from monitor.pipeline import decide_by_classifier
    from monitor.tasks import load_task

    return decide_by_classifier(case, load_task(TASK))


def _store(factory, cases):
    with transaction(factory) as session:
        return persist(session, [], [_decide(c) for c in cases], author_key=KEY, signal_labels={TASK: {"severe_adr"}})


def _count(factory, table) -> int:
    with transaction(factory) as session:
        return session.execute(select(func.count()).select_from(table)).scalar_one()


def _erasure(**target) -> Erasure:
    return Erasure(source="bluesky", time=T0 + timedelta(hours=1), **target)


def test_erasing_a_post_removes_it_with_its_predictions_and_signals_and_only_it(factory):
    _store(factory, [_case("a"), _case("b", author="bob")])
    assert _count(factory, Signal) == 2
    with transaction(factory) as session:
        done = erasures.erase(session, [_erasure(post_id="a")], author_key=KEY)
    assert (done.posts, dict(done.outcomes)) == (1, {("platform", "applied"): 1})
    with transaction(factory) as session:
        left = session.execute(select(PostRow.source_id)).scalars().all()
    assert left == ["b"]
    assert (_count(factory, PredictionRow), _count(factory, Signal)) == (1, 1)


def test_erasing_an_author_matches_the_keyed_hash_and_leaves_other_sources_alone(factory):
    _store(factory, [_case("a"), _case("b"), _case("c", author="bob"), _case("d", source="mastodon")])
    with transaction(factory) as session:
        done = erasures.erase(session, [_erasure(author="alice")], author_key=KEY)
    assert done.posts == 2
    with transaction(factory) as session:
        left = sorted(session.execute(select(PostRow.source, PostRow.source_id)).all())
    assert left == [("bluesky", "c"), ("mastodon", "d")]


def test_a_post_arriving_after_its_erasure_is_never_stored_and_a_repeat_is_counted_as_such(factory):
    with transaction(factory) as session:
        first = erasures.erase(session, [_erasure(post_id="late"), _erasure(author="carol")], author_key=KEY)
        again = erasures.erase(session, [_erasure(post_id="late")], author_key=KEY)
    assert dict(first.outcomes) == {("platform", "unknown"): 2}
    assert dict(again.outcomes) == {("platform", "repeat"): 1}
    done = _store(factory, [_case("late", author="zed"), _case("other", author="carol"), _case("kept", author="zed")])
    assert done.erased == 2
    with transaction(factory) as session:
        assert session.execute(select(PostRow.source_id)).scalars().all() == ["kept"]
        assert erasures.count_erasures(session) == {"post": 1, "author": 1}


def test_alert_excerpts_of_an_erased_post_lose_text_and_explanation(factory):
    _store(factory, [_case("a"), _case("b", author="bob")])
    with transaction(factory) as session:
        ids = repository.post_ids(session, [("bluesky", "a"), ("bluesky", "b")])
        top = [{"post_id": ids[("bluesky", k)], "source": "bluesky", "source_id": k, "created_at": T0.isoformat(),
                "label": "severe_adr", "confidence": 0.9, "text": f"text of {k}", "verdict": "confirm",
                "rationale": "r", "evidence": "e"} for k in ("a", "b")]
        insert_alerts(session, [{"task": TASK, "granularity": "day", "stratum": "all", "series": "count",
                                 "method": "C1", "bucket_start": T0 - timedelta(hours=1),
                                 "bucket_end": T0 + timedelta(hours=23), "observed": 5, "expected": 1, "sd": 1,
                                 "score": 4, "threshold": 3, "posts": 5, "top_posts": top}])
        done = erasures.erase(session, [_erasure(post_id="a")], author_key=KEY)
    assert done.alerts == 1
    with transaction(factory) as session:
        (stored,) = session.execute(select(Alert.top_posts)).scalars().all()
    assert stored[0] == {"post_id": ids[("bluesky", "a")], "source": "bluesky", "created_at": T0.isoformat(),
                         "label": "severe_adr", "confidence": 0.9, "erased": True}
    assert stored[1]["text"] == "text of b"
