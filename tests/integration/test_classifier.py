"""The classifier's inference paths agree: fp32 vs bf16 weights, overlapped vs inline tokenising, CPU vs CUDA.

Uses the session's real tiny fine-tune (conftest ``tiny_model``). The CUDA tests are marked ``gpu`` and
skip, saying so, where there is no CUDA (CI has none; a lent GPU machine runs them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from monitor.classifier import Classifier
from monitor.config import ClassifierSettings
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


def _load(model: Path, **settings) -> Classifier:
    return Classifier.load(model, ClassifierSettings(**{"device": "cpu", "batch_size": 32, **settings}))


def test_overlapped_tokenising_gives_the_same_logits_in_the_same_order(tiny_model: Path, texts):
    inline = _load(tiny_model, dtype="float32", overlap_tokenize=False).logits(texts)
    overlapped = _load(tiny_model, dtype="float32", overlap_tokenize=True).logits(texts)
    np.testing.assert_allclose(overlapped, inline, rtol=1e-5, atol=1e-5)
    # Order is the caller's, whatever the length grouping did: one post alone gives its own row.
    alone = _load(tiny_model, dtype="float32").logits([texts[7]])
    np.testing.assert_allclose(alone[0], inline[7], rtol=1e-4, atol=1e-4)


def test_bf16_weights_keep_the_fp32_labels(tiny_model: Path, texts):
    fp32 = _load(tiny_model, dtype="float32")
    bf16 = _load(tiny_model, dtype="bfloat16")
    assert fp32.dtype == "float32" and bf16.dtype == "bfloat16"
    p32, p16 = fp32.predict_proba(texts), bf16.predict_proba(texts)
    assert (p32.argmax(1) == p16.argmax(1)).mean() >= 0.99
    assert np.abs(p32 - p16).max() < 0.05


@pytest.mark.gpu
@needs_cuda
def test_cuda_path_agrees_with_cpu_fp32(tiny_model: Path, texts):
    cpu = _load(tiny_model, dtype="float32").predict_proba(texts)
    gpu = Classifier.load(tiny_model, ClassifierSettings(device="cuda", batch_size=64))
    assert gpu.dtype == "bfloat16" and gpu.overlap_tokenize
    probs = gpu.predict_proba(texts)
    assert (cpu.argmax(1) == probs.argmax(1)).mean() >= 0.99
    assert np.abs(cpu - probs).max() < 0.05
