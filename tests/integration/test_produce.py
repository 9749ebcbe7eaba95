"""`monitor produce` against the real local broker: what it sends is exactly what the file holds."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition

from monitor.kafka import broker
from monitor.config import KafkaSettings
from monitor.feed import timestamp_ms
from monitor.records import decode_post, encode_post
from monitor.kafka.topology import TopicSpec

RMHD27 = Path("/work/shared/data/rmhd27/rmhd27_dev.csv")
T0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)


def produce(kafka: KafkaSettings, *args: str, cwd: Path, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    environment.update({"MONITOR_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers, "COLUMNS": "120",
                        **(env or {})})
    # cwd: a folder without a .env, so only the variables above configure the command.
    return subprocess.run([sys.executable, "-m", "monitor.cli", "produce", *args], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=240)


def make_topic(kafka: KafkaSettings, name: str) -> str:
    # Unlimited retention: the test posts are dated years back, and the broker deletes by record time.
    broker.ensure_topics(kafka, [TopicSpec(name, 3, 1, {"retention.ms": "-1"})])
    return name


def consume_all(kafka: KafkaSettings, topic: str, timeout_s: float = 60) -> list:
    """Every record of ``topic``, read until the end offsets (so the count is exact)."""
    end = broker.end_offsets(kafka, topic)
    consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, enable_auto_commit=False,
                             auto_offset_reset="earliest")
    partitions = [TopicPartition(topic, p) for p in end]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    records: list = []
    deadline = time.monotonic() + timeout_s
    while any(consumer.position(tp) < end[tp.partition] for tp in partitions) and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            records.extend(batch)
    consumer.close()
    assert sum(end.values()) == len(records)
    return records


def summary_value(output: str, measure: str) -> str:
    match = re.search(rf"{re.escape(measure)}\s*│\s*([0-9.,]+)", output)
    assert match, output
    return match.group(1).replace(",", "")


def test_produce_sends_every_post_keyed_by_id_and_timed_by_created_at(kafka: KafkaSettings, topic_name: str,
                                                                      tmp_path: Path):
    topic = make_topic(kafka, topic_name)
    records, explicit = [], {}
    for i in range(1000):
        record: dict = {"id": f"p{i:04d}" if i % 3 else 10**18 + i, "text": f"post {i}: ça me démange \U0001F912"}
        if i % 4 == 0:
            when = T0 + timedelta(minutes=i, milliseconds=i)
            record["created_at"] = when.isoformat()
            explicit[str(record["id"])] = when
        if i % 5 == 0:
            record.update(source="twitter", lang="fr", geo={"country": "FR"}, labels={"task_a": "yes"})
        records.append(record)
    path = tmp_path / "posts.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n", encoding="utf-8")

    result = produce(kafka, str(path), cwd=tmp_path, env={"MONITOR_TOPICS__POSTS": topic})
    assert result.returncode == 0, result.stdout + result.stderr
    assert summary_value(result.stdout, "sent (acknowledged)") == "1000"
    assert summary_value(result.stdout, "failed") == "0"

    consumed = consume_all(kafka, topic)
    assert len(consumed) == 1000
    by_id = {}
    for message in consumed:
        post = decode_post(message.value, fallback_time=datetime(2000, 1, 1, tzinfo=UTC))
        assert message.key == post.id.encode()
        assert message.timestamp == timestamp_ms(post.created_at)
        assert encode_post(post) == message.value  # the canonical form, so it round-trips byte for byte
        by_id[post.id] = post
    assert sorted(by_id) == sorted(str(r["id"]) for r in records)
    for record in records:
        post = by_id[str(record["id"])]
        assert post.text == record["text"] and post.source == record.get("source", "unknown")
        assert post.labels == record.get("labels", {})
    for post_id, when in explicit.items():
        assert by_id[post_id].created_at == when
    # The broker finds posts by their time: the first post at or after T0 + 500 minutes.
    probe = KafkaConsumer(bootstrap_servers=kafka.bootstrap_servers)
    target = timestamp_ms(T0 + timedelta(minutes=500))
    hits = probe.offsets_for_times({TopicPartition(topic, p): target for p in range(3)})
    probe.close()
    assert all(hit is None or hit.timestamp >= target for hit in hits.values())
    assert any(hit is not None for hit in hits.values())


def test_produce_labelled_rmhd27_with_task(kafka: KafkaSettings, topic_name: str, tmp_path: Path):
    topic = make_topic(kafka, topic_name)
    result = produce(kafka, str(RMHD27), "--task", "rmhd27_social_anxiety", "--topic", topic, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert summary_value(result.stdout, "sent (acknowledged)") == "4914"
    assert "older than the topics' retention" in result.stdout  # 2019 posts on a 30-day topic: warned
    consumed = consume_all(kafka, topic)
    posts = [decode_post(m.value, fallback_time=datetime(2000, 1, 1, tzinfo=UTC)) for m in consumed]
    assert len(posts) == 4914 and len({p.id for p in posts}) == 4914
    assert sum(p.labels["rmhd27_social_anxiety"] == "social_anxiety" for p in posts) == 182
    assert all(m.timestamp == timestamp_ms(p.created_at) for m, p in zip(consumed, posts, strict=True))
    assert min(p.created_at for p in posts) >= datetime(2018, 11, 1, tzinfo=UTC)


def test_bad_rows_limit_and_rate(kafka: KafkaSettings, topic_name: str, tmp_path: Path):
    topic = make_topic(kafka, topic_name)
    path = tmp_path / "mixed.jsonl"
    lines = [json.dumps({"id": f"g{i}", "text": f"good {i}"}) for i in range(30)]
    lines[7] = '{"id": 7.5, "text": "float id"}'
    lines[12] = "not json"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    failed = produce(kafka, str(path), "--topic", topic, cwd=tmp_path)
    assert failed.returncode == 1
    assert f"{path}:8: wrong_type" in " ".join(failed.stderr.split())
    assert summary_value(failed.stdout, "sent (acknowledged)") == "7"  # what came before the bad line

    skipped = produce(kafka, str(path), "--topic", topic, "--skip-bad-rows", "--limit", "20", "--rate", "40",
                      cwd=tmp_path)
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    assert summary_value(skipped.stdout, "sent (acknowledged)") == "20"
    assert summary_value(skipped.stdout, "bad rows skipped") == "2"
    assert float(summary_value(skipped.stdout, "seconds")) >= 19 / 40  # 20 posts at 40/s: 19 waits of 25 ms
    assert len(consume_all(kafka, topic)) == 7 + 20


def test_failures_exit_1_with_one_line(kafka: KafkaSettings, topic_name: str, tmp_path: Path):
    path = tmp_path / "posts.jsonl"
    path.write_text('{"id": "1", "text": "x"}\n', encoding="utf-8")
    missing = produce(kafka, str(path), "--topic", topic_name, cwd=tmp_path)
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr and "Traceback" not in missing.stderr

    topic = make_topic(kafka, topic_name)
    future = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    path.write_text("\n".join([json.dumps({"id": "1", "text": "x"}),
                               json.dumps({"id": "2", "text": "from the future", "created_at": future}),
                               json.dumps({"id": "3", "text": "y"})]) + "\n", encoding="utf-8")
    # Kafka 4 refuses record times over an hour ahead and fails the whole batch: the post is held back.
    held = produce(kafka, str(path), "--topic", topic, cwd=tmp_path)
    assert held.returncode == 1
    assert summary_value(held.stdout, "sent (acknowledged)") == "2" and summary_value(held.stdout, "failed") == "1"
    assert "'2': created_at" in held.stdout and "in the future" in held.stdout
    skipped = produce(kafka, str(path), "--topic", topic, "--skip-bad-rows", cwd=tmp_path)
    assert skipped.returncode == 0 and summary_value(skipped.stdout, "bad rows skipped") == "1"
    assert sorted(m.key for m in consume_all(kafka, topic)) == [b"1", b"1", b"3", b"3"]

    nobody = produce(kafka, str(path), "--topic", topic_name, cwd=tmp_path,
                     env={"MONITOR_KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:1", "MONITOR_KAFKA__REQUEST_TIMEOUT_S": "3"})
    assert nobody.returncode == 1 and "Traceback" not in nobody.stderr
    assert "127.0.0.1:1" in nobody.stderr
