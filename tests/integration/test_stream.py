"""The stream end to end: posts on Kafka -> the three worker roles (Faust) -> rows in PostgreSQL.

Real broker, real database, real model and llama.cpp; the workers run as `monitor worker --role all`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer
from sqlalchemy import func, select

from monitor.kafka import broker
from monitor.config import DatabaseSettings, KafkaSettings, TopicSettings
from monitor.records import DeadLetter, Post, encode_post
from monitor.services import process, prometheus
from monitor.storage import migrations
from monitor.storage.session import create_db_engine, make_sessionmaker, transaction
from monitor.storage.tables import Explanation, Prediction, Signal
from monitor.storage.tables import Post as PostRow
from monitor.tasks import load_task
from monitor.kafka.topology import topic_specs
from monitor.corpus import load_examples

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
GOOD = 300  # the kill -9 test
MANY, MANY_BAD = 1200, 240  # the end-to-end test: every role, every path (over budget, dead letters)


def _bad_records(count: int) -> list[bytes]:
    kinds = [b"\xff\xfe not utf-8", b"{not json", b"[1, 2, 3]", b'{"text": "no id"}', b'{"id": "x1"}',
             b'{"id": "x2", "text": "   "}', b'{"id": 1.5, "text": "float id"}', b"",
             json.dumps({"id": "x3", "text": "t", "created_at": "yesterday-ish"}).encode(),
             json.dumps({"id": "x4", "text": "x" * 50_000}).encode()]
    return [kinds[i % len(kinds)] for i in range(count)]


@pytest.fixture
def stream_env(kafka: KafkaSettings, postgres_db: DatabaseSettings, tiny_model: Path, tmp_path: Path):
    tag = uuid.uuid4().hex[:8]
    topics = TopicSettings(**{role: f"t{tag}.{role}" for role in TopicSettings().all()})
    broker.ensure_topics(kafka, topic_specs(kafka.model_copy(update={"partitions": 2}), topics))
    migrations.downgrade(postgres_db, "base")
    migrations.upgrade(postgres_db)
    env = {**os.environ, "MONITOR_DATA_DIR": str(tmp_path), "MONITOR_DATABASE__URL": postgres_db.url,
           "MONITOR_CLASSIFIER__MODELS": json.dumps([str(tiny_model)]), "MONITOR_CLASSIFIER__DEVICE": "cpu",
           "MONITOR_STREAM__APP_ID": f"test-{tag}", "MONITOR_EXPLAINER__N_THREADS": "1",
           "MONITOR_EXPLAINER__BUDGET_PER_S": "50", "MONITOR_METRICS__PORT": "0",
           **{f"MONITOR_TOPICS__{role.upper()}": name for role, name in topics.all().items()}}
    return topics, env


def _rows(factory, table) -> int:
    with transaction(factory) as session:
        return session.scalar(select(func.count()).select_from(table))


def _sample_posts(prefix: str, source: str, count: int = GOOD) -> list[Post]:
    """``count`` posts with unique ids, texts from rmhd27 (repeated when ``count`` exceeds the file)."""
    examples = load_examples(SHARED / "rmhd27" / "rmhd27_dev.csv", load_task("rmhd27_social_anxiety")).examples
    now = datetime.now(UTC) - timedelta(minutes=30)
    return [Post(id=f"{prefix}{i}-{examples[i % len(examples)].id}", text=examples[i % len(examples)].text,
                 created_at=now + timedelta(milliseconds=100 * i), source=source) for i in range(count)]


def _start_workers(env: dict, log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "monitor.cli", "worker", "--role", "all"], env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop_workers(workers: subprocess.Popen) -> None:
    process.stop_group(workers, timeout_s=90)


def _query_until(url: str, promql: str, expected: float, timeout_s: float = 30.0) -> float | None:
    deadline, value = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        value = prometheus.query(url, promql)
        if value == expected:
            break
        time.sleep(0.5)
    return value


@pytest.mark.slow
@pytest.mark.timeout(600)  # its own deadline is 420 s; pytest's default 300 s would cut it short
def test_over_a_thousand_posts_and_malformed_records_through_every_role_counted_by_prometheus(
        kafka, postgres_db, stream_env, tmp_path):
    topics, env = stream_env
    posts = _sample_posts("s", "stream-test", MANY)
    bad = _bad_records(MANY_BAD)
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all", linger_ms=20)
    step = MANY // MANY_BAD
    for i, post in enumerate(posts):
        producer.send(topics.posts, key=post.id.encode(), value=encode_post(post))
        if i % step == 0:
            producer.send(topics.posts, key=b"bad", value=bad[i // step])
    producer.flush()
    producer.close()

    port = process.free_port()
    prom_port = next(p for p in iter(process.free_port, None) if p != port)
    # A budget well below what the stream escalates: the over-budget path runs too, and every
    # escalation still gets exactly one explanation row.
    env = {**env, "MONITOR_METRICS__PORT": str(port), "MONITOR_EXPLAINER__BUDGET_PER_S": "2",
           "MONITOR_METRICS__LAG_INTERVAL_S": "1"}
    # Prometheus first: if it cannot start, no worker is left running behind the failed test.
    server = prometheus.start_prometheus(
        prometheus.prometheus_config({"monitor": [f"127.0.0.1:{port}"]}, interval_s=1), [], tmp_path / "prom",
        port=prom_port)
    try:
        workers = _start_workers(env, tmp_path / "workers.log")
    except BaseException:
        server.stop()
        raise
    factory = make_sessionmaker(create_db_engine(postgres_db))
    try:
        deadline = time.monotonic() + 420
        while True:
            assert workers.poll() is None, (tmp_path / "workers.log").read_text()[-3000:]
            with transaction(factory) as session:
                predictions = session.scalar(select(func.count()).select_from(Prediction))
                escalated = session.scalar(select(func.count()).select_from(Prediction).where(Prediction.escalated))
                explained = session.scalar(select(func.count()).select_from(Explanation))
            if predictions == MANY and explained == escalated:
                break
            assert time.monotonic() < deadline, f"{predictions}/{MANY} predictions, {explained}/{escalated} explained"
            time.sleep(2)
        assert _rows(factory, PostRow) == MANY
        assert _rows(factory, Prediction) == MANY
        assert _rows(factory, Explanation) == escalated > 0
        with transaction(factory) as session:
            pairs = session.execute(select(Prediction.post_id, Prediction.task)).all()
            ids = session.scalars(select(PostRow.source_id)).all()
            signals = session.scalar(select(func.count()).select_from(Signal))
            signal_labels = set(session.scalars(select(Signal.label)).all())
            verdicts = dict(session.execute(select(Explanation.verdict, func.count()).group_by(Explanation.verdict)).all())
        assert len(pairs) == len(set(pairs)) == MANY  # one prediction per (post, task)
        assert sorted(ids) == sorted(p.id for p in posts)
        assert signal_labels <= {"social_anxiety"}
        assert verdicts.get("over_budget", 0) > 0
        # The LLM is best-effort: the explain process runs MONITOR_EXPLAINER__NICE (10) below the others.
        niceness = _role_niceness(workers.pid)
        assert niceness["explain"] - niceness["classify"] == 10 and niceness["persist"] == niceness["classify"]

        # What Prometheus scraped from the workers' one endpoint equals what was processed.
        url = server.url
        assert _query_until(url, "sum(monitor_posts_consumed_total)", MANY + MANY_BAD) == MANY + MANY_BAD
        assert _query_until(url, "sum(monitor_dead_letters_total)", MANY_BAD) == MANY_BAD
        assert _query_until(url, 'sum(monitor_rows_persisted_total{table="predictions"})', MANY) == MANY
        assert _query_until(url, 'sum(monitor_rows_persisted_total{table="explanations"})', escalated) == escalated
        assert _query_until(url, 'sum(monitor_rows_persisted_total{table="signals"})', signals) == signals
        assert _query_until(url, "sum(monitor_escalations_total)", escalated) == escalated
        assert _query_until(url, 'sum(monitor_explanations_total{verdict="over_budget"})',
                            verdicts["over_budget"]) == verdicts["over_budget"]
        assert _query_until(url, "sum(monitor_consumer_lag_records)", 0) == 0
        assert prometheus.query(url, "sum(monitor_pipeline_latency_seconds_count)") >= MANY
        assert prometheus.query(url, 'count(monitor_model_info{role="classify"})') == 1
        shares = prometheus.query(url, "sum(monitor_label_share_ratio)")
        assert shares == pytest.approx(1.0)
    finally:
        _stop_workers(workers)
        server.stop()
        factory.kw["bind"].dispose()

    consumer = KafkaConsumer(topics.dead_letter, bootstrap_servers=kafka.bootstrap_servers,
                             auto_offset_reset="earliest", group_id=None, consumer_timeout_ms=5000)
    letters = [DeadLetter.from_bytes(record.value) for record in consumer]
    consumer.close()
    assert len(letters) == MANY_BAD
    assert {letter.stage for letter in letters} == {"decode"}
    assert {"not_utf8", "not_json", "not_object", "missing_id", "missing_text", "blank_text"} <= {
        letter.reason for letter in letters}
    # Same key, same partition: the dead letters keep the order and the exact bytes of the originals.
    assert [letter.original for letter in letters] == bad


def _role_niceness(supervisor: int) -> dict[str, int]:
    """Each role process's niceness, read from /proc (field 19 of stat) for the supervisor's children."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(fields[1]) == supervisor and b"--role" in cmdline:
            found[cmdline[cmdline.index(b"--role") + 1].decode()] = int(fields[16])
    return found


@pytest.mark.slow
def test_kill_9_mid_stream_then_restart_loses_nothing_and_duplicates_nothing(kafka, postgres_db, stream_env, tmp_path):
    topics, env = stream_env
    posts = _sample_posts("k", "kill-test")
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    for post in posts:
        producer.send(topics.posts, key=post.id.encode(), value=encode_post(post))
    producer.flush()
    producer.close()

    log_path = tmp_path / "workers.log"
    factory = make_sessionmaker(create_db_engine(postgres_db))
    workers = _start_workers(env, log_path)
    try:
        deadline = time.monotonic() + 240
        while _rows(factory, Prediction) < 40:  # some work committed, most still to do
            assert time.monotonic() < deadline and workers.poll() is None, log_path.read_text()[-3000:]
            time.sleep(0.5)
        os.killpg(workers.pid, signal.SIGKILL)  # every role at once, no clean shutdown, no final commit
        workers.wait(timeout=30)
        assert _rows(factory, Prediction) < GOOD, "the kill came too late to test anything"

        workers = _start_workers(env, log_path)
        deadline = time.monotonic() + 300
        while True:
            assert workers.poll() is None, log_path.read_text()[-3000:]
            with transaction(factory) as session:
                predictions = session.scalar(select(func.count()).select_from(Prediction))
                escalated = session.scalar(select(func.count()).select_from(Prediction).where(Prediction.escalated))
                explained = session.scalar(select(func.count()).select_from(Explanation))
            if predictions >= GOOD and explained >= escalated:
                break
            assert time.monotonic() < deadline, f"{predictions} predictions, {explained}/{escalated} explained"
            time.sleep(2)
        with transaction(factory) as session:
            ids = session.scalars(select(PostRow.source_id)).all()
            pairs = session.execute(select(Prediction.post_id, Prediction.task)).all()
        assert sorted(ids) == sorted(p.id for p in posts)  # nothing lost, nothing twice
        assert len(pairs) == len(set(pairs)) == GOOD
        assert _rows(factory, Explanation) == escalated
    finally:
        _stop_workers(workers)
        factory.kw["bind"].dispose()
