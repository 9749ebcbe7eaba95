"""What a worker builds once at start: the ``Runtime`` of its roles (models, classifiers, explainer,
database, policy, budget), a thread pool, and the health reporter and fault plan its stages share."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from monitor import telemetry
from monitor.config import Settings
from monitor.drift import LabelWindow
from monitor.faults import FaultPlan
from monitor.health import HealthReporter
from monitor.runtime import ROLES, Runtime

if TYPE_CHECKING:
    from stream_jobs.batches import StageRunner

__all__ = ["ROLES", "Resources", "build_resources"]
T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass
class Resources:
    settings: Settings
    runtime: Runtime
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

    def runner(self, agent: str, stage: str, dead_letter: Any) -> StageRunner:
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
                model = self.runtime.models.get(task)
                labels = model.labels if model is not None else ()
                window = self.windows[task] = LabelWindow(labels, size=self.settings.metrics.label_window)
            window.add(predictions)
            telemetry.record_label_mix(task, window.shares(), window.mean_confidence())


def build_resources(settings: Settings, roles: tuple[str, ...], *, health: HealthReporter | None = None) -> Resources:
    runtime = Runtime.build(settings, roles)
    for role in roles:
        telemetry.record_models(runtime.task_models, role)
    return Resources(
        settings=settings,
        runtime=runtime,
        # One thread per reply the explainer can decode at once (contexts x sequences), and one more.
        executor=ThreadPoolExecutor(max_workers=max(2, settings.explainer.n_parallel * settings.explainer.sequences + 1),
                                    thread_name_prefix="monitor-worker"),
        health=health or HealthReporter(None, "+".join(roles)),
        faults=FaultPlan(fail_batch_stage=settings.faults.fail_batch_stage,
                         fail_batch_number=settings.faults.fail_batch_number,
                         poison_stage=settings.faults.poison_stage, poison_marker=settings.faults.poison_marker),
    )
