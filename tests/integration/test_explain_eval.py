"""`monitor explain-eval` end to end: a real fine-tuned classifier, the shipped SmolLM2 GGUF, the shared data.

The grant is decided on the model's validation split, the test split is reported beside it, and the
record is keyed by the escalation policy, so a worker escalating otherwise does not inherit it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from monitor.assessment import POLICY_FILE, Robustness, VerdictQuality, allowed_mode, decide_mode, verdict_rule
from monitor.explainer.policy import Policy
from monitor.explainer.prompts import prompt_version
from monitor.model_card import read_card
from monitor.tasks import load_task

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def test_explain_eval_decides_on_validation_and_keys_the_grant_by_policy(tiny_model: Path, tmp_path: Path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)  # the policy file is written beside the model: not into the shared one
    report_path = tmp_path / "report.json"
    env = {**os.environ, "MONITOR_DATA_DIR": str(tmp_path / "data"), "MONITOR_EXPLAINER__N_THREADS": "2",
           "COLUMNS": "250"}  # the table unwrapped
    done = subprocess.run([sys.executable, "-m", "monitor.cli", "explain-eval", str(model),
                           str(SHARED / "rmhd27" / "rmhd27_dev.csv"), "--limit", "40", "--suite-posts", "2", "--out", str(report_path)],
                          capture_output=True, text=True, env=env, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["validation"]["split"] == "held-out validation split"
    assert report["test"]["split"] == "held-out test split"
    assert report["validation"]["posts"] == report["test"]["posts"] == 40
    robustness = Robustness(**report["robustness"])
    assert robustness.cases > 0 and 0 <= robustness.attack_change_rate <= 1

    # The recorded grant is the one the validation figures give, under the policy the worker runs.
    validation = report["validation"]
    quality = VerdictQuality(**validation["quality"])
    expected, _ = decide_mode(validation["metric_before"], validation["metric_after"], validation["rejected"],
                              flips_right=validation["flips_right"], flips_wrong=validation["flips_wrong"],
                              robustness=robustness, quality=quality)
    assert validation["allowed_mode"] == expected
    # The verdicts' information, measured on validation; the test split is asked at validation's threshold.
    assert quality.cases == validation["verified"] and 0.0 <= quality.verdict_f1 <= 1.0
    assert report["test"]["quality"]["threshold"] == quality.threshold
    assert quality.informative == (quality.auroc is not None and quality.auroc >= 0.6 and quality.auroc_p < 0.05)
    assert "verdict AUROC of P(confirm)" in done.stdout and "evidence faithfulness" in done.stdout
    faithful = report["faithfulness"]
    assert faithful["posts"] + faithful["single_line"] == 40 and faithful["posts"] > 0
    [(key, entry)] = json.loads((model / POLICY_FILE).read_text()).items()
    assert entry["split"] == "held-out validation split" and entry["mode"] == expected
    assert entry["test"]["posts"] == 40 and key.endswith(Policy().escalation_key)
    card = read_card(model)
    version = prompt_version(load_task(card.training["task_source"]))
    llm = key.split("|")[0]
    assert allowed_mode(model, llm, version, Policy())[0] == expected
    assert entry["verdicts"] == validation["quality"]
    assert verdict_rule(model, llm, version, Policy())[:2] == (quality.informative, quality.threshold)
    mode, why = allowed_mode(model, llm, version, Policy(verify_signals=True))
    assert mode == "explain" and "another escalation policy" in why
    assert "adversarial suite: attacks changed" in done.stdout
