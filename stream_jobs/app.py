"""``create_app(settings)``: the Faust app a worker role runs; ``build_worker`` wires one role into it.

Commits and offsets are Kafka's (at-least-once, and a batch is acknowledged only once it has a
durable result: ``stream_jobs.batches``); exact results come from idempotent writes in
``monitor.storage.repository``, never from Faust table state. Each role is its own consumer group
(``<app_id>-<role>``), so roles scale independently: start more processes of the busy role.
"""

from __future__ import annotations

import time
from pathlib import Path

import faust

from monitor import memory, telemetry
from monitor.kafka.broker import group_positions
from monitor.config import Settings, parse_bootstrap
from monitor.faults import StallWatchdog
from monitor.health import HealthReporter
from stream_jobs.security import broker_credentials


#: The topics each role consumes (fields of ``TopicSettings``): its consumer lag is measured on these.
ROLE_INPUTS = {"classify": ("posts",), "explain": ("escalations",),
               "persist": ("predictions", "explanations", "erasures")}


def broker_urls(settings: Settings) -> list[str]:
    return [f"kafka://{host}:{port}" for host, port in parse_bootstrap(settings.kafka.bootstrap_servers)]


def create_app(settings: Settings, *, app_id: str = "health-monitor", **overrides: object) -> faust.App:
    """A Faust app bound to the configured broker, with the project's topic defaults."""
    datadir = Path(settings.data_dir) / "faust" / app_id
    datadir.parent.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    options: dict[str, object] = {
        "broker": broker_urls(settings),
        "broker_client_id": settings.kafka.client_id,
        "broker_credentials": broker_credentials(settings.kafka),  # None = PLAINTEXT, Faust's default
        "store": "memory://",
        "datadir": str(datadir),
        "topic_partitions": settings.kafka.partitions,
        "topic_replication_factor": settings.kafka.replication_factor,
        # The leader-election topic is only needed for Faust's own assignor tricks; skip one topic.
        "topic_disable_leader": True,
        "consumer_auto_offset_reset": "earliest",
        # A batch is acknowledged only once it has its result (stream_jobs.batches). At shutdown an
        # unfinished batch stays unacknowledged and is redelivered: Faust must not wait for it.
        "stream_wait_empty": False,
        "producer_acks": -1,
        # A killed worker's partitions wait this long before anyone (its restart too) may take them.
        # Heartbeats go every 3 s from the event loop, which never blocks (work runs in threads).
        "broker_session_timeout": settings.stream.session_timeout_s,
        # Metrics are served by prometheus-client (telemetry), not by Faust's web server.
        "web_enabled": False,
    }
    options.update(overrides)
    return faust.App(app_id, **options)


def build_worker(settings: Settings, role: str, *, health: HealthReporter | None = None) -> faust.App:
    """The app of one role, its topics declared and its agents registered, resources built once.

    ``health`` is told when the agents run, beats every ``supervisor.heartbeat_s`` from the event
    loop (a loop that stops beating is stuck), and is failed by the progress watchdog.
    """
    from stream_jobs.agents import classify, explain, persist
    from stream_jobs.resources import build_resources
    from stream_jobs.topics import declare_topics

    health = health or HealthReporter(None, role)
    group = f"{settings.stream.app_id}-{role}"  # Faust's consumer group is its app id
    app = create_app(settings, app_id=group)
    resources = build_resources(settings, (role,), health=health)
    topics = declare_topics(app, settings.topics)
    {"classify": classify, "explain": explain, "persist": persist}[role].register(app, topics, resources)
    watched = [getattr(settings.topics, name) for name in ROLE_INPUTS[role]]
    watchdog = StallWatchdog(settings.stream.stall_after_s)

    @app.task
    async def started() -> None:  # runs once the app (consumer, agents) has started
        health.mark_started()
        health.beat()

    @app.timer(interval=settings.supervisor.heartbeat_s)
    async def heartbeat() -> None:
        health.beat()

    if settings.supervisor.memory_trim_s > 0:
        @app.timer(interval=settings.supervisor.memory_trim_s)
        async def tidy_heap() -> None:  # bursts (a backlog, a redelivery) leave free pages resident
            try:
                await resources.run_aside("memory", memory.trim)
            except Exception:  # noqa: BLE001 - counted by run_aside; housekeeping never stops the worker
                return
            if (stats := memory.heap_stats()) is not None:
                telemetry.HEAP_BYTES.labels(role, "in_use").set(stats.in_use)
                telemetry.HEAP_BYTES.labels(role, "free").set(stats.free)

    @app.timer(interval=settings.metrics.lag_interval_s)
    async def measure_lag() -> None:
        try:
            positions = await resources.run_aside("lag", group_positions, settings.kafka, group, watched)
        except Exception:  # noqa: BLE001 - counted by run(); a measurement never stops the worker
            return  # the gauges keep their last values
        for (topic, partition), (committed, end) in positions.items():
            telemetry.CONSUMER_LAG.labels(group, topic, str(partition)).set(max(0, end - committed))
        stalled = watchdog.observe(positions, now=time.monotonic(), waiting=bool(health.state().blocks))
        if stalled:
            app.log.error("no progress on %s: declaring the %s worker broken", "; ".join(stalled), role)
            health.fail(f"stalled: {'; '.join(stalled)}"[:500])

    return app
