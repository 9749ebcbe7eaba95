"""Replay of a time range: exactly the posts in the range, stored under the run name, metrics on gold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from kafka import KafkaProducer
from sqlalchemy import func, select

from monitor.kafka import broker
from monitor.config import ClassifierSettings, DatabaseSettings, KafkaSettings, Settings
from monitor.explainer.policy import Policy
from monitor.feed import timestamp_ms
from monitor.records import Post, encode_post
from monitor.replay import compare_runs, replay
from monitor.runtime import Runtime
from monitor.storage import migrations
from monitor.storage.session import transaction
from monitor.storage.tables import Post as PostRow
from monitor.storage.tables import Prediction, ReplayRun
from monitor.tasks import load_task
from monitor.kafka.topology import TopicSpec
from monitor.corpus import load_examples

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def test_replay_reads_exactly_the_range_and_reports_metrics(kafka: KafkaSettings, tiny_model: Path, topic_name: str,
                                                            tmp_path: Path):
    broker.ensure_topics(kafka, [TopicSpec(topic_name, 3, 1, {"retention.ms": "-1"})])
    examples = load_examples(SHARED / "rmhd27" / "rmhd27_dev.csv", load_task("rmhd27_social_anxiety")).examples
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=4)
    posts = [Post(id=f"r{e.id}", text=e.text, created_at=t0 + timedelta(minutes=i), source="replay-test",
                  labels={"rmhd27_social_anxiety": e.label}) for i, e in enumerate(examples[:200])]
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    for post in reversed(posts):  # out of time order on purpose: the range is by record time, not offset
        producer.send(topic_name, key=post.id.encode(), value=encode_post(post), timestamp_ms=timestamp_ms(post.created_at))
    producer.flush()
    producer.close()

    start, end = t0 + timedelta(minutes=50), t0 + timedelta(minutes=150)
    in_range = {p.id for p in posts if start <= p.created_at < end}
    assert len(in_range) == 100
    seen = {r.key.decode() for r in broker.records_between(kafka, topic_name, timestamp_ms(start), timestamp_ms(end))}
    assert seen == in_range

    db = DatabaseSettings(url=f"sqlite:///{tmp_path / 'replay.db'}")
    migrations.upgrade(db)
    settings = Settings(kafka=kafka, database=db, classifier=ClassifierSettings(device="cpu"), data_dir=tmp_path)
    runtime = Runtime.build(settings, ["classify", "persist"], folders=[tiny_model])
    runtime.policy = Policy()
    factory = runtime.factory
    report = replay(runtime, topic_name, start, end, run="candidate")
    assert report.records == 100 and report.bad_records == 0 and report.totals["predictions"] == 100
    metric = report.metrics["rmhd27_social_anxiety"]
    assert metric["n"] == 100 and 0.0 <= metric["classifier"] <= 1.0 and metric["final"] == metric["classifier"]
    with transaction(factory) as session:
        stored = set(session.scalars(select(PostRow.source_id).join(Prediction, Prediction.post_id == PostRow.id)
                                     .where(Prediction.run == "candidate")))
        run_row = session.scalars(select(ReplayRun).where(ReplayRun.name == "candidate")).one()
        assert session.scalar(select(func.count()).select_from(Prediction).where(Prediction.run == "live")) == 0
    assert stored == in_range
    assert run_row.status == "done" and run_row.report["totals"]["posts"] == 100

    again = replay(runtime, topic_name, start, end, run="candidate-2")
    assert again.totals["predictions"] == 100
    comparison = compare_runs(factory, "candidate", "candidate-2")
    assert comparison.common == 100 and comparison.changed_total == 0
    factory.kw["bind"].dispose()
