"""monitor.health: what a role process reports (the file), and every status the judge can give."""

from __future__ import annotations

import json
import os
import threading

import pytest

from monitor.health import HealthReporter, HealthState, RoleHealth, judge, process_probes, read_state

TIMEOUT, GRACE = 120.0, 900.0


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _state(**changes) -> HealthState:
    base = {"role": "persist", "pid": 42, "started_at": 1000.0, "beat_at": 1000.0, "started": True, "live": True,
            "blocks": {}, "reason": ""}
    return HealthState(**{**base, **changes})


def _judge(state: HealthState | None, now: float, *, started_at: float = 1000.0, pid: int | None = None):
    return judge(state, now=now, process_started_at=started_at, heartbeat_timeout_s=TIMEOUT, startup_grace_s=GRACE,
                 pid=pid)


# -- the reporter and its file ----------------------------------------------------------------------

def test_a_new_reporter_writes_a_starting_state_at_once(tmp_path):
    clock = FakeClock()
    path = tmp_path / "health" / "persist.json"  # the folder is made if missing
    reporter = HealthReporter(path, "persist", clock=clock)
    state = read_state(path)
    assert state == reporter.state()
    assert (state.role, state.pid, state.started_at, state.beat_at) == ("persist", os.getpid(), clock.now, None)
    assert state.live and not state.started and not state.ready


def test_every_change_is_in_the_file_and_readiness_follows_the_blocks(tmp_path):
    clock = FakeClock()
    path = tmp_path / "explain.json"
    reporter = HealthReporter(path, "explain", clock=clock)
    reporter.mark_started()
    clock.now += 5
    reporter.beat()
    assert read_state(path).ready and read_state(path).beat_at == clock.now

    reporter.block("persist", "database unreachable: connection refused")
    reporter.block("lag", "broker unreachable")
    assert read_state(path).blocks == {"persist": "database unreachable: connection refused",
                                       "lag": "broker unreachable"}
    assert not read_state(path).ready
    reporter.unblock("persist")
    reporter.unblock("persist")  # twice is harmless
    assert not read_state(path).ready
    reporter.unblock("lag")
    assert read_state(path).ready and read_state(path).blocks == {}


def test_fail_is_for_good_and_keeps_the_first_reason(tmp_path):
    path = tmp_path / "classify.json"
    reporter = HealthReporter(path, "classify", clock=FakeClock())
    reporter.fail("committed offsets stalled for 600s")
    reporter.fail("a consequence")
    reporter.mark_started()
    reporter.beat()
    state = read_state(path)
    assert not state.live and state.reason == "committed offsets stalled for 600s"


def test_without_a_path_the_reporter_keeps_its_state_in_memory(tmp_path):
    reporter = HealthReporter(None, "persist", clock=FakeClock())
    reporter.mark_started()
    assert reporter.state().ready
    assert list(tmp_path.iterdir()) == []


def test_a_write_that_fails_does_not_stop_the_worker(tmp_path, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    reporter = HealthReporter(blocker / "persist.json", "persist", clock=FakeClock())
    reporter.beat()
    reporter.beat()
    assert reporter.state().beat_at is not None
    assert sum("cannot write the health file" in r.message for r in caplog.records) == 1  # said once, not per beat


def test_concurrent_changes_leave_a_complete_file(tmp_path):
    path = tmp_path / "persist.json"
    reporter = HealthReporter(path, "persist")

    def churn(key: str) -> None:
        for _ in range(200):
            reporter.block(key, "x")
            reporter.beat()
            reporter.unblock(key)

    threads = [threading.Thread(target=churn, args=(f"k{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for _ in range(200):
        assert read_state(path) is not None  # os.replace: never half a file
    for thread in threads:
        thread.join()
    assert read_state(path).blocks == {}


@pytest.mark.parametrize("content", ["", "{", "[]", json.dumps({"role": "persist"}),
                                     json.dumps({**vars(_state()), "pid": "42"}),
                                     json.dumps({**vars(_state()), "extra": 1})])
def test_a_partial_or_foreign_file_reads_as_no_state(tmp_path, content):
    path = tmp_path / "persist.json"
    path.write_text(content)
    assert read_state(path) is None


def test_a_missing_file_reads_as_no_state(tmp_path):
    assert read_state(tmp_path / "none.json") is None


# -- the judge: every status -----------------------------------------------------------------------

def test_no_report_yet_is_starting_within_the_grace_and_unresponsive_after():
    assert _judge(None, 1000.0 + GRACE).status == "starting"
    late = _judge(None, 1000.0 + GRACE + 1)
    assert late.status == "unresponsive" and "no heartbeat 901s after start" in late.reason
    assert not late.live and not late.ready


def test_a_report_without_a_beat_gets_the_startup_grace_too():
    assert _judge(_state(beat_at=None, started=False), 1000.0 + 300).status == "starting"
    assert _judge(_state(beat_at=None, started=False), 1000.0 + GRACE + 1).status == "unresponsive"


def test_beating_but_not_started_is_starting_then_not_ready():
    state = _state(beat_at=1000.0 + GRACE, started=False)
    assert _judge(state, 1000.0 + GRACE).status == "starting"
    verdict = _judge(state, 1000.0 + GRACE + 5)
    assert verdict.status == "not_ready" and verdict.live and "not started" in verdict.reason


def test_started_and_beating_with_no_block_is_ready():
    verdict = _judge(_state(), 1000.0 + TIMEOUT)
    assert verdict == RoleHealth("ready", "", 42)
    assert verdict.ready and verdict.live


def test_a_block_makes_it_not_ready_but_live_with_every_reason():
    verdict = _judge(_state(blocks={"persist": "database unreachable", "classify": "broker down"}), 1010.0)
    assert verdict.status == "not_ready" and verdict.live and not verdict.ready
    assert verdict.reason == "classify: broker down; persist: database unreachable"


def test_a_heartbeat_older_than_the_timeout_is_unresponsive():
    verdict = _judge(_state(beat_at=2000.0), 2000.0 + TIMEOUT + 1)
    assert verdict.status == "unresponsive" and verdict.reason == "no heartbeat for 121.0s, timeout 120s"
    assert _judge(_state(beat_at=2000.0), 2000.0 + TIMEOUT).status == "ready"


def test_a_process_that_declared_itself_broken_is_not_live_whatever_else():
    verdict = _judge(_state(live=False, reason="offsets stalled", beat_at=1.0), 5000.0)
    assert verdict.status == "not_live" and verdict.reason == "offsets stalled" and not verdict.live


def test_a_report_of_another_process_counts_as_none():
    """The file the previous process of the role left: the new one has not reported yet."""
    stale = _state(pid=41)
    verdict = _judge(stale, 5000.0, started_at=4990.0, pid=42)
    assert verdict == RoleHealth("starting", "loading", 42)
    assert _judge(_state(live=False, pid=41), 5000.0, started_at=4990.0, pid=42).status == "starting"


def test_as_dict_is_what_the_probes_show():
    assert RoleHealth("not_ready", "persist: down", 7).as_dict() == {"status": "not_ready", "reason": "persist: down",
                                                                     "pid": 7}


# -- the probes of a role process on its own --------------------------------------------------------

def test_process_probes_follow_the_reporter():
    clock = FakeClock()
    reporter = HealthReporter(None, "persist", clock=clock)
    probes = process_probes(reporter, heartbeat_timeout_s=TIMEOUT, startup_grace_s=GRACE)
    live, body = probes["/livez"]()
    assert live and body["roles"]["persist"]["status"] == "starting" and body["roles"]["persist"]["pid"] == os.getpid()
    assert probes["/readyz"]()[0] is False

    reporter.mark_started()
    reporter.beat()
    assert probes["/readyz"]() == (True, {"status": "ok", "roles": {"persist": {"status": "ready", "reason": "",
                                                                               "pid": os.getpid()}}})
    reporter.block("persist", "database unreachable")
    ready, body = probes["/readyz"]()
    assert not ready and body["status"] == "failing" and probes["/livez"]()[0]  # waiting out a fault is alive

    clock.now += TIMEOUT + 1  # the event loop stopped beating
    assert probes["/livez"]()[0] is False
