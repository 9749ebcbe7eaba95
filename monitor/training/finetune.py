"""Fine-tuning a transformers sequence classifier: dynamic padding, AdamW with warm-up, early stopping.

The best epoch is chosen on validation by the task's metric (not by loss), and its weights are the
ones returned. bf16 autocast on CUDA, fp32 on CPU. Batches are drawn from length buckets so that
dynamic padding pads little, with the bucket order shuffled under the seed.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from monitor.classifier import pad_batch, resolve_device
from monitor.encoding import Truncation, encode, length_sorted_batches
from monitor.errors import ModelError


class Labelled(Protocol):
    text: str
    label: str


@dataclass(frozen=True)
class FineTuneConfig:
    model_path: Path
    max_length: int = 256
    truncation: Truncation = "head_tail"
    head_fraction: float = 0.25
    epochs: int = 4
    batch_size: int = 16
    eval_batch_size: int = 64
    learning_rate: float = 5e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    patience: int = 2
    seed: int = 13
    device: str = "auto"


@dataclass
class FineTuneResult:
    model: Any
    tokenizer: Any
    device: str
    best_epoch: int
    best_score: float
    val_logits: np.ndarray
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def logits_dtype(self) -> str:
        """The dtype ``val_logits`` were computed in: bf16 autocast on CUDA, fp32 on a CPU."""
        return "bfloat16" if self.device.startswith("cuda") else "float32"


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def bucketed_batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffle, sort within windows of 50 batches, batch, shuffle the batches: little padding, still random."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def load_for_training(model_path: Path, labels: Sequence[str]):
    """Tokenizer and a classification head over the encoder in ``model_path`` (a local folder)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # "newly initialized classifier weights" is expected here
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        model = AutoModelForSequenceClassification.from_pretrained(
            model_path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
        )
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load a model from {model_path}: {exc}") from exc
    return tokenizer, model


def predict_logits(model, encoded: Sequence[Sequence[int]], pad_id: int, device: str, batch_size: int) -> np.ndarray:  # noqa: ANN001
    import torch

    model.eval()
    out = np.zeros((len(encoded), model.config.num_labels), dtype=np.float32)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
        for batch in length_sorted_batches([len(e) for e in encoded], batch_size):
            ids, mask = pad_batch([encoded[i] for i in batch], pad_id)
            out[batch] = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().cpu().numpy()
    return out


def fine_tune(
    train: Sequence[Labelled],
    val: Sequence[Labelled],
    labels: Sequence[str],
    *,
    score: Callable[[np.ndarray, np.ndarray], float],
    config: FineTuneConfig,
    class_weights: dict[str, float] | None = None,
    progress: Any = None,
) -> FineTuneResult:
    """Train on ``train``; keep the epoch whose ``score(pred_idx, gold_idx)`` on ``val`` is best."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    if not train or not val:
        raise ModelError("fine-tuning needs a non-empty training and validation split")
    seed_everything(config.seed)
    device = resolve_device(config.device)
    tokenizer, model = load_for_training(config.model_path, labels)
    model.to(device)
    index = {label: i for i, label in enumerate(labels)}
    enc_args = {"max_length": config.max_length, "truncation": config.truncation, "head_fraction": config.head_fraction}
    train_ids = encode(tokenizer, [e.text for e in train], **enc_args)
    val_ids = encode(tokenizer, [e.text for e in val], **enc_args)
    train_y = torch.tensor([index[e.label] for e in train], dtype=torch.long)
    val_y = np.array([index[e.label] for e in val])
    pad_id = tokenizer.pad_token_id or 0

    weight = None
    if class_weights is not None:
        weight = torch.tensor([class_weights[label] for label in labels], dtype=torch.float32, device=device)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight)
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)], "weight_decay": config.weight_decay},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    rng = random.Random(config.seed)
    lengths = [len(e) for e in train_ids]

    best_score, best_epoch, best_state, best_logits = -1.0, 0, None, None
    history: list[dict[str, float]] = []
    stale = 0
    started = time.monotonic()
    for epoch in range(1, config.epochs + 1):
        model.train()
        task = progress.add_task(f"epoch {epoch}/{config.epochs}", total=steps_per_epoch) if progress else None
        running, seen = 0.0, 0
        for batch in bucketed_batches(lengths, config.batch_size, rng):
            ids, mask = pad_batch([train_ids[i] for i in batch], pad_id)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
                logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            loss = loss_fn(logits.float(), train_y[batch].to(device))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            running += loss.item() * len(batch)
            seen += len(batch)
            if progress:
                progress.update(task, advance=1, description=f"epoch {epoch}/{config.epochs} loss {running / seen:.4f}")
        val_logits = predict_logits(model, val_ids, pad_id, device, config.eval_batch_size)
        epoch_score = float(score(val_logits.argmax(axis=1), val_y))
        history.append({"epoch": epoch, "train_loss": running / seen, "val_metric": epoch_score,
                        "seconds": time.monotonic() - started})
        if progress:
            progress.update(task, description=f"epoch {epoch}/{config.epochs} loss {running / seen:.4f} "
                                              f"val {epoch_score:.4f}")
        if epoch_score > best_score:
            best_score, best_epoch, best_logits, stale = epoch_score, epoch, val_logits, 0
            best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= config.patience:
                break
    assert best_state is not None and best_logits is not None
    model.load_state_dict(best_state)
    model.eval()
    return FineTuneResult(model, tokenizer, device, best_epoch, best_score, best_logits,
                          time.monotonic() - started, history)
