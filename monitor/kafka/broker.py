"""Thin adapter over kafka-python's admin client: health, topic creation, offsets.

kafka-python errors become ``BrokerError`` with one readable line.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.errors import KafkaError, TopicAlreadyExistsError

from monitor.config import KafkaSettings
from monitor.errors import BrokerError
from monitor.kafka.security import client_options, describe
from monitor.kafka.topology import TopicSpec


@dataclass(frozen=True)
class TopicReport:
    name: str
    created: bool
    partitions: int


@contextmanager
def admin_client(settings: KafkaSettings) -> Iterator[KafkaAdminClient]:
    timeout_ms = int(settings.request_timeout_s * 1000)
    try:
        client = KafkaAdminClient(
            bootstrap_servers=settings.bootstrap_servers,
            client_id=f"{settings.client_id}-admin",
            request_timeout_ms=timeout_ms,
            bootstrap_timeout_ms=timeout_ms,
            **client_options(settings),
        )
    except KafkaError as exc:
        raise BrokerError(
            f"no Kafka broker answers at {settings.bootstrap_servers} ({describe(settings)}): {exc}"
        ) from exc
    try:
        yield client
    except KafkaError as exc:
        raise BrokerError(f"Kafka request to {settings.bootstrap_servers} failed: {exc}") from exc
    finally:
        client.close()


def describe_cluster(settings: KafkaSettings) -> dict:
    """Cluster id, controller and brokers; raises ``BrokerError`` if no broker answers."""
    with admin_client(settings) as client:
        return client.describe_cluster()


def ensure_topics(settings: KafkaSettings, specs: Sequence[TopicSpec]) -> list[TopicReport]:
    """Create the topics that are missing (existing ones are left as they are)."""
    with admin_client(settings) as client:
        existing = {t["name"]: len(t["partitions"]) for t in client.describe_topics()}
        missing = [s for s in specs if s.name not in existing]
        if missing:
            request = {
                s.name: {
                    "num_partitions": s.partitions,
                    "replication_factor": s.replication_factor,
                    "configs": dict(s.configs),
                }
                for s in missing
            }
            try:
                client.create_topics(
                    request, timeout_ms=int(settings.request_timeout_s * 1000), wait_for_metadata=True
                )
            except TopicAlreadyExistsError:
                pass  # another process created it between our describe and create
        return [
            TopicReport(s.name, s.name not in existing, existing.get(s.name, s.partitions)) for s in specs
        ]


def topic_configs(settings: KafkaSettings, topic: str) -> dict[str, str]:
    """The topic-level settings that differ from the broker's defaults (retention, cleanup policy...)."""
    with admin_client(settings) as client:
        described = client.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    return {key: entry["value"] for key, entry in described.get("topic", {}).get(topic, {}).items()}


def _consumer(settings: KafkaSettings, purpose: str) -> KafkaConsumer:
    """A consumer in no group that commits nothing: for reads that must not disturb the pipeline."""
    try:
        return KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, client_id=f"{settings.client_id}-{purpose}",
                             group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
                             **client_options(settings))
    except KafkaError as exc:
        raise BrokerError(
            f"no Kafka broker answers at {settings.bootstrap_servers} ({describe(settings)}): {exc}"
        ) from exc


def _partitions(consumer: KafkaConsumer, topic: str) -> list[TopicPartition]:
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        raise BrokerError(f"topic {topic!r} does not exist")
    return [TopicPartition(topic, p) for p in sorted(partitions)]


def end_offsets(settings: KafkaSettings, topic: str) -> dict[int, int]:
    """The next offset to be written, per partition of ``topic``."""
    consumer = _consumer(settings, "offsets")
    try:
        offsets = consumer.end_offsets(_partitions(consumer, topic))
        return {tp.partition: offset for tp, offset in offsets.items()}
    except KafkaError as exc:
        raise BrokerError(f"cannot read end offsets of {topic!r}: {exc}") from exc
    finally:
        consumer.close()


@dataclass(frozen=True)
class RawRecord:
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None


def records_between(settings: KafkaSettings, topic: str, start_ms: int, end_ms: int) -> Iterator[RawRecord]:
    """Every record of ``topic`` whose own timestamp is in [start_ms, end_ms), partition by partition.

    The start offset of each partition comes from ``offsets_for_times``; reading goes on to the
    partition's end offset as it was when the read began, keeping only records inside the range
    (producer timestamps need not be ordered, so a record past ``end_ms`` ends nothing). Partitions
    are assigned, not subscribed: no consumer group is joined and nothing is committed, so the live
    pipeline's groups and offsets are untouched.
    """
    consumer = _consumer(settings, "replay")
    try:
        tps = _partitions(consumer, topic)
        starts = consumer.offsets_for_times({tp: start_ms for tp in tps})
        ends = consumer.end_offsets(tps)
        for tp in tps:
            found = starts.get(tp)
            if found is None or found.offset >= ends[tp]:
                continue  # nothing at or after start_ms in this partition
            consumer.assign([tp])
            consumer.seek(tp, found.offset)
            while consumer.position(tp) < ends[tp]:
                for record in consumer.poll(timeout_ms=1000, max_records=500).get(tp, []):
                    # Producer timestamps need not be ordered within a partition: filter every record.
                    if record.offset < ends[tp] and start_ms <= record.timestamp < end_ms:
                        yield RawRecord(tp.partition, record.offset, record.timestamp, record.key, record.value)
    except KafkaError as exc:
        raise BrokerError(f"cannot read {topic!r} by time: {exc}") from exc
    finally:
        consumer.close()


def group_positions(settings: KafkaSettings, group: str,
                    topics: Sequence[str]) -> dict[tuple[str, int], tuple[int, int]]:
    """(committed offset, end offset) of ``group`` per (topic, partition) of ``topics``.

    A partition the group has never committed counts from its earliest retained offset.
    """
    with admin_client(settings) as client:
        offsets = client.list_group_offsets({group: None}).get(group, {})
        committed = {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
    consumer = _consumer(settings, "lag")
    try:
        partitions = [tp for topic in topics for tp in _partitions(consumer, topic)]
        ends = consumer.end_offsets(partitions)
        starts = consumer.beginning_offsets(partitions)
    except KafkaError as exc:
        raise BrokerError(f"cannot read the offsets of {', '.join(topics)}: {exc}") from exc
    finally:
        consumer.close()
    return {(tp.topic, tp.partition): (committed.get((tp.topic, tp.partition), starts[tp]), ends[tp])
            for tp in partitions}


def group_lag(settings: KafkaSettings, group: str, topics: Sequence[str]) -> dict[tuple[str, int], int]:
    """Records not yet committed by ``group``, per (topic, partition) of ``topics``."""
    return {tp: max(0, end - done) for tp, (done, end) in group_positions(settings, group, topics).items()}


def latest_by_key(settings: KafkaSettings, topic: str) -> dict[bytes, bytes]:
    """The latest value of every key of a compacted ``topic`` (a key whose latest record is a tombstone
    is absent), read from each partition's start to its end offset as it was when the read began."""
    consumer = _consumer(settings, "state")
    latest: dict[bytes, bytes] = {}
    try:
        tps = _partitions(consumer, topic)
        ends = consumer.end_offsets(tps)
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        for tp in tps:
            while consumer.position(tp) < ends[tp]:
                for record in consumer.poll(timeout_ms=1000, max_records=500).get(tp, []):
                    if record.offset >= ends[tp] or record.key is None:
                        continue
                    if record.value is None:
                        latest.pop(record.key, None)
                    else:
                        latest[record.key] = record.value
    except KafkaError as exc:
        raise BrokerError(f"cannot read {topic!r}: {exc}") from exc
    finally:
        consumer.close()
    return latest
