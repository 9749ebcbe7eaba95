"""Real services for integration tests, started with the project's own service code.

Kafka and PostgreSQL are started if they are not running and stopped at the end only if this
session started them. Each test gets fresh topic names; the session gets a throw-away database.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from monitor.config import DatabaseSettings, KafkaSettings, Settings
from monitor.services import local


def pytest_collection_modifyitems(items):
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings(_env_file=None)


@pytest.fixture(scope="session")
def kafka(settings: Settings) -> Iterator[KafkaSettings]:
    """A broker that answers, with the project's topics created."""
    managed = settings.services.manage_kafka
    started_here = managed and local.local_kafka(settings).pid() is None
    local.up(settings, ["kafka"])
    yield settings.kafka
    if started_here:
        local.down(settings, ["kafka"])


@pytest.fixture(scope="session")
def postgres_url(settings: Settings) -> Iterator[str]:
    """The URL of the local PostgreSQL's own database (role and database made by `services up`)."""
    started_here = settings.services.manage_postgres and not local.local_postgres(settings).running()
    local.up(settings, ["postgres"])
    yield settings.services.postgres_url.get_secret_value()
    if started_here:
        local.down(settings, ["postgres"])


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@pytest.fixture(scope="session")
def postgres_db(postgres_url: str) -> Iterator[DatabaseSettings]:
    """A throw-away database on the local PostgreSQL, dropped at the end of the session."""
    name = f"monitor_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq(postgres_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = postgres_url.rsplit("/", 1)[0]
    yield DatabaseSettings(url=f"{base}/{name}", pool_size=2)
    with psycopg.connect(_libpq(postgres_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def topic_name() -> str:
    return f"test.{uuid.uuid4().hex[:12]}"
