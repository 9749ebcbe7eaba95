"""`deploy/local` brings the services up idempotently and down cleanly; data survives a restart."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from monitor.config import DatabaseSettings, Settings
from monitor.errors import StorageError
from monitor.services import local
from monitor.storage.session import create_db_engine, ping

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "local" / "services.sh"


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "COLUMNS": "200"})


def test_up_twice_is_harmless_and_status_answers(kafka, postgres_url):
    for _ in range(2):
        done = _script("up")
        assert done.returncode == 0, done.stderr
    assert "kafka: already running" in done.stdout
    assert "postgres: already running" in done.stdout
    status = _script("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.count("answers") == 2


@pytest.mark.slow
def test_postgres_down_then_up_keeps_its_data(settings: Settings, postgres_url: str):
    if not settings.services.manage_postgres:
        pytest.skip("PostgreSQL is external (MONITOR_SERVICES__MANAGE_POSTGRES=false): this test restarts it")
    libpq = postgres_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(libpq, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS restart_probe (v text)")
        conn.execute("INSERT INTO restart_probe VALUES ('kept')")

    down = _script("down", "postgres")
    assert down.returncode == 0 and "stopped" in down.stdout, down.stdout + down.stderr
    engine = create_db_engine(DatabaseSettings(url=postgres_url, pool_size=1))
    with pytest.raises(StorageError, match="does not answer"):
        ping(engine)
    assert not local.local_postgres(settings).running()

    up = _script("up", "postgres")
    assert up.returncode == 0 and "started" in up.stdout, up.stdout + up.stderr
    ping(engine)
    engine.dispose()
    with psycopg.connect(libpq, autocommit=True) as conn:
        assert conn.execute("SELECT v FROM restart_probe").fetchall() == [("kept",)]
        conn.execute("DROP TABLE restart_probe")


def test_cli_migrates_the_embedded_sqlite_default(tmp_path: Path):
    env = {**os.environ, "MONITOR_DATA_DIR": str(tmp_path)}
    monitor = [sys.executable, "-m", "monitor.cli"]
    for args, expected in ((["db", "upgrade"], "database at"), (["db", "current"], "up to date"),
                           (["db", "downgrade", "base"], "database at base"), (["db", "current"], "needs")):
        done = subprocess.run(monitor + args, capture_output=True, text=True, env={**env, "COLUMNS": "200"}, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert expected in done.stdout, done.stdout
    assert (tmp_path / "monitor.db").exists()


def test_services_up_console_serves_the_sign_in_page_and_down_stops_it(tmp_path: Path, monkeypatch):
    from typer.testing import CliRunner

    from monitor.cli import app as cli_app
    from monitor.services import process
    from monitor.storage import migrations

    port = process.free_port()
    url = f"sqlite:///{tmp_path / 'console.db'}"
    for name, value in (("MONITOR_DATA_DIR", str(tmp_path / "data")), ("MONITOR_DATABASE__URL", url),
                        ("MONITOR_CONSOLE__PORT", str(port)), ("COLUMNS", "200")):
        monkeypatch.setenv(name, value)
    runner = CliRunner()
    refused = runner.invoke(cli_app, ["services", "up", "console"])  # not migrated: it exits, saying why
    assert refused.exit_code != 0 and "the console exited" in str(refused.output) + str(refused.exception)

    migrations.upgrade(DatabaseSettings(url=url))
    target = local.local_console(Settings(_env_file=None))
    try:
        up = runner.invoke(cli_app, ["services", "up", "console"])
        assert up.exit_code == 0, up.output
        assert f"console: started (pid {target.pid()}) at http://127.0.0.1:{port}/" in up.output
        assert "already running" in runner.invoke(cli_app, ["services", "up", "console"]).output
        status, body = process.http_get(f"http://127.0.0.1:{port}/login")
        assert status == 200 and 'name="csrf_token"' in body and 'name="password"' in body
        shown = runner.invoke(cli_app, ["services", "status", "console"])
        assert shown.exit_code == 0 and "answers" in shown.output
        pid = target.pid()
        down = runner.invoke(cli_app, ["services", "down", "console"])
        assert down.exit_code == 0 and f"console: stopped (pid {pid})" in down.output
        assert target.pid() is None and process.http_get(f"http://127.0.0.1:{port}/livez") == (0, "")
        assert runner.invoke(cli_app, ["services", "status", "console"]).exit_code == 1
    finally:
        local.down(Settings(_env_file=None), ["console"])
