"""The trained classifier at inference: load a model folder once, predict calibrated probabilities.

The only torch user outside ``training/``. Texts are encoded exactly as in training
(``monitor.encoding``), sorted by length and batched so padding stays small; on CUDA the weights
are cast to bf16 (faster than autocast over fp32 weights for an encoder this size), and on CPUs
that compute bf16 natively too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from monitor.config import ClassifierSettings
from monitor.encoding import encode, length_sorted_batches, normalise_text, precut
from monitor.errors import ModelError
from monitor.model_card import ModelCard, read_card, softmax


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {requested!r} requested but CUDA is not available (set MONITOR_CLASSIFIER__DEVICE=cpu)")
    return requested


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU computes bf16 in hardware (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    try:
        flags = cpuinfo.read_text(errors="replace")
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def resolve_dtype(requested: str, device: str):  # noqa: ANN201 - torch.dtype
    """float32 or bfloat16 weights. ``auto`` casts to bf16 where the hardware runs it natively.

    Measured on a 2-core AVX512-BF16 EPYC with fine-tuned MiniLM: bf16 weights 1.8x the fp32 rate,
    the same predicted label on 512 of 512 reviews, probabilities within 0.006.
    """
    import torch

    if requested == "float32":
        return torch.float32
    if requested == "bfloat16" or device.startswith("cuda") or cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int):
    """input_ids and attention_mask tensors, right-padded to the longest sequence of the batch."""
    import torch

    width = max(len(s) for s in sequences)
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)


class Classifier:
    """A fine-tuned sequence classifier with its model card (labels, temperature, biases, threshold)."""

    def __init__(self, model, tokenizer, card: ModelCard, *, device: str, batch_size: int,  # noqa: ANN001
                 overlap_tokenize: bool | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.card = card
        self.device = device
        self.batch_size = batch_size
        # Tokenising batch k+1 in a thread while batch k runs pays off where the forward pass does not
        # need the CPU (CUDA); on a CPU the tokenizer would only take cores from the matrix products.
        self.overlap_tokenize = device.startswith("cuda") if overlap_tokenize is None else overlap_tokenize
        self._tokenize_pool: ThreadPoolExecutor | None = None
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
        model = model.to(device=device, dtype=resolve_dtype(settings.dtype, device))
        model.eval()
        return cls(model, tokenizer, card, device=device, batch_size=settings.batch_size,
                   overlap_tokenize=settings.overlap_tokenize)

    @property
    def dtype(self) -> str:
        return str(next(self.model.parameters()).dtype).removeprefix("torch.")

    @property
    def model_version(self) -> str:
        return self.card.model_version

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Normalise (as the training rows were) and encode."""
        return self._encode_cut([self._cut(t) for t in texts])

    def _cut(self, text: str) -> str:
        return precut(normalise_text(text), self.card.max_length, self.card.truncation,  # type: ignore[arg-type]
                      self.card.head_fraction)

    def _encode_cut(self, texts: Sequence[str]) -> list[list[int]]:
        return encode(self.tokenizer, texts, max_length=self.card.max_length,
                      truncation=self.card.truncation, head_fraction=self.card.head_fraction)  # type: ignore[arg-type]

    def _tensors(self, texts: Sequence[str]):  # noqa: ANN202
        ids, mask = pad_batch(self._encode_cut(texts), self.tokenizer.pad_token_id or 0)
        if self.device.startswith("cuda"):  # pinned host memory: the copy overlaps the previous batch
            ids, mask = ids.pin_memory(), mask.pin_memory()
        return ids, mask

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """Raw logits, in the order of ``texts``.

        Texts are cut by characters first (a 1 MB post never reaches the tokenizer whole), then
        grouped by character length, a close proxy for token length, so each batch pads to a
        similar width; with ``overlap_tokenize`` the next batch is tokenised while this one runs.
        """
        import torch

        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        if not texts:
            return out
        cut = [self._cut(t) for t in texts]
        batches = length_sorted_batches([len(t) for t in cut], self.batch_size)
        prepare = lambda batch: self._tensors([cut[i] for i in batch])  # noqa: E731
        pool = self._pool() if self.overlap_tokenize and len(batches) > 1 else None
        pending = pool.submit(prepare, batches[0]) if pool else None
        with torch.inference_mode():
            for k, batch in enumerate(batches):
                ids, mask = pending.result() if pending is not None else prepare(batch)
                if pool is not None and k + 1 < len(batches):
                    pending = pool.submit(prepare, batches[k + 1])
                result = self.model(input_ids=ids.to(self.device, non_blocking=True),
                                    attention_mask=mask.to(self.device, non_blocking=True)).logits
                out[batch] = result.float().cpu().numpy()
        return out

    def _pool(self) -> ThreadPoolExecutor:
        if self._tokenize_pool is None:
            self._tokenize_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")
        return self._tokenize_pool

    def calibrate(self, logits: np.ndarray) -> np.ndarray:
        return softmax(logits, self.card.temperature, self.biases)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Calibrated class probabilities: softmax((logits + card biases) / card temperature)."""
        return self.calibrate(self.logits(texts))
