"""``monitor worker --role classify|explain|persist|source|all``: run stream workers (Faust, over Kafka) and
keep them running.

Each role runs as its own process (``python -m stream_jobs --role R``) and its own consumer group,
so roles scale independently: start more of the busy role, here or on other machines. This process
supervises them: it restarts a role process that dies, and one that stops beating or declares itself
broken (``monitor.supervision`` decides, from the health file each one keeps, ``monitor.health``).
The ``source`` role (``python -m monitor.sources``) watches the platform of ``MONITOR_SOURCE__*``.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console

console = Console()
ROLES = ("classify", "explain", "persist")
TICK_S = 0.5


class Role(str, Enum):
    classify = "classify"
    explain = "explain"
    persist = "persist"
    source = "source"
    all = "all"


def worker(
    ctx: typer.Context,
    role: Role = typer.Option(Role.all, help="Which role to run (all = one process per role; with "
                              "MONITOR_SOURCE__PLATFORM set, all includes the source)"),
    loglevel: str = typer.Option("warn", help="Faust log level: crit, error, warn, info, debug"),
) -> None:
    """Run stream workers until interrupted, restarting a role process that dies,
    stops responding or declares itself broken (after a backoff that grows while
    it keeps crashing; timings: MONITOR_SUPERVISOR__*).

    One endpoint (MONITOR_METRICS__HOST:PORT) serves /metrics for every role
    process started here (prometheus-client's multiprocess mode), /livez (200
    while this supervisor runs) and /readyz (200 when every role is started and
    waits out no fault; the JSON body names each role's status, reason and pid).
    """
    from monitor import telemetry
    from monitor.health import RoleHealth, read_state
    from monitor.services.process import resident_bytes, stop_processes
    from monitor.supervision import EX_CONFIG, KILL_AFTER_S, RESTART_REASONS, RoleSlot, Step, livez, readyz

    settings = ctx.obj.settings
    roles = ROLES if role is Role.all else (role.value,)
    if role is Role.all and settings.source.platform:
        roles = (*ROLES, "source")
    health_dir = settings.data_dir / "health" / str(os.getpid())
    shutil.rmtree(health_dir, ignore_errors=True)  # a report left by an earlier run must not count
    health_dir.mkdir(parents=True)
    # What the probes read, from the endpoint's threads: replaced whole at each round of the loop.
    latest: list[tuple[float, dict[str, RoleHealth]]] = [(time.time(), {})]
    env = dict(os.environ)
    folder = None
    if settings.metrics.port:
        folder = telemetry.prepare_multiprocess_dir(settings.data_dir / "metrics" / str(os.getpid()))
        # The children write their samples to files there and serve nothing; this process serves them.
        env.update({telemetry.MULTIPROC_ENV: str(folder), "MONITOR_METRICS__PORT": "0"})
        probes = {"/livez": lambda: livez(latest[0][1], last_tick=latest[0][0], now=time.time()),
                  "/readyz": lambda: readyz(latest[0][1])}
        telemetry.serve(settings.metrics, multiprocess_dir=folder, collectors=telemetry.SUPERVISOR_METRICS,
                        probes=probes)  # ServiceError: one red line from main()
        base = f"http://{settings.metrics.host}:{settings.metrics.port}"
        console.print(f"metrics: {base}/metrics (probes: /livez, /readyz)")

    slots = {r: RoleSlot(r, settings.supervisor) for r in roles}
    for r in roles:
        for reason in RESTART_REASONS:  # at 0 from the start, so that increase() sees the first restart
            telemetry.WORKER_RESTARTS.labels(r, reason)
    processes: dict[str, subprocess.Popen] = {}
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stopping.append(signum))
    signal.signal(signal.SIGINT, lambda signum, _frame: stopping.append(signum))
    rng = random.Random()
    first_round = True
    exit_code = 0
    try:
        while not stopping:
            now, healths, started = time.time(), {}, []
            for name, slot in slots.items():
                path = health_dir / f"{name}.json"
                process = processes.get(name)
                if process is not None and (code := process.poll()) is not None:
                    del processes[name]
                    _forget(process, path, folder)
                    if code == EX_CONFIG:
                        console.print(f"[red]{name} worker cannot start with this configuration (see its error "
                                      f"above); stopping[/]")
                        exit_code = EX_CONFIG
                        stopping.append(0)
                        break
                    restart = slot.exited(code, now, rng)
                    telemetry.WORKER_RESTARTS.labels(name, restart.reason).inc()
                    console.print(f"[red]{name} worker {restart.why}; restarting in {restart.delay_s:.1f}s "
                                  f"(crash {restart.crashes} in a row)[/]", soft_wrap=True)
                health = slot.health(read_state(path) if name in processes else None, now)
                rss = resident_bytes(processes[name].pid) if name in processes else None
                telemetry.WORKER_RSS.labels(name).set(rss or 0)
                step = slot.next_step(health, now, rss_bytes=rss)
                if step is Step.START:
                    processes[name] = _spawn(name, loglevel, path, env)
                    slot.started(processes[name].pid, now)
                    health = slot.health(None, now)
                    started.append(f"{name} (pid {processes[name].pid})")
                elif step is Step.KILL:
                    console.print(f"[yellow]{name} worker {slot.stopping}: {slot.stopping_detail}; SIGKILL[/]",
                                  soft_wrap=True)
                    processes[name].kill()
                elif step is Step.TERMINATE:
                    console.print(f"[yellow]{name} worker {slot.stopping}: {slot.stopping_detail}; SIGTERM, SIGKILL "
                                  f"in {KILL_AFTER_S:.0f}s[/]", soft_wrap=True)
                    processes[name].terminate()
                healths[name] = health
                telemetry.WORKER_UP.labels(name).set(name in processes)
                telemetry.WORKER_READY.labels(name).set(health.ready)
            latest[0] = (now, healths)
            if started:
                console.print(f"{'workers' if first_round else 'restarted'}: {', '.join(started)}")
                first_round = False
            time.sleep(TICK_S)
    finally:
        stop_processes(processes.values(), timeout_s=60)
        for name, process in processes.items():
            _forget(process, health_dir / f"{name}.json", folder)
        shutil.rmtree(health_dir, ignore_errors=True)
    raise typer.Exit(exit_code)


def _spawn(role: str, loglevel: str, health_file: Path, env: dict[str, str]) -> subprocess.Popen:
    health_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "stream_jobs", "--role", role, "--loglevel", loglevel]
    if role == "source":  # not a Faust worker: a platform stream into the posts topic
        command = [sys.executable, "-m", "monitor.sources"]
    return subprocess.Popen(command + ["--health-file", str(health_file)], env=env)  # noqa: S603 - built here


def _forget(process: subprocess.Popen, health_file: Path, metrics_dir: Path | None) -> None:
    """Drop what a finished role process left behind: its health file and its live gauges."""
    from monitor import telemetry

    health_file.unlink(missing_ok=True)
    if metrics_dir is not None:
        telemetry.mark_process_dead(process.pid, metrics_dir)
