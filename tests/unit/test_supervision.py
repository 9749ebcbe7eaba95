"""monitor.supervision: restart backoff, the watchdog's decisions and the supervisor's probes, on a fake clock."""

from __future__ import annotations

import random
import signal

import pytest

from monitor.config import SupervisorSettings
from monitor.health import HealthState, RoleHealth
from monitor.supervision import KILL_AFTER_S, LOOP_STALE_S, RoleSlot, Step, describe_exit, livez, readyz

SETTINGS = SupervisorSettings(restart_backoff_s=1.0, restart_backoff_cap_s=8.0, stable_after_s=120.0,
                              heartbeat_s=5.0, heartbeat_timeout_s=60.0, startup_grace_s=300.0)


class TopOfRange(random.Random):
    """The jitter's top: a delay exactly the doubling step (the equal jitter never exceeds it)."""

    def random(self) -> float:
        return 1.0


def _running(pid: int = 100, now: float = 0.0) -> RoleSlot:
    slot = RoleSlot("persist", SETTINGS)
    assert slot.next_step(slot.health(None, now), now) is Step.START
    slot.started(pid, now)
    return slot


def _beating(slot: RoleSlot, now: float, **changes) -> HealthState:
    fields = {"role": slot.role, "pid": slot.pid, "started_at": slot.started_at, "beat_at": now, "started": True,
              "live": True, "blocks": {}, "reason": ""}
    return HealthState(**{**fields, **changes})


# -- restarts and their backoff ---------------------------------------------------------------------

def test_a_new_slot_starts_at_once_and_then_waits_while_its_process_is_healthy():
    slot = _running(now=0.0)
    assert slot.next_step(slot.health(_beating(slot, 10.0), 10.0), 10.0) is Step.WAIT


def test_consecutive_crashes_double_the_delay_up_to_the_cap():
    slot, rng, now, delays = _running(), TopOfRange(), 0.0, []
    for _ in range(6):
        now += 5  # each process lives 5 s, far less than stable_after_s
        restart = slot.exited(1, now, rng)
        delays.append(restart.delay_s)
        assert slot.next_step(slot.health(None, now), now) is Step.WAIT
        now += restart.delay_s
        assert slot.next_step(slot.health(None, now), now) is Step.START
        slot.started(200, now)
    assert delays == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert restart.crashes == 6 and restart.reason == "exited"


def test_the_jitter_stays_within_the_upper_half_of_each_step():
    slot, rng = _running(), random.Random(3)
    restarts = []
    for _ in range(4):
        restarts.append(slot.exited(-9, slot.started_at + 1, rng))
        slot.started(300, slot.restart_at)
    for restart in restarts:
        step = min(SETTINGS.restart_backoff_cap_s, SETTINGS.restart_backoff_s * 2 ** (restart.crashes - 1))
        assert step / 2 <= restart.delay_s <= step
    assert len({r.delay_s for r in restarts}) == 4


def test_a_process_that_stayed_up_long_enough_resets_the_crash_count():
    slot, rng = _running(), TopOfRange()
    for _ in range(3):
        slot.exited(1, slot.started_at + 1, rng)
        slot.started(101, slot.restart_at)
    assert slot.crashes == 3
    restart = slot.exited(1, slot.started_at + SETTINGS.stable_after_s, rng)
    assert restart.crashes == 1 and restart.delay_s == SETTINGS.restart_backoff_s


def test_any_exit_code_is_restarted_and_said_in_words():
    slot = _running()
    restart = slot.exited(-signal.SIGKILL, 3.0, TopOfRange())
    assert restart.reason == "exited" and restart.why == "killed by SIGKILL"
    health = slot.health(None, 3.5)
    assert health.status == "down" and health.reason == "killed by SIGKILL; restart in 0.5s" and not health.ready
    assert describe_exit(0) == "exited with 0" and describe_exit(3) == "exited with 3"
    assert describe_exit(-15) == "killed by SIGTERM" and describe_exit(-200) == "killed by signal 200"


# -- the watchdog -----------------------------------------------------------------------------------

def test_a_process_that_never_beats_is_killed_after_the_startup_grace_and_restarted_as_unresponsive():
    slot = _running(now=0.0)
    assert slot.next_step(slot.health(None, SETTINGS.startup_grace_s), SETTINGS.startup_grace_s) is Step.WAIT
    now = SETTINGS.startup_grace_s + 1
    health = slot.health(None, now)
    assert health.status == "unresponsive"
    assert slot.next_step(health, now) is Step.KILL
    assert slot.next_step(slot.health(None, now + 0.5), now + 0.5) is Step.WAIT  # killed once, not every round
    restart = slot.exited(-9, now + 1, TopOfRange())
    assert restart.reason == "unresponsive"
    assert restart.why.startswith("killed by SIGKILL (unresponsive: no heartbeat 301s after start")


def test_a_heartbeat_older_than_the_timeout_kills_the_process():
    slot = _running(now=0.0)
    state = _beating(slot, 100.0)
    assert slot.next_step(slot.health(state, 100.0 + SETTINGS.heartbeat_timeout_s), 160.0) is Step.WAIT
    assert slot.next_step(slot.health(state, 161.0), 161.0) is Step.KILL


def test_a_process_that_declares_itself_broken_gets_sigterm_then_sigkill_after_30s():
    slot = _running(now=0.0)
    broken = _beating(slot, 50.0, live=False, reason="offsets stalled")
    assert slot.next_step(slot.health(broken, 50.0), 50.0) is Step.TERMINATE
    assert slot.next_step(slot.health(broken, 50.0 + KILL_AFTER_S - 1), 50.0 + KILL_AFTER_S - 1) is Step.WAIT
    assert slot.next_step(slot.health(broken, 50.0 + KILL_AFTER_S), 50.0 + KILL_AFTER_S) is Step.KILL
    restart = slot.exited(-9, 81.0, TopOfRange())
    assert restart.reason == "not_live" and "offsets stalled" in restart.why
    # The next process starts clean: not stopped by the watchdog until it misbehaves itself.
    slot.started(101, slot.restart_at)
    assert slot.next_step(slot.health(None, slot.restart_at + 1), slot.restart_at + 1) is Step.WAIT


def test_a_process_over_its_memory_limit_is_stopped_gently_and_restarted_as_memory():
    limited = SETTINGS.model_copy(update={"max_rss_mb": 500})
    slot = RoleSlot("persist", limited)
    slot.next_step(slot.health(None, 0.0), 0.0)
    slot.started(100, 0.0)
    health = slot.health(_beating(slot, 10.0), 10.0)
    assert slot.next_step(health, 10.0, rss_bytes=499 * 2**20) is Step.WAIT
    assert slot.next_step(health, 10.0, rss_bytes=None) is Step.WAIT  # unreadable: no decision
    assert slot.next_step(health, 11.0, rss_bytes=501 * 2**20) is Step.TERMINATE
    assert slot.next_step(health, 11.0 + KILL_AFTER_S, rss_bytes=501 * 2**20) is Step.KILL
    restart = slot.exited(0, 45.0, TopOfRange())
    assert restart.reason == "memory" and "501 MB over the 500 MB limit" in restart.why
    unlimited = _running(now=0.0)  # max_rss_mb = 0: no limit
    assert unlimited.next_step(unlimited.health(_beating(unlimited, 5.0), 5.0), 5.0, rss_bytes=2**40) is Step.WAIT


@pytest.mark.parametrize("changes", [{"started": False}, {"blocks": {"persist": "database unreachable"}}])
def test_starting_and_not_ready_processes_are_left_alone(changes):
    slot = _running(now=0.0)
    health = slot.health(_beating(slot, 500.0, **changes), 500.0)
    assert health.live and not health.ready
    assert slot.next_step(health, 500.0) is Step.WAIT


def test_a_stale_file_of_the_previous_process_is_not_judged():
    slot = _running(pid=100, now=0.0)
    broken = _beating(slot, 10.0, live=False, reason="old")
    slot.exited(-15, 20.0, TopOfRange())
    slot.started(101, 21.0)
    assert slot.health(broken, 22.0) == RoleHealth("starting", "loading", 101)


# -- the supervisor's probes ------------------------------------------------------------------------

def test_livez_follows_the_supervisor_loop_not_the_roles():
    roles = {"persist": RoleHealth("down", "killed by SIGKILL; restart in 1.0s")}
    ok, body = livez(roles, last_tick=100.0, now=100.0 + LOOP_STALE_S)
    assert ok and body["status"] == "ok" and body["roles"]["persist"]["status"] == "down"
    ok, body = livez(roles, last_tick=100.0, now=100.0 + LOOP_STALE_S + 1)
    assert not ok and body["loop_age_s"] == LOOP_STALE_S + 1


def test_readyz_needs_every_role_ready_and_names_each():
    ready = RoleHealth("ready", "", 11)
    ok, body = readyz({"classify": ready, "persist": ready})
    assert ok and body == {"status": "ok", "roles": {"classify": ready.as_dict(), "persist": ready.as_dict()}}
    ok, body = readyz({"classify": ready, "persist": RoleHealth("not_ready", "persist: database unreachable", 12)})
    assert not ok and body["roles"]["persist"] == {"status": "not_ready", "reason": "persist: database unreachable",
                                                   "pid": 12}
    assert readyz({})[0] is False  # before the first round of the loop
