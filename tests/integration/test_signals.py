"""EARS detection end to end on SQLite and PostgreSQL: signals in, alert rows and gauges out, CLI on top."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select
from typer.testing import CliRunner

from monitor.cli import app
from monitor.config import DatabaseSettings, SignalsSettings
from monitor.records import Post
from monitor.signals.detect import publish, run_detection
from monitor.storage import migrations, repository
from monitor.storage.alerts import recent_alerts
from monitor.storage.session import create_db_engine, make_sessionmaker, transaction
from monitor.storage.tables import Alert

KEY = b"test-key"
# A far-off day keeps these rows apart from other tests' on the session's shared PostgreSQL database.
NOW = datetime(2031, 3, 10, 12, 0, tzinfo=UTC)
HOURS = 24
BACKGROUND = (2, 3, 1, 2)  # posts per hour, repeating: mean 2, no bucket near 3 sd from its baseline
SPIKE = 12
SETTINGS = SignalsSettings(granularities=("hour",), history_buckets=HOURS, settle_s=0, top_posts=3)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path) -> DatabaseSettings:
    if request.param == "sqlite":
        return DatabaseSettings(url=f"sqlite:///{tmp_path / 'monitor.db'}")
    return request.getfixturevalue("postgres_db")


def _post(task: str, n: int, at: datetime, source: str, geo: dict | None = None) -> Post:
    return Post(id=f"{task}-{n}", text=f"post {n}: started the new tablets and my hands shake", created_at=at,
                source=source, geo=geo)


def _seed(factory, task: str, quiet_task: str, now: datetime = NOW) -> None:
    """A steady background on reddit, then a spike of SPIKE posts from a forum in Wales in the last hour."""
    first = now - timedelta(hours=HOURS)
    posts, confidences = [], []
    for hour in range(HOURS - 1):
        for k in range(BACKGROUND[hour % len(BACKGROUND)]):
            posts.append(_post(task, len(posts), first + timedelta(hours=hour, minutes=5 * k), "reddit"))
            confidences.append(0.8)
    spike = []
    for k in range(SPIKE):
        spike.append(_post(task, len(posts) + k, now - timedelta(minutes=59 - 4 * k), "forum",
                           {"country": "GB", "region": "Wales"}))
        confidences.append(0.99 - 0.01 * k)
    posts += spike
    # Another task: two posts after an empty day pass C1's score (sd floor) but not min_posts.
    quiet = [_post(quiet_task, n, now - timedelta(minutes=30 - n), "reddit") for n in range(2)]
    with transaction(factory) as session:
        ids = repository.upsert_posts(session, posts + quiet, author_key=KEY)
        rows = [{"post_id": ids[(p.source, p.id)], "task": task, "model_version": "v1", "label": "adverse",
                 "confidence": c, "decided_by": "classifier", "post_created_at": p.created_at}
                for p, c in zip(posts, confidences, strict=True)]
        # A second model version flags the top spike post too: the post still counts once.
        rows.append({**rows[len(posts) - SPIKE], "model_version": "v2", "confidence": 0.5})
        rows += [{"post_id": ids[(p.source, p.id)], "task": quiet_task, "model_version": "v1", "label": "adverse",
                  "confidence": 0.9, "decided_by": "classifier", "post_created_at": p.created_at} for p in quiet]
        repository.upsert_signals(session, rows)
        top = spike[0]
        repository.upsert_explanations(session, [{
            "post_id": ids[(top.source, top.id)], "task": task, "model_version": "v1", "llm_model": "smollm2",
            "prompt_version": "adr-1", "predicted_label": "adverse", "verdict": "confirm", "final_label": "adverse",
            "rationale": "line 1 reports a tremor after a new drug", "evidence": "my hands shake",
        }])


def _gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_a_spike_writes_its_alerts_once_and_sets_the_gauges(database: DatabaseSettings, tmp_path):
    migrations.upgrade(database)
    factory = make_sessionmaker(create_db_engine(database))
    task, quiet_task = f"adr_{uuid.uuid4().hex[:8]}", f"quiet_{uuid.uuid4().hex[:8]}"
    _seed(factory, task, quiet_task)
    spike_hour = NOW - timedelta(hours=1)

    with transaction(factory) as session:
        report = run_detection(session, SETTINGS, now=NOW)
    strata = {r.key.stratum for r in report.series if r.key.task == task}
    assert strata == {"all", "source:reddit", "source:forum", "region:GB/Wales"}
    expected = {(stratum, series, method) for stratum in ("all", "source:forum", "region:GB/Wales")
                for series in ("count", "weighted") for method in ("C1", "C2", "C3")}
    assert {(a.key.stratum, a.key.series, a.method) for a in report.alerts} == expected
    assert all(a.bucket_start == spike_hour and a.latest and a.posts == SPIKE for a in report.alerts)
    assert report.inserted == len(expected) == 18

    with transaction(factory) as session:
        rows = session.scalars(select(Alert).where(Alert.task.in_([task, quiet_task]))).all()
        assert len(rows) == 18
        c1 = next(r for r in rows if (r.stratum, r.series, r.method) == ("all", "count", "C1"))
        assert c1.observed == SPIKE and c1.expected == pytest.approx(2.0, abs=0.3) and c1.score > 3
        assert c1.bucket_start == spike_hour and c1.bucket_end == NOW and c1.granularity == "hour"
        weighted = next(r for r in rows if (r.stratum, r.series, r.method) == ("all", "weighted", "C1"))
        assert weighted.observed == pytest.approx(sum(0.99 - 0.01 * k for k in range(SPIKE)))
        top = c1.top_posts
        assert [p["confidence"] for p in top] == [0.99, 0.98, 0.97]
        assert top[0]["verdict"] == "confirm" and "tremor" in top[0]["rationale"]
        assert top[0]["evidence"] == "my hands shake" and top[1]["verdict"] is None
        assert top[0]["source"] == "forum" and "hands shake" in top[0]["text"]
        listed = recent_alerts(session, task=task, limit=50)
        assert len(listed) == 18 and all(a.task == task for a in listed)

    with transaction(factory) as session:  # the next detection run reads the same buckets
        again = run_detection(session, SETTINGS, now=NOW + timedelta(minutes=1))
    assert len(again.alerts) == 18 and again.inserted == 0
    with transaction(factory) as session:
        assert len(session.scalars(select(Alert).where(Alert.task == task)).all()) == 18

    publish(report)
    labels = {"task": task, "granularity": "hour", "stratum": "all", "series": "count"}
    assert _gauge("monitor_signal_observed", **labels) == SPIKE
    assert _gauge("monitor_signal_bucket_start_seconds", **labels) == (NOW - timedelta(hours=1)).timestamp()
    for method in ("C1", "C2", "C3"):
        assert _gauge("monitor_signal_alert", **labels, method=method) == 1.0
        assert _gauge("monitor_signal_score", **labels, method=method) > 2
    assert _gauge("monitor_signal_expected", **labels, method="C1") == pytest.approx(2.0, abs=0.3)
    reddit = {**labels, "stratum": "source:reddit", "method": "C1"}
    assert _gauge("monitor_signal_alert", **reddit) == 0.0
    quiet = {**labels, "task": quiet_task, "method": "C1"}
    assert _gauge("monitor_signal_score", **quiet) == 4.0  # 2 posts over an empty baseline, sd floor 0.5
    assert _gauge("monitor_signal_alert", **quiet) == 0.0  # ... but fewer than min_posts

    # A later report without the task (it went quiet) clears its alert gauges.
    with transaction(factory) as session:
        later = run_detection(session, SETTINGS, now=NOW + timedelta(days=2))
    publish(later)
    assert _gauge("monitor_signal_alert", **labels, method="C1") == 0.0
    factory.kw["bind"].dispose()


def test_cli_lists_detects_and_plots(database: DatabaseSettings, tmp_path, monkeypatch):
    migrations.upgrade(database)
    factory = make_sessionmaker(create_db_engine(database))
    task, quiet_task = f"adr_{uuid.uuid4().hex[:8]}", f"quiet_{uuid.uuid4().hex[:8]}"
    # Its own day: `detect` reads every task, and the PostgreSQL database is shared with the test above.
    _seed(factory, task, quiet_task, now=datetime(2031, 4, 10, 12, tzinfo=UTC))
    factory.kw["bind"].dispose()
    monkeypatch.chdir(tmp_path)  # no stray .env
    env = {"MONITOR_DATABASE__URL": database.url, "MONITOR_DATA_DIR": str(tmp_path),
           "MONITOR_SIGNALS__GRANULARITIES": '["hour"]', "MONITOR_SIGNALS__HISTORY_BUCKETS": str(HOURS),
           "MONITOR_SIGNALS__SETTLE_S": "0",
           "COLUMNS": "200"}  # rich wraps the tables at 80 columns without a terminal
    runner = CliRunner()

    first = runner.invoke(app, ["signals", "detect", "--now", "2031-04-10T12:00:00Z"], env=env)
    assert first.exit_code == 0, first.output
    assert "18 new" in first.output and task in first.output
    second = runner.invoke(app, ["signals", "detect", "--now", "2031-04-10T12:00:00Z"], env=env)
    assert second.exit_code == 0 and "0 new" in second.output

    listed = runner.invoke(app, ["signals", "--task", task, "--limit", "5", "--verbose"], env=env)
    assert listed.exit_code == 0, listed.output
    assert "latest 5 alerts" in listed.output and "2031-04-10 11:00" in listed.output
    assert "tremor" in listed.output  # the top post's explanation, with --verbose

    png = tmp_path / "plots" / "spike.png"
    plotted = runner.invoke(app, ["signals", "--plot", str(png), "--task", task, "--now", "2031-04-10T12:00Z"],
                            env=env)
    assert plotted.exit_code == 0, plotted.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    unknown = runner.invoke(app, ["signals", "--plot", str(png), "--task", task, "--stratum", "source:nowhere",
                                  "--now", "2031-04-10T12:00Z"], env=env)
    assert unknown.exit_code == 2 and "source:forum" in unknown.output
