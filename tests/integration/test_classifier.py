"""The classifier's inference paths agree: fp32 vs bf16 vs int8 weights, overlapped vs inline tokenising,
CPU vs CUDA; dtype=auto on a CPU measures once and then reads its cache.

Uses the session's real tiny fine-tune (conftest ``tiny_model``). The CUDA tests are marked ``gpu`` and
skip, saying so, where there is no CUDA (CI has none; a lent GPU machine runs them). No timing is
asserted here: which dtype wins is the machine's business, speed is for the benchmarks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from typer.testing import CliRunner

from monitor.classifier import EncoderClassifier, with_weights
from monitor.cli import app
from monitor.config import ClassifierSettings
from monitor.errors import ModelError
from monitor.tasks import load_task
from monitor.corpus import load_examples

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@pytest.fixture(scope="module")
def texts() -> list[str]:
    examples = load_examples(SHARED / "rmhd27" / "rmhd27_dev.csv", load_task("rmhd27_social_anxiety")).examples
    picked = [e.text for e in examples[:300]]
    # Edge cases the batching must keep in order: empty-ish, very long, odd Unicode.
    return [*picked, "ok", "x" * 100_000, "\u202e\u0644\u0627 \U0001f600 caf\u00e9"]


def _load(model: Path, **settings) -> EncoderClassifier:
    defaults = {"device": "cpu", "batch_size": 32, "tuning_cache": None}
    return EncoderClassifier.load(model, ClassifierSettings(**{**defaults, **settings}))


def test_overlapped_tokenising_gives_the_same_logits_in_the_same_order(tiny_model: Path, texts):
    inline = _load(tiny_model, dtype="float32", overlap_tokenize=False).logits(texts)
    overlapped = _load(tiny_model, dtype="float32", overlap_tokenize=True).logits(texts)
    np.testing.assert_allclose(overlapped, inline, rtol=1e-5, atol=1e-5)
    # Order is the caller's, whatever the length grouping did: one post alone gives its own row.
    alone = _load(tiny_model, dtype="float32").logits([texts[7]])
    np.testing.assert_allclose(alone[0], inline[7], rtol=1e-4, atol=1e-4)


def test_texts_that_encode_alike_go_through_the_model_once(tiny_model: Path, texts):
    classifier = _load(tiny_model, dtype="float32")
    seen: list[int] = []
    hook = classifier.model.register_forward_hook(lambda _m, args, kwargs, _out: seen.append(
        kwargs["input_ids"].shape[0]), with_kwargs=True)
    # Two long posts that differ only in the middle, which the card's truncation cuts (head+tail or head).
    start, end = texts[0] + " " + "filler words " * 300, " closing words" * 300
    batch = [texts[1], texts[2], texts[1], start + " one middle " + end, start + " another middle " + end, texts[2]]
    try:
        logits = classifier.encoder_logits(batch)  # the encoder's (a stack's lexical member reads whole posts)
    finally:
        hook.remove()
    assert sum(seen) == 3  # texts[1], texts[2] and the long post (its two middles never reach the model)
    np.testing.assert_array_equal(logits[0], logits[2])
    np.testing.assert_array_equal(logits[3], logits[4])
    np.testing.assert_allclose(logits[:2], classifier.encoder_logits(batch[:2]), rtol=1e-5, atol=1e-5)


def test_bf16_weights_keep_the_fp32_labels(tiny_model: Path, texts):
    fp32 = _load(tiny_model, dtype="float32")
    bf16 = _load(tiny_model, dtype="bfloat16")
    assert fp32.dtype == "float32" and bf16.dtype == "bfloat16"
    p32, p16 = fp32.predict_proba(texts), bf16.predict_proba(texts)
    assert (p32.argmax(1) == p16.argmax(1)).mean() >= 0.99
    assert np.abs(p32 - p16).max() < 0.05


def test_auto_on_cpu_measures_once_then_reads_the_cache(tiny_model: Path, texts, tmp_path: Path):
    cache = tmp_path / "cpu-tuning.json"
    first = _load(tiny_model, dtype="auto", tuning_cache=cache)
    assert first.tuning is not None and first.tuning.source == "measured"
    assert set(first.tuning.rates) == {"float32", "bfloat16"}  # no passing int8 check: int8 not timed
    assert first.dtype == first.tuning.dtype and first.tuning.threads == torch.get_num_threads()
    assert len(json.loads(cache.read_text())["entries"]) == 1
    second = _load(tiny_model, dtype="auto", tuning_cache=cache)
    assert second.tuning is not None and second.tuning.source == "cache"
    assert (second.dtype, second.tuning.rates) == (first.dtype, first.tuning.rates)
    fp32 = _load(tiny_model, dtype="float32").predict_proba(texts[:64])
    assert (second.predict_proba(texts[:64]).argmax(1) == fp32.argmax(1)).mean() >= 0.95
    assert _load(tiny_model, dtype="float32", tuning_cache=cache).tuning is None  # explicit: nothing timed


def test_int8_check_records_a_verdict_that_auto_then_obeys(tiny_model: Path, tmp_path: Path):
    model = tmp_path / "model"  # a copy: the verdict file must not leak into the session's shared model
    shutil.copytree(tiny_model, model)
    data = SHARED / "rmhd27" / "rmhd27_dev.csv"
    result = CliRunner().invoke(app, ["models", "check-int8", str(model), str(data), "--limit", "100"])
    assert result.exit_code == 0, result.output
    verdict = json.loads((model / "cpu_int8.json").read_text())
    print(verdict["why"])  # which way it went is the model's business; the test checks that auto obeys it
    assert verdict["rows"] == 100 and "held-out test split" in verdict["measured_on"]
    assert verdict["passed"] == (verdict["agreement"] >= 0.99 and abs(verdict["metric_move"]) < 0.005)
    auto = _load(model, dtype="auto", tuning_cache=tmp_path / "cpu-tuning.json")
    assert ("int8" in auto.tuning.rates) == verdict["passed"]
    int8 = _load(model, dtype="int8")
    assert int8.dtype == "int8"
    assert int8.predict_proba(["I can't stop worrying about what people think"]).shape == (1, 2)


def test_int8_weights_are_refused_off_the_cpu():
    with pytest.raises(ModelError, match="CPU only"):
        with_weights(torch.nn.Linear(4, 2), "int8", "cuda")


@pytest.mark.gpu
@needs_cuda
def test_cuda_path_agrees_with_cpu_fp32(tiny_model: Path, texts):
    cpu = _load(tiny_model, dtype="float32").predict_proba(texts)
    gpu = EncoderClassifier.load(tiny_model, ClassifierSettings(device="cuda", batch_size=64))
    assert gpu.dtype == "bfloat16" and gpu.overlap_tokenize
    probs = gpu.predict_proba(texts)
    assert (cpu.argmax(1) == probs.argmax(1)).mean() >= 0.99
    assert np.abs(cpu - probs).max() < 0.05
