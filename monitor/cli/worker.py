"""``monitor worker --role classify|explain|persist|all``: start stream workers (Faust, over Kafka).

Each role runs as its own process (``python -m stream_jobs --role R``) and its own consumer group,
so roles scale independently: start more of the busy role, here or on other machines. ``all``
starts one process per role and stops them together.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from enum import Enum

import typer
from rich.console import Console

console = Console()
ROLES = ("classify", "explain", "persist")


class Role(str, Enum):
    classify = "classify"
    explain = "explain"
    persist = "persist"
    all = "all"


def worker(
    role: Role = typer.Option(Role.all, help="Which role to run (all = one process per role)"),
    loglevel: str = typer.Option("warn", help="Faust log level: crit, error, warn, info, debug"),
) -> None:
    """Run stream workers until interrupted; a crashed role process stops the others with its exit code."""
    roles = ROLES if role is Role.all else (role.value,)
    children = {
        r: subprocess.Popen([sys.executable, "-m", "stream_jobs", "--role", r, "--loglevel", loglevel])  # noqa: S603
        for r in roles
    }
    console.print(f"workers: {', '.join(f'{r} (pid {p.pid})' for r, p in children.items())}")

    def stop(*_args: object) -> None:
        for process in children.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = 0
    try:
        while children:
            for name, process in list(children.items()):
                status = process.poll()
                if status is not None:
                    del children[name]
                    if status != 0:
                        console.print(f"[red]{name} worker exited with {status}[/]")
                        code = code or status
                        stop()
            time.sleep(0.5)
    finally:
        stop()
        for process in children.values():
            process.wait(timeout=60)
    raise typer.Exit(code)
