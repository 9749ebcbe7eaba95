"""``monitor worker --role classify|explain|persist|all``: start stream workers (Faust, over Kafka).

Each role runs as its own process (``python -m stream_jobs --role R``) and its own consumer group,
so roles scale independently: start more of the busy role, here or on other machines. ``all``
starts one process per role and stops them together.
"""

from __future__ import annotations

import os
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
    ctx: typer.Context,
    role: Role = typer.Option(Role.all, help="Which role to run (all = one process per role)"),
    loglevel: str = typer.Option("warn", help="Faust log level: crit, error, warn, info, debug"),
) -> None:
    """Run stream workers until interrupted; a crashed role process stops the others with its exit code.

    One /metrics endpoint (MONITOR_METRICS__HOST:PORT) serves every role process started here
    (prometheus-client's multiprocess mode).
    """
    from monitor import telemetry

    settings = ctx.obj.settings
    roles = ROLES if role is Role.all else (role.value,)
    env = dict(os.environ)
    folder = None
    if settings.metrics.port:
        folder = telemetry.prepare_multiprocess_dir(settings.data_dir / "metrics" / str(os.getpid()))
        # The children write their samples to files there and serve nothing; this process serves them.
        env.update({telemetry.MULTIPROC_ENV: str(folder), "MONITOR_METRICS__PORT": "0"})
        telemetry.serve(settings.metrics, multiprocess_dir=folder)  # ServiceError: one red line from main()
        console.print(f"metrics: http://{settings.metrics.host}:{settings.metrics.port}/metrics")
    children = {
        r: subprocess.Popen([sys.executable, "-m", "stream_jobs", "--role", r, "--loglevel", loglevel],  # noqa: S603
                            env=env)
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
                    if folder is not None:
                        telemetry.mark_process_dead(process.pid, folder)
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
