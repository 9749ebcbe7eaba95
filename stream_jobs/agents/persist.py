"""posts.classified + posts.explained -> idempotent upserts -> signals.flagged; posts.erasures -> deletes and
tombstones; periodic EARS detection."""

from __future__ import annotations

from datetime import UTC, datetime

from monitor import telemetry
from monitor.cases import Decision, decode_classified
from monitor.pipeline import decide_by_classifier, write
from monitor.records import Erasure
from monitor.signals.detect import publish, run_detection
from monitor.storage.erasures import erase
from monitor.storage.session import transaction
from stream_jobs.batches import deliver


def _erase(factory, records, author_key):  # noqa: ANN001, ANN202
    with transaction(factory) as session:
        return erase(session, records, author_key=author_key)


def _detect(resources):  # noqa: ANN001, ANN202
    with transaction(resources.runtime.factory) as session:
        return run_detection(session, resources.settings.signals, now=datetime.now(UTC))


def register(app, topics, resources) -> None:  # noqa: ANN001 - faust objects
    settings, runtime = resources.settings, resources.runtime
    batch_size, within = settings.stream.persist_batch, settings.stream.batch_seconds
    signal_labels = runtime.signal_labels()

    async def store(cases, decisions) -> None:  # noqa: ANN001
        """One transaction; then the signals and any escalation to redo, waited for before the ack."""
        done = await resources.run("persist", write, runtime.factory, cases, decisions,
                                   author_key=runtime.author_key, signal_labels=signal_labels)
        if done.conflicts:
            telemetry.REDELIVERY_CONFLICTS.labels("persist").inc(done.conflicts)
        sends = [topics["signals"].send(key=d.case.post.id.encode(), value=d.model_dump_json().encode(), force=True)
                 for d in decisions
                 if (d.case.post.source, d.case.post.id, d.case.prediction.task, d.final_label) in done.flagged]
        sends += [topics["escalations"].send(key=c.post.id.encode(), value=c.model_dump_json().encode(), force=True)
                  for c in done.orphans]
        await deliver(sends, timeout_s=settings.stream.send_timeout_s)

    async def handle_predictions(events) -> None:  # noqa: ANN001
        cases, decisions = [], []
        for event in events:
            record = decode_classified(event.message.value or b"")  # a ValidationError is poison
            if isinstance(record, Decision):  # decided by the classifier
                decisions.append(record)
                continue
            model = runtime.models.get(record.prediction.task)
            if record.escalation is None and model is not None:  # from a classify worker of an older release
                decisions.append(decide_by_classifier(record, model.task))
            else:  # the explainer decides; its Decision arrives on posts.explained
                cases.append(record)
        await store(cases, decisions)

    async def handle_explanations(events) -> None:  # noqa: ANN001
        await store([], [Decision.model_validate_json(event.message.value or b"") for event in events])

    async def handle_erasures(events) -> None:  # noqa: ANN001
        """Deletions from the platforms and from `monitor privacy erase`; a ValidationError is poison."""
        records = [Erasure.model_validate_json(event.message.value or b"") for event in events]
        done = await resources.run("persist", _erase, runtime.factory, records, runtime.author_key)
        for (origin, outcome), n in done.outcomes.items():
            telemetry.ERASURES.labels(origin, outcome).inc(n)
        telemetry.ERASED_POSTS.labels("removed").inc(done.posts)

    for name, handle in (("predictions", handle_predictions), ("explanations", handle_explanations),
                         ("erasures", handle_erasures)):
        _register_persist(app, topics, resources, name, handle, batch_size, within)

    # Every persist worker may run it: alert rows are idempotent, the gauges are per series.
    @app.timer(interval=settings.signals.detect_every_s)
    async def detect_spikes() -> None:
        try:
            report = await resources.run("detect", _detect, resources)
        except Exception:  # noqa: BLE001 - counted by run(); detection must never stop persisting
            app.log.exception("spike detection failed")
            return
        publish(report)


def _register_persist(app, topics, resources, name, handle, batch_size, within) -> None:  # noqa: ANN001, PLR0913
    runner = resources.runner(f"persist-{name}", "persist", topics["dead_letter"])

    @app.agent(topics[name], name=f"persist-{name}")
    async def persist(stream):  # noqa: ANN001
        with resources.crash_guard(f"persist-{name}"):
            async for events in stream.noack_take(batch_size, within=within):
                await runner.settle(stream, events, handle)
