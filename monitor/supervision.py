"""What ``monitor worker`` does about each of its role processes: when to restart one that died, when
its watchdog stops one that is stuck or broken, and what its /livez and /readyz answer.

Pure: the clock and the random source are arguments; ``monitor.cli.worker`` starts the processes,
sends the signals and reads the health files.
"""

from __future__ import annotations

import random
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

from monitor.config import SupervisorSettings
from monitor.faults import backoff_delay
from monitor.health import HealthState, ProbeResult, RoleHealth, judge, probe_result

#: A role process that declared itself broken gets SIGTERM (to commit what it can), SIGKILL after this.
KILL_AFTER_S = 30.0
#: /livez fails when the supervisor loop has not gone round for this long (it goes round every 0.5 s).
LOOP_STALE_S = 30.0
#: The exit code (sysexits' EX_CONFIG) of a role process that cannot start with this configuration (no
#: model, a malformed setting): restarting cannot help, so the supervisor stops and passes it on.
EX_CONFIG = 78
#: Why a role process was restarted (the ``reason`` label of monitor_worker_restarts_total).
RESTART_REASONS = ("exited", "unresponsive", "not_live", "memory")


class Step(Enum):
    """What the supervisor does next for one role."""

    WAIT = "wait"
    START = "start"
    TERMINATE = "terminate"  # SIGTERM
    KILL = "kill"  # SIGKILL


@dataclass(frozen=True)
class Restart:
    """A role process ended and will be started again after ``delay_s``."""

    role: str
    reason: str  # one of RESTART_REASONS
    why: str  # for the log: how it ended and, if the watchdog stopped it, the watchdog's reason
    crashes: int  # consecutive short-lived processes of this role, this one included
    delay_s: float


def describe_exit(code: int) -> str:
    """``Popen.returncode`` in words: negative codes are the signal that ended the process."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with {code}"


@dataclass
class RoleSlot:
    """One role's process as the supervisor sees it, and its restart bookkeeping (times: Unix seconds)."""

    role: str
    settings: SupervisorSettings
    pid: int | None = None
    started_at: float = 0.0
    crashes: int = 0
    restart_at: float = 0.0  # a new process may start from then on
    stopping: str = ""  # the RESTART_REASONS member while the watchdog stops the process
    stopping_detail: str = ""
    stop_sent_at: float = 0.0
    last_exit: str = ""

    def started(self, pid: int, now: float) -> None:
        self.pid, self.started_at = pid, now
        self.stopping, self.stopping_detail = "", ""

    def health(self, state: HealthState | None, now: float) -> RoleHealth:
        """The verdict on the current process, from its last report (or "down" between two processes)."""
        if self.pid is None:
            wait = max(0.0, self.restart_at - now)
            return RoleHealth("down", f"{self.last_exit}; restart in {wait:.1f}s" if self.last_exit else "not started")
        return judge(state, now=now, process_started_at=self.started_at, pid=self.pid,
                     heartbeat_timeout_s=self.settings.heartbeat_timeout_s,
                     startup_grace_s=self.settings.startup_grace_s)

    def next_step(self, health: RoleHealth, now: float, *, rss_bytes: int | None = None) -> Step:
        """Start a process when one is due; stop a stuck one at once, and a broken one or one that has
        outgrown its memory limit (``settings.max_rss_mb``; a slow leak in a months-long run) gently."""
        if self.pid is None:
            return Step.START if now >= self.restart_at else Step.WAIT
        if self.stopping:
            if self.stopping != "unresponsive" and now - self.stop_sent_at >= KILL_AFTER_S:
                self.stop_sent_at = now
                return Step.KILL
            return Step.WAIT
        if health.status == "unresponsive":
            # A stuck event loop would not run a SIGTERM handler either.
            self._stop("unresponsive", health.reason, now)
            return Step.KILL
        if health.status == "not_live":
            self._stop("not_live", health.reason, now)
            return Step.TERMINATE
        limit = self.settings.max_rss_mb * 2**20
        if limit and rss_bytes is not None and rss_bytes > limit:
            self._stop("memory", f"resident memory {rss_bytes / 2**20:.0f} MB over the "
                                 f"{self.settings.max_rss_mb} MB limit", now)
            return Step.TERMINATE
        return Step.WAIT

    def exited(self, code: int, now: float, rng: random.Random) -> Restart:
        """The process ended: schedule the next one, later the more often the role crashed in a row."""
        stable = now - self.started_at >= self.settings.stable_after_s
        self.crashes = 1 if stable else self.crashes + 1
        delay = backoff_delay(self.crashes - 1, base_s=self.settings.restart_backoff_s,
                              cap_s=self.settings.restart_backoff_cap_s, rng=rng)
        reason = self.stopping or "exited"
        why = describe_exit(code) + (f" ({self.stopping}: {self.stopping_detail})" if self.stopping else "")
        self.pid, self.restart_at, self.last_exit = None, now + delay, why
        self.stopping, self.stopping_detail = "", ""
        return Restart(self.role, reason, why, self.crashes, delay)

    def _stop(self, reason: str, detail: str, now: float) -> None:
        self.stopping, self.stopping_detail, self.stop_sent_at = reason, detail, now


def livez(roles: Mapping[str, RoleHealth], *, last_tick: float, now: float) -> ProbeResult:
    """Live while the supervisor loop goes round: it restarts the roles itself, so their state is
    for information only (a role being restarted does not make the supervisor worth restarting)."""
    age = now - last_tick
    return probe_result(age <= LOOP_STALE_S, roles, loop_age_s=round(age, 1))


def readyz(roles: Mapping[str, RoleHealth]) -> ProbeResult:
    """Ready when every role is."""
    return probe_result(bool(roles) and all(h.ready for h in roles.values()), roles)
