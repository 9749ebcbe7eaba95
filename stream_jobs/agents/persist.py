"""posts.classified + posts.explained -> idempotent upserts -> signals.flagged; periodic EARS detection."""

from __future__ import annotations

from datetime import UTC, datetime

from monitor.pipeline import Case, Decision, decide_by_classifier, write
from monitor.signals.detect import publish, run_detection
from monitor.storage.session import transaction


def _detect(resources):  # noqa: ANN001, ANN202
    with transaction(resources.factory) as session:
        return run_detection(session, resources.settings.signals, now=datetime.now(UTC))


def register(app, topics, resources) -> None:  # noqa: ANN001 - faust objects
    batch_size, within = resources.settings.stream.persist_batch, resources.settings.stream.batch_seconds

    async def store(cases, decisions) -> None:  # noqa: ANN001
        # An error stops the worker; a restart resumes from the last committed offset.
        await resources.run("persist", write, resources.factory, cases, decisions, author_key=resources.author_key)
        for d in decisions:
            if d.is_signal:
                await topics["signals"].send(key=d.case.post.id.encode(), value=d.model_dump_json().encode())

    @app.agent(topics["predictions"], name="persist-predictions")
    async def persist_predictions(stream):  # noqa: ANN001
        async for values in stream.take(batch_size, within=within):
            cases, decisions = [], []
            for value in values:
                case = Case.model_validate_json(value)
                model = resources.models.get(case.prediction.task)
                if case.escalation is None and model is not None:
                    decisions.append(decide_by_classifier(case, model.task))
                else:  # the explainer decides; its Decision arrives on posts.explained
                    cases.append(case)
            await store(cases, decisions)

    @app.agent(topics["explanations"], name="persist-explanations")
    async def persist_explanations(stream):  # noqa: ANN001
        async for values in stream.take(batch_size, within=within):
            await store([], [Decision.model_validate_json(v) for v in values])

    # Every persist worker may run it: alert rows are idempotent, the gauges are per series.
    @app.timer(interval=resources.settings.signals.detect_every_s)
    async def detect_spikes() -> None:
        try:
            report = await resources.run("detect", _detect, resources)
        except Exception:  # noqa: BLE001 - counted by run(); detection must never stop persisting
            app.log.exception("spike detection failed")
            return
        publish(report)
