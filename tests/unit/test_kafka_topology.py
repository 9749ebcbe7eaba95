from monitor.config import KafkaSettings, TopicSettings
from monitor.kafka.topology import topic_specs


def test_every_topic_has_explicit_partitions_and_retention():
    kafka = KafkaSettings(partitions=4, retention_hours=2, dead_letter_retention_hours=5)
    specs = {s.name: s for s in topic_specs(kafka, TopicSettings())}
    assert set(specs) == set(TopicSettings().all().values())
    assert all(s.partitions == 4 and s.replication_factor == 1 for s in specs.values())
    assert specs["posts.incoming"].configs["retention.ms"] == str(2 * 3_600_000)
    assert specs["posts.deadletter"].configs["retention.ms"] == str(5 * 3_600_000)
