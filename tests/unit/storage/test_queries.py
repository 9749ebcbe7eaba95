"""The reads detection, the demo and run comparisons make: plain records, the right rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from monitor.storage import queries, repository
from monitor.storage.session import transaction


T0 = datetime(2030, 1, 1, tzinfo=UTC)  # as in conftest
TASK = "druglib_adverse"


def test_stored_posts_by_id_in_chunks(factory, stored, explanation, signal, monkeypatch):
    monkeypatch.setattr(queries, "_CHUNK", 2)  # three posts, two queries
    with transaction(factory) as session:
        posts = queries.stored_posts(session, [stored["p0"], stored["p2"], stored["q"], stored["p0"], 999])
    assert posts == {stored["p0"]: ("s", "p0", "my legs hurt 0"), stored["p2"]: ("s", "p2", "my legs hurt 2"),
                     stored["q"]: ("other", "q", "unrelated")}
    assert posts[stored["q"]].text == "unrelated"


def test_flagged_signals_of_a_run_in_a_window(factory, stored, explanation, signal):
    with transaction(factory) as session:
        repository.upsert_signals(session, [
            signal(stored["p0"], confidence=0.8), signal(stored["p0"], version="m2", confidence=0.95),
            signal(stored["p1"], at=T0 + timedelta(hours=1)), signal(stored["p2"], at=T0 + timedelta(hours=2)),
            signal(stored["p0"], run="candidate"), signal(stored["q"], task="other_task"),
        ])
    with transaction(factory) as session:
        window = queries.flagged_signals(session, T0, T0 + timedelta(hours=2))
        only_other = queries.flagged_signals(session, T0, T0 + timedelta(hours=3), tasks=["other_task"])
        replayed = queries.flagged_signals(session, T0, T0 + timedelta(hours=3), run="candidate")
    # both model versions of p0 come back; p2 is at the window's end, outside it
    assert sorted((f.post_id, f.confidence) for f in window) == sorted([(stored["p0"], 0.8), (stored["p0"], 0.95),
                                                                        (stored["p1"], 0.9), (stored["q"], 0.9)])
    first = next(f for f in window if f.confidence == 0.8)
    assert (first.task, first.label, first.source, first.geo) == (TASK, "severe_adr", "s", {"country": "GB"})
    assert first.post_created_at == T0
    assert [f.post_id for f in only_other] == [stored["q"]]
    assert [f.post_id for f in replayed] == [stored["p0"]]


def test_latest_explanation_per_task_and_post(factory, stored, explanation, signal):
    with transaction(factory) as session:
        repository.upsert_explanations(session, [
            explanation(stored["p0"], "confirm", llm="a", at=T0),
            explanation(stored["p0"], "reject", llm="b", at=T0 + timedelta(minutes=1)),
            explanation(stored["p1"], "confirm", run="candidate"),
        ])
    with transaction(factory) as session:
        notes = queries.latest_explanations(session, [stored["p0"], stored["p1"], stored["p2"]])
    assert notes == {(TASK, stored["p0"]): ("reject", "reject by b", "legs hurt")}


def test_source_counts_follow_one_source_through_every_table(factory, stored, explanation, signal):
    with transaction(factory) as session:
        repository.upsert_explanations(session, [
            explanation(stored["p0"], "confirm"), explanation(stored["p1"], "reject", final="severe_adr",
                                                              predicted="no_severe_adr"),
            explanation(stored["p2"], "over_budget"), explanation(stored["q"], "unverified"),
        ])
        repository.upsert_signals(session, [signal(stored["p0"]), signal(stored["q"])])
    with transaction(factory) as session:
        counts = queries.source_counts(session, "s")
        nothing = queries.source_counts(session, "nobody")
    assert counts == {"posts": 3, "predictions": 6, "escalated": 2, "explanations": 3, "flipped": 1,
                      "over_budget": 1, "unverified": 0, "signals": 1}
    assert set(nothing.values()) == {0}


def test_explained_examples_are_answers_with_the_post(factory, stored, explanation, signal):
    with transaction(factory) as session:
        repository.upsert_explanations(session, [
            explanation(stored["p0"], "confirm"), explanation(stored["p1"], "over_budget"),
            explanation(stored["p2"], "reject"), explanation(stored["p1"], "withheld", llm="other.gguf"),
        ])
    with transaction(factory) as session:
        examples = queries.explained_examples(session, "s", limit=5)
        one = queries.explained_examples(session, "s", limit=1)
    # A withheld verdict is an answer (its rationale shows); over budget is not.
    assert sorted(e.verdict for e in examples) == ["confirm", "reject", "withheld"] and len(one) == 1
    text, predicted, verdict, suggested, final, evidence, rationale = next(e for e in examples if e.verdict == "reject")
    assert (text, predicted, suggested, final, evidence) == ("my legs hurt 2", "severe_adr", "severe_adr",
                                                             "severe_adr", "legs hurt")
