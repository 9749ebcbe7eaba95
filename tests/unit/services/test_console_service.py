"""The console as a managed service: where it keeps its PID and log, what it signals, and when it is shown."""

import sys

from monitor.config import Settings
from monitor.services import local, process
from monitor.services.console import LocalConsole, console_url


def _settings(tmp_path, **console) -> Settings:
    return Settings(_env_file=None, data_dir=tmp_path / "data", database={"url": f"sqlite:///{tmp_path}/m.db"},
                    console={"port": 18181, **console})


def test_a_console_bound_to_every_interface_is_reached_on_loopback():
    assert console_url("0.0.0.0", 8080) == "http://127.0.0.1:8080/"  # noqa: S104
    assert console_url("::", 8080) == "http://[::1]:8080/"
    assert console_url("127.0.0.1", 9000) == "http://127.0.0.1:9000/"


def test_state_lives_under_the_services_folder_and_the_command_carries_its_marker(tmp_path):
    target = local.local_console(_settings(tmp_path))
    assert target.pid_file == tmp_path / "data" / "services" / "console" / "console.pid"
    assert target.log_file.parent == target.pid_file.parent
    assert target.marker in " ".join(target.command())
    assert target.url == "http://127.0.0.1:18181/"
    assert target.database_url == f"sqlite:///{tmp_path}/m.db"


def test_stop_never_signals_a_process_that_is_not_this_console(tmp_path):
    target = local.local_console(_settings(tmp_path))
    script = tmp_path / "other.py"
    script.write_text("import time\nwhile True: time.sleep(0.1)\n")
    target.state_dir.mkdir(parents=True)
    other = process.spawn([sys.executable, str(script)], tmp_path / "other.log", target.pid_file)
    try:
        status = target.status()
        assert (status.running, status.pid) == (False, None)  # a PID that is not ours is no console
        assert target.stop() == "not running"
        assert process.is_alive(other, str(script)) and not target.pid_file.exists()
    finally:
        process.terminate(other, str(script), timeout_s=10)


def test_up_without_a_name_leaves_the_console_alone_and_status_shows_it_once_started(tmp_path):
    settings = _settings(tmp_path)
    assert "console" not in local.ALL and local.EVERY[0] == "console"  # down stops it before the database
    assert local.shown(settings) == local.ALL
    target = LocalConsole(settings.console, data_dir=settings.data_dir, database_url=settings.database.url)
    target.state_dir.mkdir(parents=True)
    target.pid_file.write_text("999999\n")
    assert local.shown(settings) == (*local.ALL, "console")
    (state, health), = local.status(settings, ["console"])
    assert (state.running, health) == (False, "does not answer")
    assert local.down(settings, ["console"])[0].message == "not running"
