"""Process management on real processes: spawn, PID files, marker checks, terminate, waiting."""

import sys
import time

import pytest

from monitor.errors import ServiceError
from monitor.services import process


def _sleeper(tmp_path, marker):
    script = tmp_path / f"{marker}.py"
    script.write_text("import time\nwhile True: time.sleep(0.1)\n")
    return [sys.executable, str(script)], str(script)


def test_spawn_writes_pid_and_terminate_stops_only_the_marked_process(tmp_path):
    cmd, marker = _sleeper(tmp_path, "svc")
    pid_file = tmp_path / "svc.pid"
    pid = process.spawn(cmd, tmp_path / "svc.log", pid_file)
    assert process.read_pid(pid_file) == pid
    assert process.is_alive(pid, marker)
    assert not process.is_alive(pid, "some-other-marker")
    process.terminate(pid, "some-other-marker")  # wrong marker: must not be signalled
    assert process.is_alive(pid, marker)
    process.terminate(pid, marker, timeout_s=10)
    assert not process.is_alive(pid, marker)


def test_terminate_escalates_to_sigkill(tmp_path):
    script = tmp_path / "stubborn.py"
    script.write_text("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True: time.sleep(0.1)\n")
    pid = process.spawn([sys.executable, str(script)], tmp_path / "s.log", tmp_path / "s.pid")
    time.sleep(0.5)  # let it install the handler
    process.terminate(pid, str(script), timeout_s=1)
    assert not process.is_alive(pid, str(script))


def test_read_pid_of_missing_or_garbage_file(tmp_path):
    assert process.read_pid(tmp_path / "none.pid") is None
    (tmp_path / "bad.pid").write_text("not a pid")
    assert process.read_pid(tmp_path / "bad.pid") is None


def test_wait_until_returns_value_and_times_out_with_reason():
    calls = iter([None, False, 7])
    assert process.wait_until(lambda: next(calls), 5, "a value", interval_s=0.01) == 7

    def failing():
        raise ConnectionError("refused")

    with pytest.raises(ServiceError, match="waiting for the thing: refused"):
        process.wait_until(failing, 0.1, "the thing", interval_s=0.02)


def test_wait_until_gives_up_at_once_on_service_error():
    def dead():
        raise ServiceError("process exited")

    start = time.monotonic()
    with pytest.raises(ServiceError, match="process exited"):
        process.wait_until(dead, 30, "never")
    assert time.monotonic() - start < 5


def test_run_reports_the_failing_command_output():
    with pytest.raises(ServiceError, match="boom"):
        process.run([sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"], what="demo")


def test_stop_group_stops_the_leader_and_its_children_and_kills_what_ignores_sigterm():
    import os
    import subprocess

    leader = subprocess.Popen(["sh", "-c", "trap '' TERM; sleep 60 & sleep 60; wait"], start_new_session=True)
    group = leader.pid
    time.sleep(0.3)
    process.stop_group(leader, timeout_s=1)
    assert leader.poll() is not None

    def group_gone() -> bool:  # the orphaned child may linger as a zombie until init reaps it
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        return all(process.is_alive(int(pid)) is False for pid in _group_pids(group))

    process.wait_until(group_gone, 10, "the process group to be gone", interval_s=0.1)
    process.stop_group(leader)  # already stopped: harmless


def _group_pids(group: int) -> list[str]:
    from pathlib import Path

    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group:  # field 5 of /proc/PID/stat: the process group id
            pids.append(stat.parent.name)
    return pids


def test_stop_processes_waits_for_all_at_once_then_kills_what_is_left(tmp_path):
    import subprocess

    polite = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(0.1)\n"])
    script = tmp_path / "stubborn.py"
    script.write_text("import signal, sys, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                      "open(sys.argv[1], 'w').close()\nwhile True: time.sleep(0.1)\n")
    stubborn = [subprocess.Popen([sys.executable, str(script), str(tmp_path / f"{i}.ready")]) for i in range(2)]
    process.wait_until(lambda: all((tmp_path / f"{i}.ready").exists() for i in range(2)) or None, 10, "the handlers")
    started = time.monotonic()
    process.stop_processes([polite, *stubborn], timeout_s=1)
    assert time.monotonic() - started < 2.5  # one shared second, not one per process
    assert polite.returncode == -15
    assert [p.returncode for p in stubborn] == [-9, -9]


def test_resident_bytes_reads_this_process_and_nothing_for_a_gone_one():
    import os

    from monitor.services.process import resident_bytes

    mine = resident_bytes(os.getpid())
    assert mine is not None and 10 * 2**20 < mine < 64 * 2**30
    assert resident_bytes(2**22 + 12345) is None  # above the kernel's pid_max default: no such process
