"""posts.incoming -> decode (bad records to the dead-letter topic) -> classify -> predictions (+ escalations)."""

from __future__ import annotations

from datetime import UTC, datetime

from monitor import telemetry
from monitor.pipeline import classify_batch
from monitor.records import DeadLetter, RecordError, decode_post


def register(app, topics, resources) -> None:  # noqa: ANN001 - faust objects
    batch_size, within = resources.settings.classifier.batch_size, resources.settings.stream.batch_seconds

    @app.agent(topics["posts"], name="classify")
    async def classify(stream):  # noqa: ANN001
        async for events in stream.take_events(batch_size, within=within):
            telemetry.POSTS_CONSUMED.inc(len(events))
            posts, arrived = [], []
            for event in events:
                message = event.message
                raw = message.value or b""  # a tombstone or empty value is a bad record too
                received = datetime.fromtimestamp(message.timestamp, UTC)
                try:
                    posts.append(decode_post(raw, fallback_time=received))
                    arrived.append(received)
                except RecordError as exc:
                    letter = DeadLetter.from_error(exc, raw=raw, stage="decode", key=message.key, topic=message.topic,
                                                   partition=message.partition, offset=message.offset)
                    await topics["dead_letter"].send(key=message.key, value=letter.to_bytes())
                    telemetry.DEAD_LETTERS.labels("decode", exc.reason).inc()
            if not posts:
                continue
            # An error stops the worker; a restart resumes from the last committed offset.
            cases = await resources.run("classify", classify_batch, posts, list(resources.models.values()),
                                        resources.policy, received_at=arrived)
            resources.observe_labels(cases)
            for case in cases:
                key, value = case.post.id.encode(), case.model_dump_json().encode()
                await topics["predictions"].send(key=key, value=value)
                if case.escalation is not None:
                    await topics["escalations"].send(key=key, value=value)
