"""Liveness and readiness of a worker role process: what the process reports about itself
(``HealthReporter``, kept in a small JSON file) and how that report is judged (``judge``, pure).

A role process is *live* while its event loop beats and it has not declared itself broken; it is
*ready* once its agents run and no stage is waiting out a fault (a database outage "blocks" persist).
``monitor worker`` reads each child's file to restart the stuck and broken ones and to answer
/readyz; a role started alone answers /livez and /readyz from its own reporter.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger(__name__)

#: ``judge`` gives the first five; "down" is the supervisor's, for a role whose process it is restarting.
Status = Literal["starting", "ready", "not_ready", "unresponsive", "not_live", "down"]
#: Statuses in which the process must be replaced: its loop is stuck, or it said it is broken.
NOT_LIVE_STATUSES = frozenset({"unresponsive", "not_live"})
#: What a probe answers: healthy or not, and a JSON-able body saying why.
ProbeResult = tuple[bool, dict[str, Any]]


@dataclass(frozen=True)
class HealthState:
    """What a role process last reported about itself (times are Unix seconds)."""

    role: str
    pid: int
    started_at: float
    beat_at: float | None
    started: bool  # the role finished loading and its agents are running
    live: bool  # False once the process declared itself broken (watchdog)
    blocks: dict[str, str] = field(default_factory=dict)  # key -> reason; not ready while any is set
    reason: str = ""  # why not live ('' if live)

    @property
    def ready(self) -> bool:
        return self.started and not self.blocks


class HealthReporter:
    """A role process's own health, thread-safe; every change rewrites ``path`` atomically (if given).

    The agents and timers call it from the event loop, the probe server reads it from its threads.
    """

    def __init__(self, path: Path | None, role: str, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.clock = clock
        self._lock = threading.Lock()
        self._write_failed = False
        self._state = HealthState(role=role, pid=os.getpid(), started_at=clock(), beat_at=None, started=False,
                                  live=True)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError:
                pass  # the first write says so
        with self._lock:
            self._write()

    def mark_started(self) -> None:
        self._update(started=True)

    def block(self, key: str, reason: str) -> None:
        """Not ready until ``unblock(key)``: e.g. a stage waiting out a database outage."""
        with self._lock:
            self._set(blocks={**self._state.blocks, key: reason})

    def unblock(self, key: str) -> None:
        with self._lock:
            if key in self._state.blocks:
                self._set(blocks={k: v for k, v in self._state.blocks.items() if k != key})

    def fail(self, reason: str) -> None:
        """Declare the process broken for good: its supervisor (or Kubernetes) replaces it."""
        with self._lock:
            if self._state.live:  # the first reason is the cause; later ones are its consequences
                self._set(live=False, reason=reason)

    def beat(self) -> None:
        self._update(beat_at=self.clock())

    def state(self) -> HealthState:
        with self._lock:
            return self._state

    def _update(self, **changes: Any) -> None:
        with self._lock:
            self._set(**changes)

    def _set(self, **changes: Any) -> None:  # the caller holds the lock
        self._state = replace(self._state, **changes)
        self._write()

    def _write(self) -> None:
        if self.path is None:
            return
        tmp = self.path.with_name(f".{self.path.name}.{self._state.pid}.tmp")
        try:
            tmp.write_text(json.dumps(asdict(self._state)))
            os.replace(tmp, self.path)  # a reader sees the old file or the new one, never half of one
        except OSError as exc:
            # The worker goes on; a supervisor that cannot read the beats will restart it in time.
            if not self._write_failed:
                log.warning("cannot write the health file %s: %s", self.path, exc)
            self._write_failed = True
        else:
            self._write_failed = False


def read_state(path: Path) -> HealthState | None:
    """The state in ``path``; None if it is missing, unreadable or not a complete state."""
    try:
        data = json.loads(path.read_text())
        state = HealthState(**data)
    except (OSError, ValueError, TypeError):
        return None
    numbers = (int, float)
    if not (isinstance(state.role, str) and isinstance(state.pid, int) and isinstance(state.started_at, numbers)
            and (state.beat_at is None or isinstance(state.beat_at, numbers)) and isinstance(state.started, bool)
            and isinstance(state.live, bool) and isinstance(state.blocks, dict) and isinstance(state.reason, str)):
        return None
    return state


@dataclass(frozen=True)
class RoleHealth:
    """The verdict on one role process: a status, why (for a human), and its pid when known."""

    status: Status
    reason: str = ""
    pid: int | None = None

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    @property
    def live(self) -> bool:
        return self.status not in NOT_LIVE_STATUSES

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "reason": self.reason, "pid": self.pid}


def judge(state: HealthState | None, *, now: float, process_started_at: float, heartbeat_timeout_s: float,
          startup_grace_s: float, pid: int | None = None) -> RoleHealth:
    """Judge a role process from its last report.

    ``process_started_at``: when the process was started (Unix seconds); until its first beat it has
    ``startup_grace_s`` to load its models, after that each beat must follow the last within
    ``heartbeat_timeout_s``. Given ``pid``, a report by another process (a file left by the previous
    process of the role) counts as no report.
    """
    if state is not None and pid is not None and state.pid != pid:
        state = None
    pid = state.pid if state is not None else pid
    if state is not None and not state.live:
        return RoleHealth("not_live", state.reason or "declared itself broken", pid)
    since_start = now - process_started_at
    if state is None or state.beat_at is None:
        if since_start > startup_grace_s:
            return RoleHealth("unresponsive", f"no heartbeat {since_start:.0f}s after start, "
                                              f"startup grace {startup_grace_s:g}s", pid)
        return RoleHealth("starting", "loading", pid)
    silent = now - state.beat_at
    if silent > heartbeat_timeout_s:
        return RoleHealth("unresponsive", f"no heartbeat for {silent:.1f}s, timeout {heartbeat_timeout_s:g}s", pid)
    if not state.started:
        if since_start > startup_grace_s:
            return RoleHealth("not_ready", f"not started {since_start:.0f}s after start", pid)
        return RoleHealth("starting", "joining the stream", pid)
    if state.blocks:
        return RoleHealth("not_ready", "; ".join(f"{key}: {why}" for key, why in sorted(state.blocks.items())), pid)
    return RoleHealth("ready", "", pid)


def probe_result(ok: bool, roles: Mapping[str, RoleHealth], **extra: Any) -> ProbeResult:
    """A probe's answer: ``ok`` and a body naming each role's status, reason and pid."""
    return ok, {"status": "ok" if ok else "failing", **extra,
                "roles": {role: health.as_dict() for role, health in roles.items()}}


def process_probes(reporter: HealthReporter, *, heartbeat_timeout_s: float,
                   startup_grace_s: float) -> dict[str, Callable[[], ProbeResult]]:
    """/livez and /readyz of a role process that runs without a supervisor, from its own reporter.

    The probe server runs in its own thread, so a stuck event loop shows as a heartbeat too old.
    """

    def health() -> tuple[str, RoleHealth]:
        state = reporter.state()
        return state.role, judge(state, now=reporter.clock(), process_started_at=state.started_at,
                                 heartbeat_timeout_s=heartbeat_timeout_s, startup_grace_s=startup_grace_s)

    def livez() -> ProbeResult:
        role, verdict = health()
        return probe_result(verdict.live, {role: verdict})

    def readyz() -> ProbeResult:
        role, verdict = health()
        return probe_result(verdict.ready, {role: verdict})

    return {"/livez": livez, "/readyz": readyz}
