"""posts.classified + posts.explained -> idempotent upserts -> signals.flagged."""

from __future__ import annotations

import asyncio

from monitor.pipeline import Case, Decision, decide_by_classifier, persist
from monitor.storage.session import transaction


def _write(resources, cases, decisions) -> dict[str, int]:  # noqa: ANN001
    with transaction(resources.factory) as session:
        return persist(session, cases, decisions, author_key=resources.author_key)


def register(app, topics, resources) -> None:  # noqa: ANN001 - faust objects
    batch_size, within = resources.settings.stream.persist_batch, resources.settings.stream.batch_seconds

    async def flagged(decisions) -> None:  # noqa: ANN001
        for d in decisions:
            if d.is_signal:
                await topics["signals"].send(key=d.case.post.id.encode(), value=d.model_dump_json().encode())

    @app.agent(topics["predictions"], name="persist-predictions")
    async def persist_predictions(stream):  # noqa: ANN001
        loop = asyncio.get_running_loop()
        async for values in stream.take(batch_size, within=within):
            cases, decisions = [], []
            for value in values:
                case = Case.model_validate_json(value)
                model = resources.models.get(case.prediction.task)
                if case.escalation is None and model is not None:
                    decisions.append(decide_by_classifier(case, model.task))
                else:  # the explainer decides; its Decision arrives on posts.explained
                    cases.append(case)
            await loop.run_in_executor(resources.executor, _write, resources, cases, decisions)
            await flagged(decisions)

    @app.agent(topics["explanations"], name="persist-explanations")
    async def persist_explanations(stream):  # noqa: ANN001
        loop = asyncio.get_running_loop()
        async for values in stream.take(batch_size, within=within):
            decisions = [Decision.model_validate_json(v) for v in values]
            await loop.run_in_executor(resources.executor, _write, resources, [], decisions)
            await flagged(decisions)
