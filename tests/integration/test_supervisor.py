"""`monitor worker --role all` keeps its roles running: a role process killed with SIGKILL is restarted
by the supervisor, /readyz says so while it happens, and the restart is counted on /metrics.

Real broker, real database, real model; the supervisor and its three role processes as in production.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from monitor import broker, telemetry
from monitor.config import DatabaseSettings, KafkaSettings, TopicSettings
from monitor.services import process
from monitor.services.process import http_get as _get
from monitor.storage import migrations
from monitor.topology import topic_specs


@pytest.fixture
def supervised_env(kafka: KafkaSettings, postgres_db: DatabaseSettings, tiny_model: Path, tmp_path: Path):
    tag = uuid.uuid4().hex[:8]
    topics = TopicSettings(**{role: f"t{tag}.{role}" for role in TopicSettings().all()})
    broker.ensure_topics(kafka, topic_specs(kafka.model_copy(update={"partitions": 2}), topics))
    migrations.upgrade(postgres_db)
    port = process.free_port()
    env = {**os.environ, "MONITOR_DATA_DIR": str(tmp_path), "MONITOR_DATABASE__URL": postgres_db.url,
           "MONITOR_CLASSIFIER__MODELS": json.dumps([str(tiny_model)]), "MONITOR_CLASSIFIER__DEVICE": "cpu",
           "MONITOR_STREAM__APP_ID": f"test-{tag}", "MONITOR_EXPLAINER__N_THREADS": "1",
           "MONITOR_METRICS__PORT": str(port),
           # Quick restarts; a heartbeat timeout generous enough for 2 busy cores loading three roles.
           "MONITOR_SUPERVISOR__RESTART_BACKOFF_S": "0.5", "MONITOR_SUPERVISOR__RESTART_BACKOFF_CAP_S": "2",
           "MONITOR_SUPERVISOR__STABLE_AFTER_S": "30", "MONITOR_SUPERVISOR__HEARTBEAT_S": "1",
           "MONITOR_SUPERVISOR__HEARTBEAT_TIMEOUT_S": "60", "MONITOR_SUPERVISOR__STARTUP_GRACE_S": "300",
           **{f"MONITOR_TOPICS__{role.upper()}": name for role, name in topics.all().items()}}
    return env, f"http://127.0.0.1:{port}"


def _restarts(base: str, role: str) -> float:
    return telemetry.sample_sum(_get(f"{base}/metrics")[1], "monitor_worker_restarts_total", role=role)


@pytest.mark.slow
def test_a_role_killed_with_sigkill_is_restarted_and_ready_again(supervised_env, tmp_path):
    env, base = supervised_env
    log_path = tmp_path / "workers.log"
    with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
        workers = subprocess.Popen([sys.executable, "-m", "monitor.cli", "worker", "--role", "all"], env=env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def readyz() -> tuple[int, dict]:
        assert workers.poll() is None, log_path.read_text()[-3000:]
        try:
            status, body = _get(f"{base}/readyz")
        except OSError:  # not listening yet
            return 0, {}
        return status, json.loads(body)

    def wait_ready(timeout_s: float) -> dict:
        deadline, body = time.monotonic() + timeout_s, {}
        while time.monotonic() < deadline:
            status, body = readyz()
            if status == 200:
                return body
            time.sleep(0.5)
        pytest.fail(f"/readyz not 200 within {timeout_s:.0f}s: {body}\n{log_path.read_text()[-3000:]}")

    try:
        body = wait_ready(240)  # three roles load on 2 cores: the classifier and llama.cpp take a while
        assert {role: health["status"] for role, health in body["roles"].items()} == {
            "classify": "ready", "explain": "ready", "persist": "ready"}
        assert _get(f"{base}/livez")[0] == 200
        assert _restarts(base, "persist") == 0
        victim = body["roles"]["persist"]["pid"]

        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while (status := readyz())[0] == 200:
            assert time.monotonic() < deadline, "/readyz stayed 200 after the persist process was killed"
            time.sleep(0.1)
        assert status[0] == 503 and status[1]["roles"]["persist"]["status"] != "ready"

        body = wait_ready(120)  # by itself: nobody but the supervisor restarts it
        assert body["roles"]["persist"]["pid"] not in (None, victim)
        assert _restarts(base, "persist") == 1
        assert _restarts(base, "classify") == _restarts(base, "explain") == 0
        log = log_path.read_text()
        assert "persist worker killed by SIGKILL; restarting in" in log and "(crash 1 in a row)" in log
    finally:
        process.stop_group(workers, timeout_s=90)
    assert workers.returncode == 0, log_path.read_text()[-3000:]
