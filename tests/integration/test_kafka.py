"""The real local broker: topic creation, produce/consume, offsets by time, restart durability."""

from __future__ import annotations

import time
import uuid

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from monitor.kafka import broker
from monitor.config import KafkaSettings, Settings, TopicSettings
from monitor.errors import BrokerError
from monitor.services import local
from monitor.kafka.topology import TopicSpec, topic_specs


def _produce(kafka: KafkaSettings, topic: str, n: int, *, t0_ms: int) -> None:
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    for i in range(n):
        producer.send(topic, key=f"post-{i}".encode(), value=f"value-{i}".encode(), timestamp_ms=t0_ms + i * 1000)
    producer.flush()
    producer.close()


def _consumer(kafka: KafkaSettings, group: str | None, **extra) -> KafkaConsumer:
    return KafkaConsumer(
        bootstrap_servers=kafka.bootstrap_servers,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **extra,
    )


def _drain(consumer: KafkaConsumer, want: int, timeout_s: float = 30) -> list:
    got: list = []
    deadline = time.monotonic() + timeout_s
    while len(got) < want and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500, max_records=want - len(got)).values():
            got.extend(records)
    return got


def test_project_topics_are_created_with_partitions_and_retention(kafka: KafkaSettings):
    prefix = uuid.uuid4().hex[:8]
    names = TopicSettings(**{role: f"{prefix}.{role}" for role in TopicSettings().all()})
    settings = kafka.model_copy(update={"partitions": 2, "retention_hours": 5})
    reports = broker.ensure_topics(settings, topic_specs(settings, names))
    # Every stage topic with the configured partitions; the sources' positions in one (read whole at start).
    assert all(r.created for r in reports)
    assert {r.name: r.partitions for r in reports} == {name: 1 if name == names.positions else 2
                                                      for name in names.all().values()}
    assert broker.topic_configs(settings, names.positions)["cleanup.policy"] == "compact"
    assert broker.topic_configs(settings, names.posts)["retention.ms"] == str(5 * 3_600_000)
    assert broker.topic_configs(settings, names.dead_letter)["retention.ms"] == str(
        settings.dead_letter_retention_hours * 3_600_000
    )
    # Creating again is harmless and reports nothing new.
    assert not any(r.created for r in broker.ensure_topics(settings, topic_specs(settings, names)))


def test_broker_does_not_auto_create_topics(kafka: KafkaSettings, topic_name: str):
    with pytest.raises(BrokerError, match="does not exist"):
        broker.end_offsets(kafka, topic_name)


def test_produce_consume_exact_end_offsets_and_offsets_for_times(kafka: KafkaSettings, topic_name: str):
    broker.ensure_topics(kafka, [TopicSpec(topic_name, 3, 1)])
    t0 = 1_700_000_000_000
    _produce(kafka, topic_name, 60, t0_ms=t0)
    assert sum(broker.end_offsets(kafka, topic_name).values()) == 60

    consumer = _consumer(kafka, f"g-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([topic_name])
    records = _drain(consumer, 60)
    consumer.close()
    assert sorted(r.value.decode() for r in records) == sorted(f"value-{i}" for i in range(60))

    # offsets_for_times finds the first record at or after a timestamp, by the records' own time.
    probe = _consumer(kafka, None)
    partitions = [TopicPartition(topic_name, p) for p in range(3)]
    found = probe.offsets_for_times({tp: t0 + 40_000 for tp in partitions})
    probe.assign(partitions)
    for tp, hit in found.items():
        if hit is not None:
            probe.seek(tp, hit.offset)
    later = _drain(probe, 20)
    probe.close()
    assert sorted(int(r.value.decode().split("-")[1]) for r in later) == list(range(40, 60))
    assert all(r.timestamp >= t0 + 40_000 for r in later)


@pytest.mark.slow
def test_data_and_committed_offsets_survive_a_broker_restart(settings: Settings, kafka: KafkaSettings, topic_name: str):
    if not settings.services.manage_kafka:
        pytest.skip("the broker is external (MONITOR_SERVICES__MANAGE_KAFKA=false): this test restarts it")
    broker.ensure_topics(kafka, [TopicSpec(topic_name, 1, 1)])
    _produce(kafka, topic_name, 20, t0_ms=1_700_000_000_000)
    group = f"g-{uuid.uuid4().hex[:8]}"
    consumer = _consumer(kafka, group)
    consumer.assign([TopicPartition(topic_name, 0)])
    first = _drain(consumer, 8)
    assert len(first) == 8
    consumer.commit()
    consumer.close()

    local.down(settings, ["kafka"])
    assert local.local_kafka(settings).pid() is None
    local.up(settings, ["kafka"])

    assert broker.end_offsets(kafka, topic_name) == {0: 20}
    resumed = _consumer(kafka, group)
    tp = TopicPartition(topic_name, 0)
    resumed.assign([tp])
    assert resumed.committed(tp) == 8
    rest = _drain(resumed, 12)
    resumed.close()
    assert [r.offset for r in rest] == list(range(8, 20))
