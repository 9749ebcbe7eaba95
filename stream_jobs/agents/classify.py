"""posts.incoming -> decode (bad records to the dead-letter topic) -> classify -> a decision per case on
posts.classified; an escalated case goes to posts.escalated too (its decision comes from the explainer)."""

from __future__ import annotations

from datetime import UTC, datetime

from monitor import telemetry
from monitor.cases import Case
from monitor.pipeline import classify_batch, decide_by_classifier
from monitor.records import DeadLetter, RecordError, decode_post
from stream_jobs.batches import deliver, position


def register(app, topics, resources) -> None:  # noqa: ANN001 - faust objects
    batch_size, within = resources.settings.classifier.batch_size, resources.settings.stream.batch_seconds
    runtime = resources.runtime
    runner = resources.runner("classify", "classify", topics["dead_letter"])
    # What a batch's records became, kept across its retries: a retry sends the same decisions
    # (the classifier is not asked twice, and its numbers cannot drift between tries).
    outcomes: dict[tuple[int, int], list[Case] | DeadLetter] = {}

    async def handle(events) -> None:  # noqa: ANN001
        fresh = [e for e in events if position(e) not in outcomes]
        posts, owners = [], []
        for event in fresh:
            message = event.message
            raw = message.value or b""  # a tombstone or empty value is a bad record too
            received = datetime.fromtimestamp(message.timestamp, UTC)
            try:
                posts.append(decode_post(raw, fallback_time=received))
                owners.append((event, received))
            except RecordError as exc:
                outcomes[position(event)] = DeadLetter.from_error(
                    exc, raw=raw, stage="decode", key=message.key, topic=message.topic,
                    partition=message.partition, offset=message.offset)
        if posts:
            cases = await resources.run("classify", classify_batch, posts, runtime.task_models, runtime.classifiers,
                                        runtime.policy, received_at=[when for _, when in owners],
                                        budget=runtime.budget)
            telemetry.BUDGET_TOKENS.set(runtime.budget.available() if runtime.budget else 0)
            resources.observe_labels(cases)
            per_post = len(runtime.models)
            for i, (event, _) in enumerate(owners):  # classify_batch returns the posts' cases task by task
                outcomes[position(event)] = [cases[t * len(posts) + i] for t in range(per_post)]
        sends = []
        for event in events:
            outcome = outcomes[position(event)]
            if isinstance(outcome, DeadLetter):
                sends.append(topics["dead_letter"].send(key=event.message.key, value=outcome.to_bytes(), force=True))
                continue
            for case in outcome:
                key, value = case.post.id.encode(), case.model_dump_json().encode()
                if case.escalation is None:  # decided here: persist needs no model to store it
                    decided = decide_by_classifier(case, runtime.models[case.prediction.task].task)
                    sends.append(topics["predictions"].send(key=key, value=decided.model_dump_json().encode(),
                                                            force=True))
                    continue
                sends.append(topics["predictions"].send(key=key, value=value, force=True))
                sends.append(topics["escalations"].send(key=key, value=value, force=True))
        await deliver(sends, timeout_s=resources.settings.stream.send_timeout_s)

    @app.agent(topics["posts"], name="classify")
    async def classify(stream):  # noqa: ANN001
        with resources.crash_guard("classify"):
            async for events in stream.noack_take(batch_size, within=within):
                telemetry.POSTS_CONSUMED.inc(len(events))
                try:
                    await runner.settle(stream, events, handle)
                    for event in events:
                        if isinstance(outcome := outcomes.get(position(event)), DeadLetter):
                            telemetry.DEAD_LETTERS.labels("decode", outcome.reason).inc()
                finally:
                    for event in events:
                        outcomes.pop(position(event), None)

