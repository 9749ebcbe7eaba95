"""Real training on a small slice of the shared data, on CPU: the model folder loads and predicts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from monitor.classifier import EncoderClassifier
from monitor.config import ClassifierSettings
from monitor.model_card import read_card
from monitor.tasks import load_task

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.fixture(scope="module")
def trained(tiny_model: Path) -> Path:
    return tiny_model


def test_model_folder_is_complete_and_described(trained: Path):
    for name in ("model.safetensors", "config.json", "tokenizer.json", "model_card.json", "lexical.npz"):
        assert (trained / name).exists(), name
    card = read_card(trained)
    assert card.served == "stack" and card.stack is not None
    assert card.stack.meta == "pool" and len(card.stack.weights) == 2 and min(card.stack.weights) >= 0
    # Every member is scored on validation (the choice of `--serve best`) and on the test split.
    assert set(card.metrics["validation"]["members"]) == set(card.metrics["members"]) == {"encoder", "lexical", "stack"}
    assert card.metrics["members"]["stack"] == card.metrics["test"]
    assert card.labels == list(load_task("rmhd27_social_anxiety").labels)
    assert card.format_version == 2 and card.calibration is not None and card.decision is not None
    assert card.calibration.dtype == "float32" and card.calibration.method in ("none", "temperature", "vector")
    assert 0 < card.escalation_threshold <= 1
    assert card.metrics["validation"]["escalated_share"] <= 0.10 + 1e-9
    assert card.data["sha256"] and card.data["split"]["train_used"] <= 240
    assert card.data["balancing"]["augmentation"]["made"] > 0
    assert card.versions["torch"] and card.training["seconds"] > 0
    for plot in ("confusion_test.png", "reliability_test.png", "reliability_validation.png",
                 "precision_recall_test.png"):
        assert (trained / "plots" / plot).read_bytes()[:4] == b"\x89PNG"


def test_calibration_does_not_make_probabilities_worse(trained: Path):
    """The default recipe (bias tuning on) calibrates apart from its decision rule: its test ECE after
    calibration is no worse than the raw softmax's (once, biases folded in made it 4x worse)."""
    card = read_card(trained)
    validation, test, raw = card.metrics["validation"], card.metrics["test"], card.metrics["test_uncalibrated"]
    assert validation["ece_after"] <= validation["ece_before"]
    assert test["ece"] <= raw["ece"], (raw["ece"], test["ece"], card.calibration)
    # The served probabilities are the calibration's, whatever the decision rule does with them.
    logits = np.array([[2.0, -1.0], [-0.5, 0.5], [0.1, 0.0]])
    np.testing.assert_allclose(card.probabilities(logits), card.calibration.apply(logits))


def test_loaded_model_predicts_calibrated_probabilities(trained: Path):
    classifier = EncoderClassifier.load(trained, ClassifierSettings(device="cpu", batch_size=4))
    texts = ["I was diagnosed with social anxiety disorder last year and I still can't order food on the phone.",
             "What is the best index fund for a first-time investor?", "x" * 50_000, "🙂"]
    probs = classifier.predict_proba(texts)
    assert probs.shape == (4, len(classifier.labels))
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    # Order of inputs does not matter (length-sorted batching must put results back in place).
    again = classifier.predict_proba(texts[::-1])[::-1]
    assert np.allclose(probs, again, atol=1e-4)


def test_evaluate_command_writes_report_and_plots(trained: Path, tmp_path: Path):
    data = SHARED / "rmhd27" / "rmhd27_dev.csv"
    # In the dtype training scored the test split in (fp32 on a CPU), the figures are the card's to the
    # last digit (dtype=auto may serve bf16 on this CPU, whose logits differ in the last digits).
    env = {**os.environ, "MONITOR_CLASSIFIER__DTYPE": "float32"}
    done = subprocess.run([sys.executable, "-m", "monitor.cli", "evaluate", str(trained), str(data), "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["rows"] == "held-out test split"
    assert report["n"] == read_card(trained).metrics["test"]["n"]
    assert abs(report["task_metric"]["value"] - read_card(trained).metrics["test"]["task_metric"]["value"]) < 1e-6
    for plot in ("confusion.png", "reliability.png", "precision_recall.png"):
        assert (tmp_path / plot).exists()


def test_calibrating_for_another_serving_dtype_is_kept_and_used(trained: Path, tmp_path: Path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(trained, model)
    before = EncoderClassifier.load(model, ClassifierSettings(device="cpu", dtype="int8", tuning_cache=None))
    # Served in another dtype than it was calibrated in: said (and logged), not silently mixed.
    assert before.calibration is None
    assert "calibration fitted on float32 logits, serving int8" in before.calibration_note
    data = SHARED / "rmhd27" / "rmhd27_dev.csv"
    done = subprocess.run([sys.executable, "-m", "monitor.cli", "models", "calibrate", str(model), str(data),
                           "--dtype", "int8"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "held-out validation split" in done.stdout
    card = read_card(model)
    assert card.recalibrated["int8"].dtype == "int8" and card.calibration.dtype == "float32"
    after = EncoderClassifier.load(model, ClassifierSettings(device="cpu", dtype="int8", tuning_cache=None))
    assert after.calibration == card.recalibrated["int8"] and not after.calibration_note
    fp32 = EncoderClassifier.load(model, ClassifierSettings(device="cpu", dtype="float32", tuning_cache=None))
    assert fp32.calibration == card.calibration and not fp32.calibration_note
