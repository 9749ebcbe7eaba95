"""Faults as an operator meets them, with thousands of tagged posts in flight: nothing lost, nothing twice.

One supervised stack (`monitor worker --role all`) plus a second persist worker in its own consumer
group (so every row is written by two persist workers at once) runs for the whole module, over the
real broker and the real PostgreSQL. Each test tags its posts with its own source, injects its fault
(stops PostgreSQL, restarts the broker, kills a role, a fault drill, a redelivery) and then counts its
rows: every post once, one prediction per post, one explanation per escalation, and every signal
agreeing with its prediction and explanation.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from kafka import KafkaConsumer, KafkaProducer
from sqlalchemy import select

from monitor import telemetry
from monitor.kafka import broker
from monitor.config import DatabaseSettings, KafkaSettings, Settings, TopicSettings
from monitor.cases import Case, Decision, decode_classified
from monitor.pipeline import write
from monitor.records import DeadLetter, Explanation, Post, Prediction, encode_post
from monitor.services import local, process
from monitor.services.process import http_get as _get
from monitor.storage import migrations
from monitor.storage.session import create_db_engine, make_sessionmaker, transaction
from monitor.storage.tables import Explanation as ExplanationRow
from monitor.storage.tables import Post as PostRow
from monitor.storage.tables import Prediction as PredictionRow
from monitor.storage.tables import Signal
from monitor.tasks import load_task
from monitor.corpus import load_examples

# The first test also waits for the stack to start (and the session's tiny model to be trained).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
TASK = load_task("rmhd27_social_anxiety")
#: How long PostgreSQL stays down in the outage test (the issue's 60 s).
OUTAGE_S = float(os.environ.get("MONITOR_TEST_OUTAGE_S", "60"))


@dataclass
class Stack:
    topics: TopicSettings
    env: dict[str, str]
    port: int
    workers: subprocess.Popen
    second_persist: subprocess.Popen
    factory: object
    kafka: KafkaSettings
    log: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def _texts() -> list[str]:
    return [e.text for e in load_examples(SHARED / "rmhd27" / "rmhd27_dev.csv", TASK).examples]


def _posts(source: str, count: int, *, poison_at: tuple[int, ...] = ()) -> list[Post]:
    texts = _texts()
    start = datetime.now(UTC) - timedelta(minutes=20)
    return [Post(id=f"{source}-{'POISON-' if i in poison_at else ''}{i}", text=texts[i % len(texts)], source=source,
                 created_at=start + timedelta(milliseconds=50 * i)) for i in range(count)]


def _launch(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "monitor.cli", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _until(condition, timeout_s: float, what: str, stack: Stack | None = None, step_s: float = 1.0):  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if stack is not None:
            assert stack.workers.poll() is None, stack.log.read_text()[-4000:]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(step_s)


def _metric(stack: Stack, name: str, **labels: str) -> float:
    """The sum of a metric's samples (with these labels) on the supervisor's /metrics."""
    status, text = _get(stack.url("/metrics"))
    assert status == 200
    return telemetry.sample_sum(text, name, **labels)


def _role_pid(stack: Stack, role: str) -> int:
    """The pid of the supervisor's child running ``role``."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(stack.workers.pid)], capture_output=True, text=True,
                         check=True).stdout
    for pid in map(int, out.split()):
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--role" in args and args[args.index(b"--role") + 1].decode() == role:
            return pid
    raise AssertionError(f"no {role} child of the supervisor")


@pytest.fixture(scope="module")
def stack(kafka: KafkaSettings, postgres_db: DatabaseSettings, tiny_model: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("faults")
    tag = uuid.uuid4().hex[:8]
    topics = TopicSettings(**{role: f"f{tag}.{role}" for role in TopicSettings().all()})
    broker.ensure_topics(kafka, [spec for spec in _topic_specs(kafka, topics)])
    migrations.downgrade(postgres_db, "base")
    migrations.upgrade(postgres_db)
    port = process.free_port()
    env = {**os.environ, "MONITOR_DATA_DIR": str(tmp / "data"), "MONITOR_DATABASE__URL": postgres_db.url,
           "MONITOR_CLASSIFIER__MODELS": json.dumps([str(tiny_model)]), "MONITOR_CLASSIFIER__DEVICE": "cpu",
           "MONITOR_STREAM__APP_ID": f"faults-{tag}", "MONITOR_EXPLAINER__N_THREADS": "1",
           "MONITOR_EXPLAINER__BUDGET_PER_S": "2", "MONITOR_METRICS__PORT": str(port),
           "MONITOR_METRICS__LAG_INTERVAL_S": "2", "MONITOR_STREAM__RETRY_CAP_S": "5",
           "MONITOR_STREAM__SEND_TIMEOUT_S": "15",
           "MONITOR_SUPERVISOR__RESTART_BACKOFF_S": "0.5", "MONITOR_SUPERVISOR__HEARTBEAT_S": "1",
           # The drills: persist's 3rd batch fails once; a post whose id holds POISON always fails to classify.
           "MONITOR_FAULTS__FAIL_BATCH_STAGE": "persist", "MONITOR_FAULTS__FAIL_BATCH_NUMBER": "3",
           "MONITOR_FAULTS__POISON_STAGE": "classify", "MONITOR_FAULTS__POISON_MARKER": "POISON",
           **{f"MONITOR_TOPICS__{role.upper()}": name for role, name in topics.all().items()}}
    log = tmp / "workers.log"
    workers = _launch(["worker", "--role", "all"], env, log)
    # A second persist worker in a consumer group of its own: it writes every row the first one does,
    # at the same time, into the same tables.
    second_env = {**env, "MONITOR_STREAM__APP_ID": f"faults-{tag}-second", "MONITOR_METRICS__PORT": "0",
                  "MONITOR_DATA_DIR": str(tmp / "data-second"), "MONITOR_FAULTS__FAIL_BATCH_STAGE": ""}
    second = _launch(["worker", "--role", "persist"], second_env, tmp / "second.log")
    factory = make_sessionmaker(create_db_engine(postgres_db))
    result = Stack(topics, env, port, workers, second, factory, kafka, log)
    try:
        _until(lambda: _get(result.url("/readyz"))[0] == 200, 300, "the workers to be ready", result)
        yield result
    finally:
        for proc in (workers, second):
            process.stop_group(proc, timeout_s=90)
        factory.kw["bind"].dispose()


def _topic_specs(kafka: KafkaSettings, topics: TopicSettings):  # noqa: ANN202
    from monitor.kafka.topology import topic_specs

    return topic_specs(kafka.model_copy(update={"partitions": 2}), topics)


def _produce(stack: Stack, posts: list[Post], *, rate_per_s: float | None = None) -> None:
    producer = KafkaProducer(bootstrap_servers=stack.kafka.bootstrap_servers, acks="all", linger_ms=10)
    try:
        for i, post in enumerate(posts):
            producer.send(stack.topics.posts, key=post.id.encode(), value=encode_post(post))
            if rate_per_s and i % 10 == 9:
                time.sleep(10 / rate_per_s)
        producer.flush()
    finally:
        producer.close()


def _stored(stack: Stack, source: str) -> dict:
    """Rows of one test's posts: counts and everything the consistency check needs."""
    with transaction(stack.factory) as session:
        ids = session.scalars(select(PostRow.source_id).where(PostRow.source == source)).all()
        predictions = session.execute(
            select(PostRow.source_id, PredictionRow.label, PredictionRow.escalated)
            .join(PredictionRow, PredictionRow.post_id == PostRow.id).where(PostRow.source == source)).all()
        explanations = session.execute(
            select(PostRow.source_id, ExplanationRow.final_label, ExplanationRow.verdict)
            .join(ExplanationRow, ExplanationRow.post_id == PostRow.id).where(PostRow.source == source)).all()
        signals = session.execute(
            select(PostRow.source_id, Signal.label, Signal.decided_by)
            .join(Signal, Signal.post_id == PostRow.id).where(PostRow.source == source)).all()
    return {"ids": sorted(ids), "predictions": sorted(map(tuple, predictions)),
            "explanations": sorted(map(tuple, explanations)), "signals": sorted(map(tuple, signals))}


def _done(stack: Stack, source: str, expected: int):  # noqa: ANN202
    """The stored rows once every post has its prediction and every escalation its explanation."""
    rows = _stored(stack, source)
    escalated = sum(1 for _, _, e in rows["predictions"] if e)
    if len(rows["predictions"]) >= expected and len(rows["explanations"]) >= escalated:
        return rows
    return None


def _assert_exact(rows: dict, posts: list[Post]) -> None:
    """Nothing lost, nothing twice, and no row contradicting another."""
    assert sorted(rows["ids"]) == sorted(p.id for p in posts), "lost or duplicated posts"
    by_post = {pid: (label, escalated) for pid, label, escalated in rows["predictions"]}
    assert len(rows["predictions"]) == len(by_post) == len(posts), "lost or duplicated predictions"
    explained = {pid: (final, verdict) for pid, final, verdict in rows["explanations"]}
    assert len(explained) == len(rows["explanations"]), "an escalation explained twice"
    assert set(explained) == {pid for pid, (_, escalated) in by_post.items() if escalated}
    signals = {pid: (label, decided_by) for pid, label, decided_by in rows["signals"]}
    assert len(signals) == len(rows["signals"])
    for pid, (label, escalated) in by_post.items():
        final = explained[pid][0] if escalated else label
        expected = (final, "classifier" if final == label else "llm") if final in TASK.signal_labels else None
        assert signals.get(pid) == expected, f"the signal of {pid} contradicts its rows"


def test_postgres_stopped_for_a_minute_mid_stream_loses_nothing(stack: Stack):
    posts = _posts("pg-outage", 900)
    producer = threading.Thread(target=_produce, args=(stack, posts), kwargs={"rate_per_s": 60}, daemon=True)
    producer.start()
    _until(lambda: len(_stored(stack, "pg-outage")["predictions"]) >= 225, 240, "a quarter of the rows", stack)
    settings = Settings(_env_file=None)
    local.down(settings, ["postgres"])
    try:
        # The persist role waits, paused and not ready; the supervisor restarts nobody.
        _until(lambda: _get(stack.url("/readyz"))[0] == 503, 60, "readiness to drop", stack)
        time.sleep(OUTAGE_S)
        assert stack.workers.poll() is None
    finally:
        local.up(settings, ["postgres"])
    producer.join(timeout=120)
    rows = _until(lambda: _done(stack, "pg-outage", len(posts)), 300, "every post after the outage", stack, 2)
    _assert_exact(rows, posts)
    _until(lambda: _get(stack.url("/readyz"))[0] == 200, 60, "readiness to come back", stack)
    assert _metric(stack, "monitor_retries_total", stage="persist", kind="transient") > 0


def test_broker_restarted_mid_stream_loses_nothing(stack: Stack):
    posts = _posts("broker-restart", 600)
    _produce(stack, posts)
    _until(lambda: len(_stored(stack, "broker-restart")["predictions"]) >= 150, 240, "some rows", stack)
    settings = Settings(_env_file=None)
    local.down(settings, ["kafka"])
    time.sleep(10)
    local.up(settings, ["kafka"])  # the same log directory: topics and committed offsets survive
    rows = _until(lambda: _done(stack, "broker-restart", len(posts)), 420, "every post after the restart", stack, 2)
    _assert_exact(rows, posts)


@pytest.mark.parametrize("role", ["classify", "persist", "explain"])
def test_kill_9_of_one_role_mid_stream_loses_nothing(stack: Stack, role: str):
    source = f"kill-{role}"
    posts = _posts(source, 300)
    _produce(stack, posts)
    watched = "explanations" if role == "explain" else "predictions"
    _until(lambda: len(_stored(stack, source)[watched]) >= (5 if role == "explain" else 100), 240,
           f"{role} to be busy", stack, 0.5)
    restarts = _metric(stack, "monitor_worker_restarts_total", role=role)
    victim = _role_pid(stack, role)
    os.kill(victim, signal.SIGKILL)
    # The supervisor sees it at once: not ready, naming the role, while its own /livez stays 200.
    status, body = _until(lambda: (r := _get(stack.url("/readyz")))[0] == 503 and r, 15, "/readyz to drop", stack, 0.1)
    assert json.loads(body)["roles"][role]["status"] != "ready"
    assert _get(stack.url("/livez"))[0] == 200
    rows = _until(lambda: _done(stack, source, len(posts)), 360, f"every post after killing {role}", stack, 2)
    _assert_exact(rows, posts)
    status, body = _until(lambda: (r := _get(stack.url("/readyz")))[0] == 200 and r, 120, "/readyz again", stack)
    assert json.loads(body)["roles"][role]["pid"] not in (None, victim)  # restarted by nobody but the supervisor
    assert _metric(stack, "monitor_worker_restarts_total", role=role) == restarts + 1
    assert f"{role} worker killed by SIGKILL; restarting in" in stack.log.read_text()
    verdicts = [verdict for _, _, verdict in rows["explanations"]]
    assert verdicts and set(verdicts) <= {"confirm", "reject", "withheld", "unverified", "over_budget"}


def test_a_failing_batch_is_retried_and_a_poison_record_is_dead_lettered_alone(stack: Stack):
    # A steady stream, as in production: records keep arriving while each poison batch is isolated
    # (a soak run once lost the batch mates fetched during such a wait).
    posts = _posts("drill", 600, poison_at=(150, 300, 450))
    poison = [p for p in posts if "POISON" in p.id]
    _produce(stack, posts, rate_per_s=40)
    good = [p for p in posts if p not in poison]
    rows = _until(lambda: _done(stack, "drill", len(good)), 300, "every good post", stack, 2)
    _assert_exact(rows, good)
    consumer = KafkaConsumer(stack.topics.dead_letter, bootstrap_servers=stack.kafka.bootstrap_servers,
                             auto_offset_reset="earliest", group_id=None, consumer_timeout_ms=5000)
    letters = [DeadLetter.from_bytes(record.value) for record in consumer]
    consumer.close()
    keys = {p.id.encode(): p for p in poison}
    mine = sorted((letter for letter in letters if letter.key in keys), key=lambda letter: letter.key)
    assert [letter.key for letter in mine] == sorted(keys), "each poison record is dead-lettered exactly once"
    for letter in mine:
        assert letter.stage == "classify" and letter.reason == "InjectedFault"
        assert letter.original == encode_post(keys[letter.key]) and letter.topic == stack.topics.posts
    assert not [letter for letter in letters if letter.key not in keys and letter.stage != "decode"]
    # persist's 3rd batch failed once (a drill) and was retried, not dead-lettered.
    assert _metric(stack, "monitor_retries_total", stage="persist", kind="unknown") >= 1


def test_two_persist_workers_writing_the_same_rows_never_deadlock(stack: Stack, postgres_db: DatabaseSettings):
    """The two persist groups of the stack have written every row of this module at once; on top,
    eight threads write the same 400 decisions in eight different orders, twice."""
    texts = _texts()
    now = datetime.now(UTC)
    decisions = []
    for i in range(400):
        post = Post(id=f"concurrent-{i}", text=texts[i % len(texts)], source="concurrent", created_at=now)
        label = TASK.labels[i % len(TASK.labels)]
        prediction = Prediction(post_id=post.id, source="concurrent", task=TASK.name, model_version="m",
                                label=label, probabilities={lb: 1.0 if lb == label else 0.0 for lb in TASK.labels},
                                confidence=1.0, escalated=i % 4 == 0)
        case = Case(post=post, prediction=prediction, escalation="low_confidence" if i % 4 == 0 else None)
        explanation = (Explanation(verdict="confirm", predicted_label=label, rationale="r", llm_model="l",
                                   prompt_version="v") if i % 4 == 0 else None)
        decisions.append(Decision(case=case, final_label=label, decided_by="classifier",
                                  is_signal=label in TASK.signal_labels, explanation=explanation))
    before = _deadlocks(postgres_db)

    def write_shuffled(seed: int) -> None:
        batch = decisions[:]
        random.Random(seed).shuffle(batch)
        write(stack.factory, [], batch, author_key=b"k" * 32, signal_labels={TASK.name: TASK.signal_labels})

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(write_shuffled, range(16)))  # a StorageError (deadlock_detected) would raise here
    rows = _stored(stack, "concurrent")
    assert len(rows["predictions"]) == 400 and len(rows["explanations"]) == 100
    assert _deadlocks(postgres_db) == before == 0, "PostgreSQL detected a deadlock"
    assert stack.second_persist.poll() is None


def _deadlocks(db: DatabaseSettings) -> int:
    url = db.url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()").fetchone()[0]


def test_a_forced_redelivery_gives_the_same_decisions_and_no_contradiction(stack: Stack):
    posts = _posts("redelivery", 400)
    _produce(stack, posts)
    first = _until(lambda: _done(stack, "redelivery", len(posts)), 300, "every post", stack, 2)
    _assert_exact(first, posts)
    # Redeliver everything: the posts again in another order (so they meet other batch mates), and
    # every prediction and explanation record already on the broker, shuffled.
    consumer = KafkaConsumer(stack.topics.predictions, stack.topics.explanations,
                             bootstrap_servers=stack.kafka.bootstrap_servers, auto_offset_reset="earliest",
                             group_id=None, consumer_timeout_ms=5000)
    records = [(r.topic, r.key, r.value) for r in consumer if r.key and r.key.startswith(b"redelivery-")]
    consumer.close()
    predictions_before = [r for r in records if r[0] == stack.topics.predictions]
    assert len(predictions_before) >= len(posts)
    random.Random(5).shuffle(records)
    reordered = posts[::2][::-1] + posts[1::2]
    _produce(stack, reordered)
    producer = KafkaProducer(bootstrap_servers=stack.kafka.bootstrap_servers, acks="all")
    for topic, key, value in records:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()

    def reclassified():  # noqa: ANN202
        consumer = KafkaConsumer(stack.topics.predictions, bootstrap_servers=stack.kafka.bootstrap_servers,
                                 auto_offset_reset="earliest", group_id=None, consumer_timeout_ms=3000)
        # A Decision for a case classify decided, the Case itself for an escalated one.
        found = [d.case if isinstance(d := decode_classified(r.value), Decision) else d
                 for r in consumer if r.key and r.key.startswith(b"redelivery-")]
        consumer.close()
        # The first records, their copies, and the new classification of every post.
        return found if len(found) >= 2 * len(predictions_before) + len(posts) else None

    cases = _until(reclassified, 240, "the posts to be classified again", stack, 2)
    escalated: dict[str, set[bool]] = {}
    for case in cases:
        escalated.setdefault(case.post.id, set()).add(case.escalation is not None)
    assert all(len(decisions) == 1 for decisions in escalated.values()), "a post escalated once and not once"
    app_id = stack.env["MONITOR_STREAM__APP_ID"]
    inputs = {"explain": [stack.topics.escalations], "persist": [stack.topics.predictions, stack.topics.explanations]}

    def caught_up() -> bool:
        return all(lag == 0 for role, topics in inputs.items()
                   for lag in broker.group_lag(stack.kafka, f"{app_id}-{role}", topics).values())

    _until(caught_up, 240, "every group to catch up", stack, 2)
    assert _stored(stack, "redelivery") == first


def test_each_role_loads_only_what_it_uses(stack: Stack):
    """After the faults above: persist and explain never mapped torch, and persist stays small."""
    def maps(role: str) -> str:
        return Path(f"/proc/{_role_pid(stack, role)}/maps").read_text()

    def rss_mb(role: str) -> float:
        status = Path(f"/proc/{_role_pid(stack, role)}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024

    assert "libtorch" in maps("classify")
    for role in ("persist", "explain"):
        assert "libtorch" not in maps(role), f"the {role} worker loaded torch"
    assert "libllama" in maps("explain") and "libllama" not in maps("persist")
    assert rss_mb("persist") < 250, f"persist worker RSS {rss_mb('persist'):.0f} MB"
