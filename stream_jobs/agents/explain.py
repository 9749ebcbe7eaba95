"""posts.escalated -> explain (within the budget, bounded concurrency) -> posts.explained."""

from __future__ import annotations

from monitor import telemetry
from monitor.pipeline import Case, explain_case


def register(app, topics, resources) -> None:  # noqa: ANN001 - faust objects
    @app.agent(topics["escalations"], name="explain", concurrency=resources.settings.explainer.n_parallel)
    async def explain(stream):  # noqa: ANN001
        async for value in stream:
            case = Case.model_validate_json(value)
            model = resources.models.get(case.prediction.task)
            if model is None:  # a task this worker has no model for: another deployment's escalation
                continue
            telemetry.EXPLAINER_QUEUE.inc()
            try:  # an error stops the worker; a restart resumes from the last committed offset
                decision = await resources.run("explain", explain_case, case, model, resources.explainer,
                                               resources.budget, max_wait_s=resources.settings.explainer.max_wait_s)
            finally:
                telemetry.EXPLAINER_QUEUE.dec()
                telemetry.BUDGET_TOKENS.set(resources.budget.available() if resources.budget else 0)
            await topics["explanations"].send(key=case.post.id.encode(), value=decision.model_dump_json().encode())
