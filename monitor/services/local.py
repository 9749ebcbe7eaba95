"""``monitor services up|down|status``: the local services, their health checks and topics.

This is where the service processes meet the Kafka and database adapters: a service is "up"
only when it answers (broker metadata, ``SELECT 1``), not when its process exists.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from monitor.kafka import broker
from monitor.config import DatabaseSettings, Settings
from monitor.errors import MonitorError
from monitor.services import process
from monitor.services.console import LocalConsole
from monitor.services.kafka import LocalKafka
from monitor.services.postgres import LocalPostgres
from monitor.storage.session import create_db_engine, ping
from monitor.kafka.topology import topic_specs

Service = Literal["kafka", "postgres", "console"]
#: What ``monitor services up`` starts without an argument; the console only when asked (or by the demo).
ALL: tuple[Service, ...] = ("kafka", "postgres")
#: What ``down`` stops and ``status`` shows without an argument: the console too, once it has been started.
EVERY: tuple[Service, ...] = ("console", "kafka", "postgres")


@dataclass(frozen=True)
class Outcome:
    service: str
    message: str


def local_kafka(settings: Settings) -> LocalKafka:
    return LocalKafka(settings.services, settings.kafka, data_dir=settings.data_dir, cache_dir=settings.cache_dir)


def local_postgres(settings: Settings) -> LocalPostgres:
    return LocalPostgres(settings.services, data_dir=settings.data_dir)


def local_console(settings: Settings) -> LocalConsole:
    return LocalConsole(settings.console, data_dir=settings.data_dir, database_url=settings.database.url)


def _postgres_answers(settings: Settings) -> None:
    engine = create_db_engine(DatabaseSettings(url=settings.services.postgres_url.get_secret_value(), pool_size=1))
    try:
        ping(engine)
    finally:
        engine.dispose()


def shown(settings: Settings) -> tuple[Service, ...]:
    """What ``status`` reports without an argument: Kafka, PostgreSQL, and the console once it was started
    (a console never started is no failure)."""
    return (*ALL, "console") if local_console(settings).pid_file.exists() else ALL


def _quick(settings: Settings):
    """Kafka settings with a short timeout, for probes that are retried or only report."""
    return settings.kafka.model_copy(update={"request_timeout_s": 5.0})


def up(settings: Settings, services: Iterable[Service] = ALL) -> list[Outcome]:
    """Start what is managed and not running, wait until each answers, create the topics."""
    outcomes = []
    for service in services:
        if service == "console":
            outcomes.append(Outcome(service, local_console(settings).start()))
            continue
        if service == "kafka":
            probe = lambda: broker.describe_cluster(_quick(settings))  # noqa: E731
            if settings.services.manage_kafka:
                message = local_kafka(settings).ensure_started(probe)
            else:
                probe()
                message = f"using the broker at {settings.kafka.bootstrap_servers} (not managed)"
            created = [t.name for t in broker.ensure_topics(settings.kafka, topic_specs(settings.kafka, settings.topics)) if t.created]
            if created:
                message += f"; created topics {', '.join(created)}"
        else:
            if settings.services.manage_postgres:
                pg = local_postgres(settings)
                message = pg.start()
                process.wait_until(lambda: _postgres_answers(settings) or True, settings.services.start_timeout_s,
                                   f"PostgreSQL on 127.0.0.1:{pg.port}")
            else:
                _postgres_answers(settings)
                message = "using the configured server (not managed)"
        outcomes.append(Outcome(service, message))
    return outcomes


def down(settings: Settings, services: Iterable[Service] = ALL) -> list[Outcome]:
    """Stop the services this project started; anything else is left alone."""
    outcomes = []
    for service in services:
        if service == "console":
            outcomes.append(Outcome(service, local_console(settings).stop()))
            continue
        managed = settings.services.manage_kafka if service == "kafka" else settings.services.manage_postgres
        if not managed:
            outcomes.append(Outcome(service, "not managed here; left running"))
            continue
        target = local_kafka(settings) if service == "kafka" else local_postgres(settings)
        outcomes.append(Outcome(service, target.stop()))
    return outcomes


def status(settings: Settings, services: Iterable[Service] = ALL) -> list[tuple[process.Status, str]]:
    """Each service's process state and whether it answers."""
    rows = []
    for service in services:
        if service == "console":
            target = local_console(settings)
            rows.append((target.status(), "answers" if target.answers() else "does not answer"))
            continue
        if service == "kafka":
            state = (local_kafka(settings).status() if settings.services.manage_kafka
                     else process.Status("kafka", False, None, f"external {settings.kafka.bootstrap_servers}"))
            check = lambda: broker.describe_cluster(_quick(settings))  # noqa: E731
        else:
            state = (local_postgres(settings).status() if settings.services.manage_postgres
                     else process.Status("postgres", False, None, "external server"))
            check = lambda: _postgres_answers(settings)  # noqa: E731
        try:
            check()
            health = "answers"
        except MonitorError as exc:
            health = f"does not answer ({exc})"
        rows.append((state, health))
    return rows
