"""The analyst's console as a managed local service: ``monitor console`` in the background, its PID and log
under the services' state folder, "up" once its ``/livez`` answers.

The demo leaves it running like the broker, so its URL works after the demo returns; ``monitor services
down console`` stops it. It serves the settings it was started with (database, data folder, address),
passed on in its environment rather than read again from wherever the child happens to run.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from monitor.config import ConsoleSettings
from monitor.errors import ServiceError
from monitor.services import process

_WILDCARD = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104 - bind addresses, probed on loopback


def console_url(host: str, port: int) -> str:
    """Where a browser on this machine reaches a console bound to ``host``:``port``."""
    shown = _WILDCARD.get(host, host)
    return f"http://{'[' + shown + ']' if ':' in shown else shown}:{port}/"


class LocalConsole:
    """Start, stop and report on ``monitor console`` run in the background for this data folder."""

    def __init__(self, console: ConsoleSettings, *, data_dir: Path, database_url: str):
        self.console = console
        self.data_dir = data_dir
        self.database_url = database_url
        self.state_dir = data_dir / "services" / "console"
        self.pid_file = self.state_dir / "console.pid"
        self.log_file = self.state_dir / "console.log"
        self.url = console_url(console.host, console.port)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "monitor.cli", "console", "--host", self.console.host,
                "--port", str(self.console.port)]

    @property
    def marker(self) -> str:
        """What our process's command line holds: a recycled PID, or another console, is never signalled."""
        return f"monitor.cli console --host {self.console.host} --port {self.console.port}"

    def pid(self) -> int | None:
        pid = process.read_pid(self.pid_file)
        return pid if pid is not None and process.is_alive(pid, self.marker) else None

    def answers(self) -> bool:
        status, body = process.http_get(f"{self.url}livez", timeout_s=2.0)
        return status == 200 and body.strip() == "ok"

    def start(self) -> str:
        """Start the console unless ours already runs, and wait until it answers; return what was done."""
        if (pid := self.pid()) is not None:
            return f"already running (pid {pid}) at {self.url}"
        if self.answers():
            raise ServiceError(f"something else already serves a console at {self.url}: stop it, or set "
                               "MONITOR_CONSOLE__PORT to another port")
        env = {**os.environ, "MONITOR_DATA_DIR": str(self.data_dir), "MONITOR_DATABASE__URL": self.database_url,
               "MONITOR_CONSOLE__HOST": self.console.host, "MONITOR_CONSOLE__PORT": str(self.console.port)}
        self.state_dir.mkdir(parents=True, exist_ok=True)
        pid = process.spawn(self.command(), self.log_file, self.pid_file, env=env)

        def ready() -> bool:
            if self.pid() is None:
                tail = self.log_file.read_text(errors="replace").strip().splitlines()[-5:]
                raise ServiceError(f"the console exited; last log lines: {' | '.join(tail)} (log {self.log_file})")
            return self.answers()

        process.wait_until(ready, 60.0, f"the console at {self.url}")
        return f"started (pid {pid}) at {self.url}, log {self.log_file}"

    def stop(self) -> str:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return "not running"
        process.terminate(pid, self.marker, timeout_s=30)
        self.pid_file.unlink(missing_ok=True)
        return f"stopped (pid {pid})"

    def status(self) -> process.Status:
        pid = self.pid()
        return process.Status("console", pid is not None, pid, f"{self.url}, log {self.log_file}")
