"""Replay-run bookkeeping and the per-run reads that compare two runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from monitor.errors import StorageError
from monitor.storage import repository, runs
from monitor.storage.session import transaction


T0 = datetime(2030, 1, 1, tzinfo=UTC)  # as in conftest
TASK = "druglib_adverse"


def test_a_replay_run_is_started_then_finished_with_its_report(factory):
    with transaction(factory) as session:
        assert not runs.replay_run_exists(session, "candidate")
        runs.start_replay_run(session, "candidate", topic="posts", start=T0, end=T0 + timedelta(hours=1),
                              model_paths=["/m/a", "/m/b"], model_versions=["a1", "b1"], policy={"mode": "explain"})
    with transaction(factory) as session:
        assert runs.replay_run_exists(session, "candidate")
        assert runs.replay_report(session, "candidate") is None  # running
        runs.finish_replay_run(session, "candidate", status="done", report={"totals": {"posts": 3}})
    with transaction(factory) as session:
        assert runs.replay_report(session, "candidate") == {"totals": {"posts": 3}}
        assert runs.replay_report(session, "live") is None


def test_finishing_a_run_never_started_is_a_storage_error(factory):
    with pytest.raises(StorageError, match="NoResultFound"), transaction(factory) as session:
        runs.finish_replay_run(session, "nobody", status="failed", report={})


def test_per_run_labels_explanations_and_signal_counts(factory, stored, explanation, signal):
    with transaction(factory) as session:
        repository.upsert_explanations(session, [explanation(stored["p1"], "reject", run="candidate")])
        repository.upsert_signals(session, [signal(stored["p0"]), signal(stored["p0"], run="candidate"),
                                            signal(stored["p2"], run="candidate"),
                                            signal(stored["p1"], run="candidate", task="other_task")])
    with transaction(factory) as session:
        live, candidate = runs.run_labels(session, "live"), runs.run_labels(session, "candidate")
        assert runs.explained_post_ids(session, "candidate") == {stored["p1"]}
        assert runs.explained_post_ids(session, "live") == set()
        assert runs.signal_counts(session, "live") == {TASK: 1}
        assert runs.signal_counts(session, "candidate") == {TASK: 2, "other_task": 1}
        assert runs.signal_counts(session, "nobody") == {}
    assert live[(stored["p1"], TASK)] == ("no_severe_adr", pytest.approx(0.7))
    assert candidate[(stored["p1"], TASK)].label == "severe_adr" and len(candidate) == 3
