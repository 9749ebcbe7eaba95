"""The project's topics as Faust topics (raw bytes: records are validated in ``monitor.records``)."""

from __future__ import annotations

import faust

from monitor.config import TopicSettings


def declare_topics(app: faust.App, topics: TopicSettings) -> dict[str, faust.TopicT]:
    """One Faust topic per stage; payloads stay bytes so a bad record can reach the dead-letter topic intact."""
    return {
        role: app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
        for role, name in topics.all().items()
    }
