"""The failure kinds, the backoff, the fault drills and the stall watchdog (all pure)."""

import random

import pytest
from pydantic import BaseModel, ValidationError

from monitor.errors import BrokerError, StorageError
from monitor.faults import FaultPlan, InjectedFault, StallWatchdog, backoff_delay, failure_kind
from monitor.records import RecordError


class _Strict(BaseModel):
    n: int


def _validation_error() -> ValidationError:
    try:
        _Strict.model_validate_json(b'{"n": "x"}')
    except ValidationError as exc:
        return exc
    raise AssertionError("expected a ValidationError")


class _RetriableClientError(Exception):
    retriable = True


@pytest.mark.parametrize(("error", "kind"), [
    (StorageError("database unreachable", transient=True), "transient"),
    (BrokerError("leader moved", transient=True), "transient"),
    (ConnectionResetError("peer hung up"), "transient"),
    (TimeoutError(), "transient"),
    (_RetriableClientError(), "transient"),
    (RecordError("not_json", "bad"), "poison"),
    (_validation_error(), "poison"),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad"), "poison"),
    (StorageError("value too long for type"), "unknown"),  # not marked transient: a bug or the data
    (BrokerError("message too large"), "unknown"),
    (KeyError("x"), "unknown"),
    (InjectedFault("drill"), "unknown"),
])
def test_every_error_has_one_kind(error, kind):
    assert failure_kind(error) == kind


def test_backoff_doubles_up_to_the_cap_and_is_jittered_within_the_upper_half():
    rng = random.Random(3)
    for attempt in range(12):
        step = min(30.0, 0.5 * 2**attempt)
        delays = [backoff_delay(attempt, base_s=0.5, cap_s=30.0, rng=rng) for _ in range(200)]
        assert all(step / 2 <= d <= step for d in delays)
        assert len(set(delays)) > 100  # jittered, not one value
    assert backoff_delay(10_000, base_s=0.5, cap_s=30.0, rng=rng) <= 30.0  # no overflow far out
    with pytest.raises(ValueError):
        backoff_delay(-1, base_s=1, cap_s=2, rng=rng)


def test_the_same_seed_gives_the_same_waits():
    first = [backoff_delay(a, base_s=1, cap_s=60, rng=random.Random(7)) for a in range(6)]
    assert first == [backoff_delay(a, base_s=1, cap_s=60, rng=random.Random(7)) for a in range(6)]


def test_a_failing_batch_drill_fires_once_on_its_batch_only():
    plan = FaultPlan(fail_batch_stage="persist", fail_batch_number=2)
    assert plan.new_batch("persist") == 1
    plan.before("persist", 1, ["a"])  # batch 1: nothing
    assert plan.new_batch("classify") == 1
    plan.before("classify", 1, ["a"])
    number = plan.new_batch("persist")
    with pytest.raises(InjectedFault, match="batch 2 of stage persist"):
        plan.before("persist", number, ["a"])
    plan.before("persist", number, ["a"])  # its retry succeeds


def test_a_poison_drill_fails_every_time_for_marked_records_only():
    plan = FaultPlan(poison_stage="classify", poison_marker="POISON")
    for _ in range(3):
        with pytest.raises(InjectedFault, match="x-POISON-1"):
            plan.before("classify", 1, ["a", "x-POISON-1"])
    plan.before("classify", 1, ["a", "b"])
    plan.before("persist", 1, ["x-POISON-1"])  # another stage is not affected


def test_the_watchdog_flags_a_partition_with_work_and_no_progress():
    dog = StallWatchdog(stall_after_s=60)
    tp = ("posts", 0)
    assert dog.observe({tp: (10, 50)}, now=0, waiting=False) == []
    assert dog.observe({tp: (10, 60)}, now=59, waiting=False) == []
    stalled = dog.observe({tp: (10, 70)}, now=61, waiting=False)
    assert len(stalled) == 1 and "posts[0] at offset 10" in stalled[0]


def test_the_watchdog_forgives_progress_idleness_and_known_faults():
    dog = StallWatchdog(stall_after_s=60)
    tp = ("posts", 1)
    dog.observe({tp: (10, 50)}, now=0, waiting=False)
    assert dog.observe({tp: (11, 50)}, now=100, waiting=False) == []  # it moved: the clock restarts
    assert dog.observe({tp: (11, 50)}, now=150, waiting=False) == []
    assert dog.observe({tp: (11, 50)}, now=170, waiting=True) == []   # waiting out a fault: not a stall
    assert dog.observe({tp: (11, 50)}, now=200, waiting=False) == []
    idle = StallWatchdog(stall_after_s=60)
    idle.observe({tp: (50, 50)}, now=0, waiting=False)
    assert idle.observe({tp: (50, 50)}, now=1000, waiting=False) == []  # nothing to do is not a stall
