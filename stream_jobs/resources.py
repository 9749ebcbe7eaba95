"""What a worker builds once at start: models, explainer, sessionmaker, policy, budget, a thread pool,
and the health reporter and fault plan its stages share."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from monitor import telemetry
from monitor.config import Settings
from monitor.drift import LabelWindow
from monitor.explainer.policy import ExplanationBudget, Policy
from monitor.faults import FaultPlan
from monitor.health import HealthReporter
from monitor.pipeline import TaskModel, load_task_models, policy_from_settings
from monitor.privacy import load_author_key

ROLES = ("classify", "explain", "persist")
T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass
class Resources:
    settings: Settings
    models: dict[str, TaskModel]
    explainer: Any
    factory: Any
    policy: Policy
    budget: ExplanationBudget | None
    author_key: bytes
    # Blocking work (torch, llama.cpp, the database) runs here, never on the event loop.
    executor: ThreadPoolExecutor
    health: HealthReporter
    faults: FaultPlan
    windows: dict[str, LabelWindow] = field(default_factory=dict)

    async def run(self, stage: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn`` in the thread pool, off the event loop; an error is counted (by stage) and raised."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, partial(fn, *args, **kwargs))
        except Exception as exc:
            telemetry.ERRORS.labels(stage, type(exc).__name__).inc()
            raise

    async def run_aside(self, stage: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Like ``run``, in the event loop's default pool: housekeeping (the lag, the watchdog) must
        not queue behind a stage's work, e.g. an explain worker whose threads all wait on the LLM."""
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except Exception as exc:
            telemetry.ERRORS.labels(stage, type(exc).__name__).inc()
            raise

    def runner(self, agent: str, stage: str, dead_letter: Any) -> Any:
        """The ``StageRunner`` that settles the batches of one agent (see ``stream_jobs.batches``)."""
        from stream_jobs.batches import StageRunner

        return StageRunner(stage, agent=agent, dead_letter=dead_letter,  # type: ignore[arg-type]
                           settings=self.settings.stream, health=self.health, faults=self.faults)

    @contextmanager
    def crash_guard(self, agent: str) -> Iterator[None]:
        """An error that escapes an agent is a bug: declare the process broken, so the supervisor
        restarts it and its unacknowledged batch is redelivered (Faust alone would restart the agent
        in this process, past the records it had taken)."""
        try:
            yield
        except Exception as exc:
            log.exception("agent %s crashed", agent)
            self.health.fail(f"agent {agent} crashed: {exc!r}"[:500])
            raise

    def observe_labels(self, cases: Sequence[Any]) -> None:
        """Feed the label-mix windows (drift gauges) with a batch of classified cases."""
        by_task: dict[str, list[tuple[str, float]]] = defaultdict(list)
        for case in cases:
            by_task[case.prediction.task].append((case.prediction.label, case.prediction.confidence))
        for task, predictions in by_task.items():
            window = self.windows.get(task)
            if window is None:
                labels = self.models[task].classifier.labels if task in self.models else ()
                window = self.windows[task] = LabelWindow(labels, size=self.settings.metrics.label_window)
            window.add(predictions)
            telemetry.record_label_mix(task, window.shares(), window.mean_confidence())


def build_resources(settings: Settings, roles: tuple[str, ...], *, health: HealthReporter | None = None) -> Resources:
    explainer = None
    if "explain" in roles:
        from monitor.explainer.llm import ExplainerPool, ExplanationCache
        from monitor.models import default_gguf_path

        cache = ExplanationCache(settings.data_dir / "explanations.sqlite") if settings.explainer.cache else None
        explainer = ExplainerPool.load(settings.explainer.model_path or default_gguf_path(), settings.explainer,
                                        cache=cache)
    models = load_task_models(list(settings.classifier.models), settings.classifier, explainer=explainer)
    if explainer is not None:  # the prompt prefixes now, not on the first escalations
        explainer.warm([m.task for m in models])
    factory = None
    if "persist" in roles:
        from monitor.storage import migrations
        from monitor.storage.session import create_db_engine, make_sessionmaker

        migrations.require_head(settings.database)
        factory = make_sessionmaker(create_db_engine(settings.database))
    for role in roles:
        telemetry.record_models(models, role)
    key = settings.privacy.author_key
    return Resources(
        settings=settings,
        models={m.task.name: m for m in models},
        explainer=explainer,
        factory=factory,
        policy=policy_from_settings(settings.explainer),
        budget=ExplanationBudget(settings.explainer.budget_per_s) if explainer is not None else None,
        author_key=load_author_key(key.get_secret_value() if key else None, settings.data_dir / "author.key"),
        executor=ThreadPoolExecutor(max_workers=max(2, settings.explainer.n_parallel + 1),
                                    thread_name_prefix="monitor-worker"),
        health=health or HealthReporter(None, "+".join(roles)),
        faults=FaultPlan(fail_batch_stage=settings.faults.fail_batch_stage,
                         fail_batch_number=settings.faults.fail_batch_number,
                         poison_stage=settings.faults.poison_stage, poison_marker=settings.faults.poison_marker),
    )
