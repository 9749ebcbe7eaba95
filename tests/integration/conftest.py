"""Real services for integration tests, started with the project's own service code.

Kafka and PostgreSQL are started if they are not running and stopped at the end only if this
session started them. Each test gets fresh topic names; the session gets a throw-away database.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from monitor.config import DatabaseSettings, KafkaSettings, Settings
from monitor.services import local

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


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
    """A broker that answers, with the project's topics created; the topics the session's tests create
    are deleted at the end, so a broker that serves many runs does not slow down with thousands of them
    (each restart loads every topic's log)."""
    managed = settings.services.manage_kafka
    started_here = managed and local.local_kafka(settings).pid() is None
    local.up(settings, ["kafka"])
    before = _topics(settings.kafka)
    yield settings.kafka
    _delete_topics(settings.kafka, _topics(settings.kafka) - before)
    if started_here:
        local.down(settings, ["kafka"])


def _topics(kafka: KafkaSettings) -> set[str]:
    from monitor.kafka.broker import admin_client

    with admin_client(kafka) as client:
        return set(client.list_topics())


def _delete_topics(kafka: KafkaSettings, names: set[str]) -> None:
    from kafka.errors import KafkaError

    from monitor.errors import BrokerError
    from monitor.kafka.broker import admin_client

    names = {n for n in names if not n.startswith("__")}
    try:
        with admin_client(kafka) as client:
            ordered = sorted(names)
            for i in range(0, len(ordered), 200):
                client.delete_topics(ordered[i:i + 200], timeout_ms=60_000)
    except (KafkaError, BrokerError) as exc:  # housekeeping only: say so, fail nothing
        print(f"could not delete the session's {len(names)} test topics: {exc}")


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


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A real fine-tune of the shipped MiniLM on a small slice of rmhd27, on CPU (well under 3 minutes),
    served as a stack with the lexical model, so every pipeline test runs both members."""
    from monitor.models import default_encoder_path
    from monitor.tasks import load_task
    from monitor.training.finetune import FineTuneConfig
    from monitor.training.recipe import BalanceOptions, DataOptions, train_model
    from monitor.training.wordnet import WordNetSynonyms

    data = SHARED / "rmhd27" / "rmhd27_dev.csv"
    assert data.exists(), f"the shared data is missing at {data}: CI runs with ../shared beside the clone"
    out = tmp_path_factory.mktemp("model") / "rmhd27-tiny"
    started = time.monotonic()
    card = train_model(
        load_task("rmhd27_social_anxiety"), "rmhd27_social_anxiety", data, out,
        data_options=DataOptions(seed=7, train_subsample=240),
        balance_options=BalanceOptions(copies=1),
        finetune_config=FineTuneConfig(model_path=default_encoder_path(), max_length=64, epochs=1, batch_size=16,
                                       eval_batch_size=128, device="cpu", seed=7),
        serve="stack", synonyms=WordNetSynonyms(),
    )
    # Sized to train in about a minute on 2 idle cores; speed is for benchmarks, so only reported here.
    print(f"tiny model trained in {time.monotonic() - started:.0f}s")
    assert card.metrics["test"]["n"] > 900
    return out


ECHO = Path(__file__).with_name("faust_echo.py")


class EchoWorker:
    """tests/integration/faust_echo.py as a worker process: what it echoed, read back from its topic."""

    def __init__(self, env: dict[str, str], log_path: Path):
        self.log_path = log_path
        with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen([sys.executable, str(ECHO), "worker", "-l", "warn"], env=env,
                                            stdout=log, stderr=subprocess.STDOUT, cwd=log_path.parent)

    def received(self, topic: str, count: int, *, bootstrap: str, timeout_s: float = 120,
                 **options: object) -> dict[bytes, bytes]:
        """Records of ``topic`` by key, until ``count`` keys arrived (or the time is up, or it died)."""
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                                 **options)
        received: dict[bytes, bytes] = {}
        deadline = time.monotonic() + timeout_s
        try:
            while len(received) < count and time.monotonic() < deadline and self.process.poll() is None:
                for records in consumer.poll(timeout_ms=500).values():
                    received.update((r.key, r.value) for r in records)
        finally:
            consumer.close()
        assert self.process.poll() is None, self.log_path.read_text()[-2000:]
        return received

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def echo_worker(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], EchoWorker]]:
    """Start echo workers with a given environment; each is stopped at teardown."""
    started: list[EchoWorker] = []

    def start(env: dict[str, str]) -> EchoWorker:
        started.append(EchoWorker(env, tmp_path / "worker.log"))
        return started[-1]

    yield start
    for worker in started:
        worker.stop()
