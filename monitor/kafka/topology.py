"""Which topics the project needs, with partitions and retention: pure, from settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from monitor.config import KafkaSettings, TopicSettings

_HOUR_MS = 3_600_000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    replication_factor: int
    configs: dict[str, str] = field(default_factory=dict)


def topic_specs(kafka: KafkaSettings, topics: TopicSettings) -> list[TopicSpec]:
    """The project's topics: every stage topic, the dead-letter topic with a longer retention, and the
    sources' positions: compacted (the latest position per source is kept for ever), one partition."""
    specs = []
    for role, name in topics.all().items():
        if role == "positions":
            specs.append(TopicSpec(name=name, partitions=1, replication_factor=kafka.replication_factor,
                                   configs={"cleanup.policy": "compact", "min.compaction.lag.ms": str(_HOUR_MS)}))
            continue
        hours = kafka.dead_letter_retention_hours if role == "dead_letter" else kafka.retention_hours
        specs.append(
            TopicSpec(
                name=name,
                partitions=kafka.partitions,
                replication_factor=kafka.replication_factor,
                configs={"retention.ms": str(hours * _HOUR_MS), "cleanup.policy": "delete"},
            )
        )
    return specs
