"""Detached service processes: PID files, liveness, graceful stop, waiting, apt installs."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from monitor.errors import ServiceError

T = TypeVar("T")


@dataclass(frozen=True)
class Status:
    """What ``monitor services status`` shows for one service."""

    name: str
    running: bool
    pid: int | None
    detail: str


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def is_alive(pid: int, marker: str | None = None) -> bool:
    """Whether ``pid`` runs (not a zombie) and, given a marker, its command line contains it.

    The marker guards against a recycled PID: we never signal a process we did not start.
    """
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own exited child
    except ChildProcessError:
        pass
    proc = Path(f"/proc/{pid}")
    # Right after a spawn (Python forks with vfork) the parent can run before the kernel has set the
    # child's new arguments: its cmdline reads empty for a moment. Read again rather than call a
    # starting process dead.
    for _ in range(50):
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return False
        if state in {"Z", "X"}:
            return False
        if cmdline or marker is None:
            break
        time.sleep(0.01)
    return marker is None or marker in cmdline


def spawn(cmd: Sequence[str], log_path: Path, pid_file: Path, *, env: dict[str, str] | None = None) -> int:
    """Start ``cmd`` in its own session, output appended to ``log_path``; write and return its PID."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(  # noqa: S603 - the command is built by the project, not from input
            list(cmd), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, env=env, close_fds=True,
        )
    pid_file.write_text(f"{proc.pid}\n")
    return proc.pid


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def stop_group(proc: subprocess.Popen, *, timeout_s: float = 60.0) -> None:
    """SIGTERM to the process group ``proc`` leads (started with ``start_new_session``), SIGKILL to the
    group after ``timeout_s``: a ``monitor worker`` and every role process it started stop together."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def stop_processes(processes: Iterable[subprocess.Popen], *, timeout_s: float = 60.0) -> None:
    """SIGTERM to every process, then one shared wait of ``timeout_s`` for all of them together;
    SIGKILL to whichever is left (``monitor worker`` stopping its role processes)."""
    running = [p for p in processes if p.poll() is None]
    for proc in running:
        proc.terminate()
    deadline = time.monotonic() + timeout_s
    for proc in running:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def terminate(pid: int, marker: str, *, timeout_s: float = 30.0) -> None:
    """SIGTERM, wait for a clean exit, SIGKILL after ``timeout_s``."""
    if not is_alive(pid, marker):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not is_alive(pid, marker):
            return
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not is_alive(pid, marker) or None, 10.0, f"process {pid} to exit after SIGKILL")


def wait_until(check: Callable[[], T | None], timeout_s: float, what: str, *, interval_s: float = 0.25) -> T:
    """Call ``check`` until it returns something other than None (or False); raise on timeout.

    Exceptions from ``check`` count as "not yet" (the last one is named in the error), except
    ``ServiceError``, which means the wait is hopeless (the process died) and is raised at once.
    """
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        try:
            result = check()
            if result is not None and result is not False:
                return result
        except ServiceError:
            raise
        except Exception as exc:  # noqa: BLE001 - the check's failure is the signal to retry
            last_error = exc
        if time.monotonic() >= deadline:
            reason = f": {last_error}" if last_error else ""
            raise ServiceError(f"timed out after {timeout_s:.0f}s waiting for {what}{reason}")
        time.sleep(interval_s)


def run(cmd: Sequence[str], *, what: str, input_text: str | None = None, timeout_s: float = 300) -> str:
    """Run a short command; raise ``ServiceError`` naming ``what`` with the tail of its output."""
    try:
        done = subprocess.run(  # noqa: S603
            list(cmd), input=input_text, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except FileNotFoundError as exc:
        raise ServiceError(f"{what}: {cmd[0]} not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise ServiceError(f"{what}: timed out after {timeout_s:.0f}s") from exc
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise ServiceError(f"{what} failed (exit {done.returncode}): {tail}")
    return done.stdout


def apt_install(packages: Sequence[str], why: str) -> None:
    """Install Debian packages when we are root on a Debian-like system; otherwise say what to run."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise ServiceError(f"{why}: install {' '.join(packages)} (e.g. `sudo apt-get install {' '.join(packages)}`)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)  # noqa: S603
        if done.returncode != 0:
            tail = " | ".join(done.stderr.strip().splitlines()[-3:])
            raise ServiceError(f"{why}: `{' '.join(cmd)}` failed: {tail}")


def http_get(url: str, *, timeout_s: float = 5.0) -> tuple[int, str]:
    """GET a local endpoint (a worker's /metrics, /livez, /readyz): (HTTP status, body), or (0, "") when
    nothing answers there."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:  # noqa: S310 - the caller's own endpoint
            return reply.status, reply.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:  # 503 from /readyz is an answer, not a failure
        return exc.code, exc.read().decode("utf-8", "replace")
    except OSError:
        return 0, ""


def resident_bytes(pid: int) -> int | None:
    """A process's resident memory (VmRSS, Linux /proc), or None if it is gone or unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None
