"""The balancing ablation: does each piece of ALEX's recipe earn its place on this task?

Rows, all on the same seeded split and held-out test set: a TF-IDF + logistic-regression floor,
frozen encoder features + logistic regression, a plain fine-tune, + class weights and resampling,
the full recipe with augmentation, the word+char lexical model, the full recipe stacked with it, and
``default``: what ``monitor train`` serves (the stack, or the encoder when validation is too small to fit one).
Fine-tuned rows and the lexical row serve calibrated probabilities with their own decision rule;
the two floors are plain arg-max (the "arg-max" column shows every row without a decision rule). Written as Markdown, JSON and a bar chart.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monitor.errors import ConfigError
from monitor.evaluation import Report, pyplot
from monitor.tasks import TaskDefinition
from monitor.training.finetune import FineTuneConfig
from monitor.training.recipe import BalanceOptions, DataOptions, prepare, report_for, train_model

FINE_TUNES: dict[str, BalanceOptions] = {
    "finetune_plain": BalanceOptions.none(),
    "finetune_weights_resampling": BalanceOptions(augment=False),
    "finetune_alex": BalanceOptions(),
}
#: The full recipe stacked with the lexical model: one training gives this row, the lexical model's
#: (``lexical_lr``, word+char TF-IDF with its own calibration and decision) and, when asked for, the
#: full recipe's encoder alone (``finetune_alex``).
STACKED = "stack_alex"
#: What ``monitor train`` serves by default, from the same training as the stack.
DEFAULT = "default"
VARIANTS = ("tfidf_lr", "frozen_encoder_lr", *FINE_TUNES, "lexical_lr", STACKED, DEFAULT)
#: Rows that come from the stacked training's card.
FROM_STACKED = ("lexical_lr", STACKED, DEFAULT)


def _row(variant: str, report: Report, *, seconds: float, train_rows: int, tuned: Report | None = None) -> dict:
    final = tuned or report
    return {
        "variant": variant,
        "task_metric_name": report.task_metric_name,
        "task_metric_argmax": report.task_metric,
        "task_metric": final.task_metric,
        "macro_f1": final.macro_f1,
        "micro_f1": final.micro_f1,
        "ece": final.ece,
        "ece_if_calibrated": final.ece_if_calibrated,
        "per_class_f1": {label: s.f1 for label, s in final.per_class.items()},
        "train_rows": train_rows,
        "seconds": round(seconds, 1),
    }


def _card_row(variant: str, card: Any, final: dict, *, argmax: dict | None = None) -> dict:
    """A row from a trained folder's card: ``final`` is one of its test reports (served or a member's)."""
    lexical = variant == "lexical_lr"  # trained on the split's own rows (no augmentation), in seconds
    extra = {"serves": card.served, "validation": card.metrics["validation"].get("members", {})} \
        if variant == DEFAULT else {}
    return {**extra,
        "variant": variant,
        "task_metric_name": final["task_metric"]["name"],
        "task_metric_argmax": (argmax or final)["task_metric"]["value"],
        "task_metric": final["task_metric"]["value"],
        "macro_f1": final["macro_f1"],
        "micro_f1": final["micro_f1"],
        "ece": final["ece"],
        "ece_if_calibrated": final.get("ece_if_calibrated"),
        "per_class_f1": {label: s["f1"] for label, s in final["per_class"].items()},
        "train_rows": card.data["split"]["train_used"] if lexical else sum(card.data["balancing"]["after"].values()),
        "seconds": card.data["stack"].get("lexical_seconds", 0.0) if lexical else round(card.training["seconds"], 1),
    }


def _logistic_regression(seed: int):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(class_weight="balanced", max_iter=3000, C=2.0, random_state=seed)


def tfidf_floor(task: TaskDefinition, train, test, seed: int) -> tuple[np.ndarray, int]:
    """Class-weighted logistic regression over word 1-2-gram TF-IDF: the classic floor."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=200_000)
    x_train = vectorizer.fit_transform([e.text for e in train])
    model = _logistic_regression(seed).fit(x_train, [e.label for e in train])
    probs = model.predict_proba(vectorizer.transform([e.text for e in test]))
    order = [list(model.classes_).index(label) for label in task.labels]
    return probs[:, order], len(train)


def mean_pooled(model_path: Path, texts: Sequence[str], max_length: int, device: str) -> np.ndarray:
    """Sentence embeddings of a frozen encoder: attention-masked mean of the last hidden states."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModel, AutoTokenizer

    from monitor.classifier import pad_batch
    from monitor.encoding import encode, length_sorted_batches

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    encoder = AutoModel.from_pretrained(model_path).to(device).eval()
    ids = encode(tokenizer, texts, max_length=max_length)
    out = np.zeros((len(texts), encoder.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for batch in length_sorted_batches([len(i) for i in ids], 64):
            x, mask = pad_batch([ids[i] for i in batch], tokenizer.pad_token_id or 0)
            hidden = encoder(input_ids=x.to(device), attention_mask=mask.to(device)).last_hidden_state.float()
            m = mask.to(device).unsqueeze(-1).float()
            out[batch] = ((hidden * m).sum(1) / m.sum(1).clamp(min=1)).cpu().numpy()
    return out


def frozen_encoder_floor(task: TaskDefinition, train, test, config: FineTuneConfig) -> tuple[np.ndarray, int]:
    from monitor.classifier import resolve_device

    device = resolve_device(config.device)
    x_train = mean_pooled(config.model_path, [e.text for e in train], config.max_length, device)
    x_test = mean_pooled(config.model_path, [e.text for e in test], config.max_length, device)
    model = _logistic_regression(config.seed).fit(x_train, [e.label for e in train])
    probs = model.predict_proba(x_test)
    order = [list(model.classes_).index(label) for label in task.labels]
    return probs[:, order], len(train)


def run_ablation(
    task: TaskDefinition,
    task_source: str,
    data_path: Path,
    out_dir: Path,
    *,
    data_options: DataOptions,
    finetune_config: FineTuneConfig,
    variants: Sequence[str] = VARIANTS,
    synonyms: Any = None,
    progress: Any = None,
) -> list[dict]:
    """Run each variant; return its row. Fine-tuned model folders are kept under ``out_dir``."""
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ConfigError(f"unknown ablation variants: {sorted(unknown)} (known: {', '.join(VARIANTS)})")
    out_dir.mkdir(parents=True, exist_ok=True)
    prepared = prepare(task, data_path, data_options)
    test = prepared.splits.test
    gold = [e.label for e in test]
    rows = []
    stacked_card = None
    if set(FROM_STACKED) & set(variants):
        stacked_card = train_model(task, task_source, data_path, out_dir / STACKED, data_options=data_options,
                                   balance_options=FINE_TUNES["finetune_alex"], finetune_config=finetune_config,
                                   serve="stack", synonyms=synonyms, progress=progress)
    for variant in variants:
        started = time.monotonic()
        if variant in FROM_STACKED or (variant == "finetune_alex" and stacked_card is not None):
            assert stacked_card is not None
            members = stacked_card.metrics["members"]
            if variant == STACKED and "stack" not in members:
                continue  # validation too small to fit a stack on (the card says so)
            report = {STACKED: members.get("stack"), "lexical_lr": members["lexical"], "finetune_alex": members["encoder"],
                      DEFAULT: stacked_card.metrics["test"]}[variant]
            rows.append(_card_row(variant, stacked_card, report))
        elif variant == "tfidf_lr":
            probs, n = tfidf_floor(task, prepared.train, test, data_options.seed)
            rows.append(_row(variant, report_for(task, gold, probs), seconds=time.monotonic() - started, train_rows=n))
        elif variant == "frozen_encoder_lr":
            probs, n = frozen_encoder_floor(task, prepared.train, test, finetune_config)
            rows.append(_row(variant, report_for(task, gold, probs), seconds=time.monotonic() - started, train_rows=n))
        else:
            card = train_model(task, task_source, data_path, out_dir / variant, data_options=data_options,
                               balance_options=FINE_TUNES[variant], finetune_config=finetune_config,
                               synonyms=synonyms, progress=progress)
            rows.append(_card_row(variant, card, card.metrics["test"], argmax=card.metrics["test_uncalibrated"]))
    write_ablation(rows, task, prepared.notes, dataclasses.asdict(finetune_config), out_dir)
    return rows


def ablation_markdown(rows: Sequence[dict], task: TaskDefinition) -> str:
    labels = list(task.labels)
    head = ["variant", f"{rows[0]['task_metric_name']} (arg-max)", "task metric (served rule)", "macro-F1", "micro-F1",
            "ECE", *[f"F1 {label}" for label in labels], "train rows", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        name = f"{r['variant']} (= {r['serves']})" if r.get("serves") else r["variant"]
        cells = [name, f"{r['task_metric_argmax']:.4f}", f"{r['task_metric']:.4f}", f"{r['macro_f1']:.4f}",
                 f"{r['micro_f1']:.4f}", f"{r['ece']:.4f}" if r["ece"] is not None else "-",
                 *[f"{r['per_class_f1'][label]:.3f}" for label in labels], str(r["train_rows"]), f"{r['seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_ablation(rows: Sequence[dict], task: TaskDefinition, data_notes: dict, config: dict, out_dir: Path) -> None:
    (out_dir / "ablation.md").write_text(f"# Ablation: {task.name}\n\n" + ablation_markdown(rows, task))
    payload = {"task": task.name, "rows": list(rows), "data": data_notes,
               "finetune_config": {k: str(v) for k, v in config.items()}}
    (out_dir / "ablation.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["task_metric"] for r in rows], 0.4, label=rows[0]["task_metric_name"])
    ax.bar(x + 0.2, [r["macro_f1"] for r in rows], 0.4, label="macro-F1")
    ax.set_xticks(x, [r["variant"] for r in rows], rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title(f"{task.name}: balancing ablation (held-out test)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "ablation.png", dpi=120)
    plt.close(fig)
