"""The broker side of a source: posts, erasures and dead letters through one idempotent producer, each
call returning only once the broker acknowledged every record (``acks=all``), or raising ``BrokerError``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from monitor.config import KafkaSettings, TopicSettings
from monitor.errors import BrokerError, PartlySent
from monitor.records import DeadLetter
from monitor.sources.events import SourceEvent
from monitor.sources.positions import Position

#: How long one call waits for the broker's acknowledgements before it counts as failed.
ACK_TIMEOUT_S = 65.0


class BrokerSink:
    """One producer for a source process; ``send`` and ``store`` block (run them off the event loop)."""

    def __init__(self, kafka: KafkaSettings, topics: TopicSettings) -> None:
        from monitor.kafka.producer import Compression, open_producer

        self.topics = topics
        self._producer = open_producer(kafka, Compression.none)

    def send(self, events: Sequence[SourceEvent]) -> dict[str, int]:
        """Send what ``events`` hold (posts, erasures, dead letters); counts by kind once all are acknowledged.

        If the producer refuses a record part-way (no metadata: the broker went away), the records it
        already took are still waited for; when the broker acknowledges them, ``PartlySent`` says how many
        events are done, so a retry sends only the rest instead of sending those twice.
        """
        from monitor.feed import timestamp_ms

        futures: list[Any] = []
        counts = {"post": 0, "erase": 0, "bad": 0}
        now = datetime.now(UTC)
        for done, event in enumerate(events):
            try:
                if event.kind == "post" and event.post is not None and event.value is not None:
                    futures.append(self._send(self.topics.posts, event.key, event.value,
                                              timestamp_ms(event.post.created_at)))
                elif event.kind == "erase" and event.erasure is not None:
                    futures.append(self._send(self.topics.erasures, event.key,
                                              event.erasure.model_dump_json().encode(), timestamp_ms(event.erasure.time)))
                elif event.kind == "bad":
                    letter = DeadLetter.of(event.raw, reason=event.what, message=event.message, stage="source",
                                           time=now)
                    futures.append(self._send(self.topics.dead_letter, None, letter.to_bytes(), None))
                else:
                    continue
            except BrokerError as exc:
                if not futures:
                    raise
                self._wait(futures)  # raises if these are not acknowledged either: then all are retried
                raise PartlySent(str(exc), done=done, counts=counts) from exc
            counts[event.kind] += 1
        self._wait(futures)
        return counts

    def store(self, positions: Sequence[Position]) -> None:
        """Write positions (after ``send`` acknowledged everything they cover)."""
        self._wait([self._send(self.topics.positions, p.source.encode("utf-8"), p.to_bytes(), None)
                    for p in positions])

    def forget(self, source: str) -> None:
        """A tombstone for a source's position: it starts from the live stream next time."""
        self._wait([self._send(self.topics.positions, source.encode("utf-8"), None, None)])

    def close(self) -> None:
        self._producer.close(timeout=5)

    def _send(self, topic: str, key: bytes | None, value: bytes | None, timestamp: int | None) -> Any:
        from kafka.errors import KafkaError

        try:
            return self._producer.send(topic, key=key, value=value, timestamp_ms=timestamp)
        except KafkaError as exc:  # no metadata within max_block_ms: the broker is away
            raise BrokerError(f"Kafka did not take a send to {topic!r}: {exc}") from exc

    def _wait(self, futures: list[Any]) -> None:
        from kafka.errors import KafkaError

        deadline = time.monotonic() + ACK_TIMEOUT_S
        try:
            self._producer.flush(timeout=ACK_TIMEOUT_S)
            for future in futures:
                future.get(timeout=max(0.1, deadline - time.monotonic()))
        except KafkaError as exc:
            raise BrokerError(f"Kafka did not acknowledge a source's records: {exc}") from exc
