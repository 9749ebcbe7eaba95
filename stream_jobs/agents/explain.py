"""posts.escalated -> explain (within the budget, up to SEQUENCES posts per llama.cpp context at a time) -> posts.explained.

The budget is charged where cases are classified; only a case that comes unadmitted (a redelivered
orphan) is charged here, and one that came over budget is passed on unexplained."""

from __future__ import annotations

import asyncio
import logging

from monitor import telemetry
from monitor.cases import Case, Decision
from monitor.pipeline import explain_case
from stream_jobs.batches import deliver, position

log = logging.getLogger(__name__)


def register(app, topics, resources) -> None:  # noqa: ANN001 - faust objects
    settings, runtime = resources.settings, resources.runtime
    runner = resources.runner("explain", "explain", topics["dead_letter"])
    if runtime.explainer is not None and settings.stream.explain_batch < runtime.explainer.parallel:
        log.warning("MONITOR_STREAM__EXPLAIN_BATCH=%d is below the %d replies the explainer decodes at once "
                    "(N_PARALLEL x SEQUENCES): some of them will stay idle", settings.stream.explain_batch,
                    runtime.explainer.parallel)
    # Decisions already made for a batch, kept across its retries: an escalation is explained (and
    # charged to the budget) once, and a retry sends the same verdict.
    decided: dict[tuple[int, int], Decision | None] = {}

    async def decide(event) -> Decision | None:  # noqa: ANN001
        case = Case.model_validate_json(event.message.value or b"")  # a ValidationError is poison
        model = runtime.models.get(case.prediction.task)
        if model is None:  # a task this worker has no model for: another deployment's escalation
            return None
        telemetry.EXPLAINER_QUEUE.inc()
        try:
            return await resources.run("explain", explain_case, case, model, runtime.explainer, runtime.budget,
                                       max_wait_s=settings.explainer.max_wait_s)
        finally:
            telemetry.EXPLAINER_QUEUE.dec()

    async def handle(events) -> None:  # noqa: ANN001
        fresh = [e for e in events if position(e) not in decided]
        # As many at once as the pool decodes replies (contexts x sequences; the executor has one thread more).
        results = await asyncio.gather(*(decide(e) for e in fresh), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        for event, result in zip(fresh, results, strict=True):
            if not isinstance(result, BaseException):
                decided[position(event)] = result
        if errors:
            raise errors[0]
        sends = [topics["explanations"].send(key=d.case.post.id.encode(), value=d.model_dump_json().encode(),
                                             force=True)
                 for e in events if (d := decided[position(e)]) is not None]
        await deliver(sends, timeout_s=settings.stream.send_timeout_s)

    @app.agent(topics["escalations"], name="explain")
    async def explain(stream):  # noqa: ANN001
        with resources.crash_guard("explain"):
            async for events in stream.noack_take(settings.stream.explain_batch, within=settings.stream.batch_seconds):
                try:
                    await runner.settle(stream, events, handle)
                finally:
                    for event in events:
                        decided.pop(position(event), None)

