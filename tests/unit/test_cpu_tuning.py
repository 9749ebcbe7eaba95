"""monitor.cpu_tuning: the fastest option by margin, the cache key and file, the CPU identity, the int8 verdict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monitor.cpu_tuning import (
    CpuIdentity,
    Int8Check,
    Tuning,
    choose_fastest,
    int8_allowed,
    label_agreement,
    parse_cgroup_cpu_limit,
    parse_cpuinfo,
    read_tuning,
    thread_candidates,
    tuning_key,
    write_int8_check,
    write_tuning,
)

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz
physical id\t: 0
core id\t: 0
flags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz
physical id\t: 0
core id\t: 0
flags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni

processor\t: 2
model name\t: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz
physical id\t: 0
core id\t: 1
flags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni
"""


def test_the_fastest_wins_only_by_the_margin():
    assert choose_fastest({"float32": 40.0, "bfloat16": 72.0, "int8": 60.0}, baseline="float32") == "bfloat16"
    # 3% faster is within the noise of two short timings: the exact fp32 stays.
    assert choose_fastest({"float32": 40.0, "bfloat16": 41.2}, baseline="float32") == "float32"
    assert choose_fastest({"float32": 40.0, "bfloat16": 30.0}, baseline="float32") == "float32"
    assert choose_fastest({"2": 10.0, "4": 12.0}, baseline="2") == "4"
    with pytest.raises(ValueError):
        choose_fastest({"bfloat16": 1.0}, baseline="float32")


def test_cpuinfo_gives_model_flags_and_physical_cores():
    cpu = parse_cpuinfo(CPUINFO)
    assert cpu.model_name == "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz"
    assert "avx512_bf16" in cpu.flags and cpu.physical_cores == 2  # 3 logical CPUs on 2 cores
    assert cpu.features() == {"bf16": True, "amx": False, "vnni": True}
    bare = parse_cpuinfo("processor : 0\n")
    assert bare.model_name == "unknown CPU" and bare.physical_cores is None and not bare.flags


def test_the_key_changes_with_everything_a_timing_depends_on():
    cpu = parse_cpuinfo(CPUINFO)
    base = dict(torch_version="2.5.0", model_version="adr-abc123", threads=2, candidates=["float32", "bfloat16"])
    key = tuning_key(cpu, **base)
    assert key == tuning_key(parse_cpuinfo(CPUINFO), **base)
    other_flags = CpuIdentity(cpu.model_name, cpu.flags | {"amx_bf16"}, cpu.physical_cores)
    variants = [tuning_key(other_flags, **base), tuning_key(CpuIdentity("AMD EPYC", cpu.flags), **base)]
    for field, value in [("torch_version", "2.6.0"), ("model_version", "adr-def456"), ("threads", 4),
                         ("candidates", ["float32", "bfloat16", "int8"])]:
        variants.append(tuning_key(cpu, **{**base, field: value}))
    assert len({key, *variants}) == len(variants) + 1


def test_cache_round_trip_keeps_entries_and_marks_the_source(tmp_path: Path):
    path = tmp_path / "sub" / "cpu-tuning.json"
    assert read_tuning(path, "k1") is None
    tuning = Tuning("bfloat16", 2, {"float32": 40.0, "bfloat16": 71.5}, {}, "16 x 64 tokens")
    write_tuning(path, "k1", tuning)
    write_tuning(path, "k2", Tuning("float32", 4, {"float32": 50.0}))
    again = read_tuning(path, "k1")
    assert again is not None and again.source == "cache"
    assert (again.dtype, again.threads, again.rates, again.measured_on) == ("bfloat16", 2, tuning.rates,
                                                                            "16 x 64 tokens")
    assert read_tuning(path, "k2").threads == 4 and read_tuning(path, "k3") is None
    assert not list(path.parent.glob("*.tmp"))


def test_the_cache_keeps_the_newest_entries(tmp_path: Path):
    path = tmp_path / "cpu-tuning.json"
    for i in range(5):
        write_tuning(path, f"k{i}", Tuning("float32", 1), keep=3)
    write_tuning(path, "k2", Tuning("int8", 1), keep=3)  # rewritten: now the newest
    assert list(json.loads(path.read_text())["entries"]) == ["k3", "k4", "k2"]


@pytest.mark.parametrize("content", ["{not json", "[]", '{"entries": 3}', "", '{"entries": {"k": {"dtype": "fp4", '
                                     '"threads": 2}}}', '{"entries": {"k": {"threads": "x", "dtype": "int8"}}}'])
def test_a_corrupt_cache_is_ignored_and_then_replaced(tmp_path: Path, content: str):
    path = tmp_path / "cpu-tuning.json"
    path.write_text(content)
    assert read_tuning(path, "k") is None
    write_tuning(path, "k", Tuning("float32", 2))
    assert read_tuning(path, "k").dtype == "float32"


def test_thread_candidates_start_with_torchs_own_and_respect_a_quota():
    assert thread_candidates(2, physical_cores=2, usable_cpus=2, cgroup_limit=None) == [2]
    assert thread_candidates(8, physical_cores=8, usable_cpus=16, cgroup_limit=None) == [8, 16]
    assert thread_candidates(32, physical_cores=32, usable_cpus=64, cgroup_limit=4) == [32, 64, 4]
    assert thread_candidates(4, physical_cores=None, usable_cpus=4, cgroup_limit=None) == [4]
    assert parse_cgroup_cpu_limit("max 100000") is None
    assert parse_cgroup_cpu_limit("250000 100000\n") == 3
    assert parse_cgroup_cpu_limit("garbage") is None


def _check(**changes) -> Int8Check:
    base = dict(model_version="adr-abc", rows=400, measured_on="test split", agreement=0.995, metric="f1_positive",
                metric_float32=0.700, metric_int8=0.697)
    return Int8Check(**{**base, **changes})


def test_int8_needs_agreement_and_a_metric_within_half_a_point():
    assert _check().passed
    assert not _check(agreement=0.985).passed
    assert not _check(metric_int8=0.694).passed  # -0.6 point
    assert not _check(metric_int8=0.706).passed  # +0.6 point: a different model, too
    assert label_agreement(["a", "b", "a"], ["a", "b", "b"]) == pytest.approx(2 / 3)


def test_int8_is_allowed_only_by_a_passing_check_of_these_weights(tmp_path: Path):
    assert int8_allowed(tmp_path, "adr-abc") == (False, "no cpu_int8.json (run `monitor models check-int8`)")
    write_int8_check(tmp_path, _check())
    allowed, why = int8_allowed(tmp_path, "adr-abc")
    assert allowed and "int8 allowed" in why
    assert int8_allowed(tmp_path, "adr-retrained")[0] is False
    write_int8_check(tmp_path, _check(agreement=0.9))
    assert int8_allowed(tmp_path, "adr-abc")[0] is False
    (tmp_path / "cpu_int8.json").write_text("{")
    assert int8_allowed(tmp_path, "adr-abc")[0] is False
