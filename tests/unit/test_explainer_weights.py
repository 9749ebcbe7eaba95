"""The explainer's weights choice, without timing anything: eligibility, keys, the remembered choice."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.cpu_tuning import CpuIdentity, read_cpu_identity, write_entry
from monitor.errors import ModelError
from monitor.explainer import weights as w


def test_only_small_low_bit_files_are_worth_a_q8_0_copy():
    assert w.not_eligible(3, 100 << 20) is None  # Q4_1, 100 MiB
    assert w.not_eligible(15, w.MAX_BYTES) is None  # Q4_K_M at the limit
    assert "bound by memory" in w.not_eligible(15, w.MAX_BYTES + 1)
    for already in (0, 1, 7, 18, 32, None):  # F32, F16, Q8_0, Q6_K, BF16, unknown
        assert "not 2-5 bits" in w.not_eligible(already, 10 << 20)


def test_the_key_names_machine_build_file_and_threads():
    cpu = CpuIdentity("AMD EPYC", frozenset({"avx2", "avx512f"}), 2)
    key = w.choice_key(cpu, llama_version="0.3.36", fingerprint="abc123", threads=1)
    assert key.startswith("abc123 | llama-cpp-python 0.3.36 | 1 threads | AMD EPYC | flags ")
    assert key != w.choice_key(cpu, llama_version="0.3.36", fingerprint="abc123", threads=2)
    other = CpuIdentity("AMD EPYC", frozenset({"avx2"}), 2)
    assert key != w.choice_key(other, llama_version="0.3.36", fingerprint="abc123", threads=1)


def test_as_configured_and_no_cache_never_touch_the_file(tmp_path: Path):
    source = tmp_path / "model.gguf"  # never opened: nothing is timed or copied
    chosen = w.choose_weights(source, weights="as_configured", threads=1, fingerprint="f", cache=tmp_path)
    assert (chosen.weights, chosen.path, chosen.source) == ("as_configured", source, "configured")
    auto = w.choose_weights(source, weights="auto", threads=1, fingerprint="f", cache=None)
    assert auto.weights == "as_configured" and "no weights cache" in auto.why
    gpu = w.choose_weights(source, weights="auto", threads=1, fingerprint="f", cache=tmp_path, gpu_layers=-1)
    assert (gpu.weights, gpu.path) == ("as_configured", source) and "GPU" in gpu.why
    with pytest.raises(ModelError, match="WEIGHTS_CACHE"):
        w.choose_weights(source, weights="q8_0", threads=1, fingerprint="f", cache=None)


def test_a_remembered_choice_is_used_without_timing(tmp_path: Path, monkeypatch):
    import llama_cpp

    source = tmp_path / "model.gguf"
    key = w.choice_key(read_cpu_identity(), llama_version=llama_cpp.__version__, fingerprint="f00d", threads=1)
    write_entry(tmp_path / w.CHOICES_FILE, key, {"weights": "as_configured", "seconds": {"as_configured": 0.5,
                                                                                        "q8_0": 0.52}, "why": "x"})
    chosen = w.choose_weights(source, weights="auto", threads=1, fingerprint="f00d", cache=tmp_path)
    assert (chosen.weights, chosen.path, chosen.source) == ("as_configured", source, "cache")
    assert chosen.seconds == {"as_configured": 0.5, "q8_0": 0.52}
    assert "as_configured (cache: as_configured 500 ms, q8_0 520 ms; x)" == chosen.describe()
    # Another thread count is another question: the file is looked at again (here an F16 file, which is
    # not worth a copy: decided without timing) and the answer remembered beside the first.
    source.write_bytes(b"\0" * 1024)
    looked: list[Path] = []
    monkeypatch.setattr(w, "file_type", lambda path: looked.append(path) or 1)
    monkeypatch.setattr(w, "time_weights", lambda *a, **k: pytest.fail("nothing to time"))
    fresh = w.choose_weights(source, weights="auto", threads=2, fingerprint="f00d", cache=tmp_path)
    assert (fresh.weights, fresh.source, looked) == ("as_configured", "measured", [source])
    assert "not 2-5 bits" in fresh.why
    again = w.choose_weights(source, weights="auto", threads=2, fingerprint="f00d", cache=tmp_path)
    assert again.source == "cache" and looked == [source]
