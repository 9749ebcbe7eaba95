"""The trained classifier at inference: load a model folder once, predict calibrated probabilities.

The only torch user outside ``training/``. Texts are encoded exactly as in training
(``monitor.encoding``), sorted by length and batched so padding stays small; on CUDA the weights
are cast to bf16 (faster than autocast over fp32 weights for an encoder this size).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from monitor.config import ClassifierSettings
from monitor.encoding import encode, length_sorted_batches
from monitor.errors import ModelError
from monitor.model_card import ModelCard, read_card
from monitor.training.calibrate import softmax
from monitor.training.data import normalise_text


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {requested!r} requested but CUDA is not available (set MONITOR_CLASSIFIER__DEVICE=cpu)")
    return requested


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int):
    """input_ids and attention_mask tensors, right-padded to the longest sequence of the batch."""
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


class Classifier:
    """A fine-tuned sequence classifier with its model card (labels, temperature, biases, threshold)."""

    def __init__(self, model, tokenizer, card: ModelCard, *, device: str, batch_size: int):  # noqa: ANN001
        self.model = model
        self.tokenizer = tokenizer
        self.card = card
        self.device = device
        self.batch_size = batch_size
        self.labels = tuple(card.labels)
        self.biases = np.array(card.biases) if card.biases else None

    @classmethod
    def load(cls, folder: Path, settings: ClassifierSettings) -> Classifier:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a model folder is local by contract
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        card = read_card(folder)
        device = resolve_device(settings.device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForSequenceClassification.from_pretrained(folder)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load the model in {folder}: {exc}") from exc
        if model.config.num_labels != len(card.labels):
            raise ModelError(f"{folder}: the model has {model.config.num_labels} outputs, the card {len(card.labels)} labels")
        if device.startswith("cuda"):
            model = model.to(device=device, dtype=torch.bfloat16)
        model.eval()
        return cls(model, tokenizer, card, device=device, batch_size=settings.batch_size)

    @property
    def model_version(self) -> str:
        return self.card.model_version

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Normalise (as the training rows were) and encode."""
        texts = [normalise_text(t) for t in texts]
        return encode(self.tokenizer, texts, max_length=self.card.max_length,
                      truncation=self.card.truncation, head_fraction=self.card.head_fraction)  # type: ignore[arg-type]

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """Raw logits, in the order of ``texts``."""
        import torch

        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        if not texts:
            return out
        encoded = self.encode(texts)
        pad_id = self.tokenizer.pad_token_id or 0
        with torch.inference_mode():
            for batch in length_sorted_batches([len(e) for e in encoded], self.batch_size):
                ids, mask = pad_batch([encoded[i] for i in batch], pad_id)
                result = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
                out[batch] = result.float().cpu().numpy()
        return out

    def calibrate(self, logits: np.ndarray) -> np.ndarray:
        return softmax(logits, self.card.temperature, self.biases)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Calibrated class probabilities: softmax((logits + card biases) / card temperature)."""
        return self.calibrate(self.logits(texts))
