from monitor.config import KafkaSettings, TopicSettings
from monitor.kafka.topology import topic_specs


def test_every_topic_has_explicit_partitions_and_retention():
    kafka = KafkaSettings(partitions=4, retention_hours=2, dead_letter_retention_hours=5)
    specs = {s.name: s for s in topic_specs(kafka, TopicSettings())}
    assert set(specs) == set(TopicSettings().all().values())
    positions = specs.pop("sources.positions")
    assert all(s.partitions == 4 and s.replication_factor == 1 for s in specs.values())
    assert specs["posts.incoming"].configs["retention.ms"] == str(2 * 3_600_000)
    # A source's position is kept for ever (the latest per source) and read whole at start: one partition.
    assert (positions.partitions, positions.configs["cleanup.policy"]) == (1, "compact")
    assert "retention.ms" not in positions.configs
    assert specs["posts.deadletter"].configs["retention.ms"] == str(5 * 3_600_000)
