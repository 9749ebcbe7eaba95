"""The trained classifier at inference: load a model folder once, predict calibrated probabilities.

The only torch user outside ``training/``. Texts are encoded exactly as in training
(``monitor.encoding``), sorted by length and batched so padding stays small. On CUDA the weights
are cast to bf16 (faster than autocast over fp32 weights for an encoder this size). On a CPU,
``dtype=auto`` times a few forward passes of fp32, bf16 and (where the model's int8 check passed)
int8 weights at load and keeps the fastest: CPU flags do not predict it (with AVX512-BF16, one Xeon
without AMX ran our bf16 path slower than a plain fp32 pipeline while a 2-core EPYC ran bf16 1.8x
fp32; an AMX Xeon 1.9x; without either flag bf16 is emulated, about 6x slower than fp32).
The choice is cached per machine and model (``monitor.cpu_tuning``).
"""

from __future__ import annotations

import copy
import logging
import os
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from monitor.config import ClassifierSettings
from monitor.cpu_tuning import (
    Int8Check,
    Tuning,
    WeightDtype,
    choose_fastest,
    int8_allowed,
    label_agreement,
    parse_cgroup_cpu_limit,
    read_cpu_identity,
    read_tuning,
    thread_candidates,
    tuning_key,
    write_tuning,
)
from monitor.encoding import encode, length_sorted_batches, normalise_text, precut
from monitor.errors import ModelError
from monitor.evaluation import confusion_matrix, task_metric
from monitor.lexical import LexicalModel
from monitor.model_card import ModelCard, read_card

log = logging.getLogger(__name__)

# The synthetic batch dtype=auto times on a CPU: 16 posts of 64 tokens (or the card's max_length if
# shorter), one warm-up and two timed passes per option, about a second for MiniLM on 2 cores.
TUNE_POSTS = 16
TUNE_TOKENS = 64
TUNE_ROUNDS = 2
#: Batches tokenised per tokenizer call (see ``EncoderClassifier.logits``).
CHUNK_BATCHES = 8


def resolve_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {requested!r} requested but CUDA is not available (set MONITOR_CLASSIFIER__DEVICE=cpu)")
    return requested


def quantize_int8(model, *, inplace: bool = False):  # noqa: ANN001, ANN201 - torch modules
    """Dynamic int8 quantisation of every ``nn.Linear``: weights int8 per output channel, activations
    quantised per batch.

    Per-channel weight scales, not torch's per-tensor default: on the demo MiniLM fine-tune per-tensor
    int8 kept the fp32 label for 70% of 160 test posts, per-channel for 98.8% (logits 6x closer).
    ``torch.ao.quantization`` is deprecated in favour of torchao (not installed here) but still ships
    and works; if a torch release drops it, this raises ModelError and ``auto`` keeps fp32/bf16.
    """
    import torch

    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"torch\.(ao\.quantization is deprecated|quantize_per)")
            return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8,
                                    inplace=inplace)
    except (AttributeError, ImportError, RuntimeError) as exc:
        raise ModelError(f"int8 weights are not available with torch {torch.__version__}: {exc}") from exc


def with_weights(model, weights: WeightDtype, device: str):  # noqa: ANN001, ANN201 - torch modules
    """The fp32 model on ``device`` with ``weights``: as is, cast to bf16, or int8-quantised (CPU only)."""
    import torch

    if weights == "int8":
        if device != "cpu":
            raise ModelError(f"int8 weights run on the CPU only (no CUDA kernels for dynamic quantisation); "
                             f"on {device} use dtype=bfloat16 or auto")
        return quantize_int8(model.to("cpu"), inplace=True)
    return model.to(device=device, dtype=torch.bfloat16 if weights == "bfloat16" else torch.float32)


def _usable_cpus() -> int:
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else (os.cpu_count() or 1)


def _cgroup_cpu_limit() -> int | None:
    try:
        return parse_cgroup_cpu_limit(Path("/sys/fs/cgroup/cpu.max").read_text())
    except OSError:
        return None


def _synthetic_batch(model, card: ModelCard):  # noqa: ANN001, ANN202
    import torch

    tokens = min(card.max_length, TUNE_TOKENS)
    vocab = int(getattr(model.config, "vocab_size", 30522))
    # Fixed, ordinary-looking ids (past the special tokens); only the shape matters for the timing.
    ids = (torch.arange(TUNE_POSTS * tokens).reshape(TUNE_POSTS, tokens) * 7919) % max(vocab - 1000, 1) + 999
    return ids, torch.ones_like(ids)


def time_forward(variants: dict, ids, mask, *, rounds: int = TUNE_ROUNDS) -> dict[str, float]:  # noqa: ANN001
    """Posts/s of each model on one batch: a warm-up each on a quarter of it, then ``rounds``
    interleaved timed passes over all of it (the best kept). The first model is the baseline.

    Interleaving makes a change in machine load hit every option alike. An option whose warm-up took
    over 3x the best one's is not timed further: emulated bf16 (a CPU without AVX512-BF16 or AMX)
    runs several times slower than fp32, and timing it in full would double the cost of tuning.
    """
    import torch

    def once(model, rows: int) -> float:  # noqa: ANN001
        start = time.perf_counter()
        model(input_ids=ids[:rows], attention_mask=mask[:rows])
        return (time.perf_counter() - start) / rows

    warm_rows = max(1, ids.shape[0] // 4)
    baseline = next(iter(variants))
    with torch.inference_mode():
        for model in variants.values():  # untimed: the process's first forward pass (thread pools, kernel set-up)
            once(model, 1)
        warm = {name: once(model, warm_rows) for name, model in variants.items()}
        live = [name for name in variants if name == baseline or warm[name] <= 3 * min(warm.values())]
        timed: dict[str, list[float]] = {name: [] for name in live}
        for _ in range(rounds):
            for name in live:
                timed[name].append(once(variants[name], ids.shape[0]))
    per_post = {name: min(timed[name]) if timed.get(name) else warm[name] for name in variants}
    return {name: 1 / seconds for name, seconds in per_post.items()}


def tune_cpu(model, folder: Path, card: ModelCard, cache: Path | None):  # noqa: ANN001, ANN201
    """The fp32 ``model`` with the weights (and torch thread count) that run fastest here, and the Tuning.

    Read from ``cache`` when this machine, torch, model and thread count were measured before;
    otherwise timed now and written there. The thread count is process-wide (``torch.set_num_threads``)
    and changes only when another count beat torch's own by the margin.
    """
    import torch

    cpu = read_cpu_identity()
    int8_ok, int8_why = int8_allowed(folder, card.model_version)
    candidates: list[WeightDtype] = ["float32", "bfloat16", *(["int8"] if int8_ok else [])]
    threads = torch.get_num_threads()
    key = tuning_key(cpu, torch_version=torch.__version__, model_version=card.model_version, threads=threads,
                     candidates=candidates)
    cached = read_tuning(cache, key) if cache is not None else None
    if cached is not None:
        if cached.threads != threads:
            torch.set_num_threads(cached.threads)
        log.info("CPU tuning for %s from %s: %s", card.model_version, cache, cached.describe())
        return with_weights(model, cached.dtype, "cpu"), cached

    started = time.perf_counter()
    variants = {"float32": model, "bfloat16": copy.deepcopy(model).to(torch.bfloat16)}
    if int8_ok:
        try:
            variants["int8"] = quantize_int8(model, inplace=False)
        except ModelError as exc:
            int8_ok, int8_why = False, str(exc)
    ids, mask = _synthetic_batch(model, card)
    rates = time_forward(variants, ids, mask)
    dtype: WeightDtype = choose_fastest(rates, baseline="float32")
    options = thread_candidates(threads, physical_cores=cpu.physical_cores, usable_cpus=_usable_cpus(),
                                cgroup_limit=_cgroup_cpu_limit())
    thread_rates: dict[str, float] = {}
    chosen_threads = threads
    if len(options) > 1:
        for n in options:
            torch.set_num_threads(n)
            thread_rates[str(n)] = time_forward({dtype: variants[dtype]}, ids, mask)[dtype]
        chosen_threads = int(choose_fastest(thread_rates, baseline=str(threads)))
        torch.set_num_threads(chosen_threads)
    tuning = Tuning(dtype, chosen_threads, {k: round(v, 1) for k, v in rates.items()},
                    {k: round(v, 1) for k, v in thread_rates.items()},
                    measured_on=f"{ids.shape[0]} x {ids.shape[1]} tokens, {cpu.model_name}")
    log.info("CPU tuning for %s, measured in %.1fs: %s%s", card.model_version, time.perf_counter() - started,
             tuning.describe(), "" if int8_ok else f"; int8 not considered: {int8_why}")
    if cache is not None:
        try:
            write_tuning(cache, key, tuning)
        except OSError as exc:  # a read-only home only costs the measurement at the next start
            log.warning("cannot write the CPU tuning cache %s: %s", cache, exc)
    return variants[dtype], tuning


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


class EncoderClassifier:
    """A fine-tuned sequence classifier with its model card (labels, temperature, biases, threshold)."""

    def __init__(self, model, tokenizer, card: ModelCard, *, device: str, batch_size: int,  # noqa: ANN001
                 overlap_tokenize: bool | None = None, weights: WeightDtype | None = None,
                 tuning: Tuning | None = None, lexical: LexicalModel | None = None):
        if not card.uses_encoder:
            raise ModelError(f"{card.model_version} serves its lexical model alone: load it with "
                             f"monitor.lexical.LexicalClassifier (no encoder)")
        if card.stack is not None and lexical is None:
            raise ModelError(f"{card.model_version} is a stack: its lexical model is needed too")
        self.model = model
        self.lexical = lexical
        self.weights = weights
        #: What dtype=auto measured (or read from the cache) on a CPU; None for an explicit dtype or CUDA.
        self.tuning = tuning
        self.tokenizer = tokenizer
        self.card = card
        self.device = device
        self.batch_size = batch_size
        # Tokenising batch k+1 in a thread while batch k runs pays off where the forward pass does not
        # need the CPU (CUDA); on a CPU the tokenizer would only take cores from the matrix products.
        self.overlap_tokenize = device.startswith("cuda") if overlap_tokenize is None else overlap_tokenize
        self._tokenize_pool: ThreadPoolExecutor | None = None
        self.labels = tuple(card.labels)
        # Probabilities are calibrated on logits of one dtype; served in another they may be off: say so.
        self.calibration = card.calibration_for(self.dtype)
        self.calibration_note = ""
        if card.calibration is not None and self.calibration is None:
            self.calibration_note = (f"{card.model_version}: calibration fitted on {card.calibration.dtype} logits, "
                                     f"serving {self.dtype}; its probabilities may be off until "
                                     f"`monitor models calibrate MODEL DATA --dtype {self.dtype}`")
            log.warning("%s", self.calibration_note)

    @classmethod
    def load(cls, folder: Path, settings: ClassifierSettings) -> EncoderClassifier:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a model folder is local by contract
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        card = read_card(folder)
        device = resolve_device(settings.device)
        if settings.dtype == "int8" and device != "cpu":
            raise ModelError(f"dtype int8 runs on the CPU only (no CUDA kernels for dynamic quantisation); "
                             f"on {device} use dtype=bfloat16 or auto")
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForSequenceClassification.from_pretrained(folder)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load the model in {folder}: {exc}") from exc
        if model.config.num_labels != len(card.labels):
            raise ModelError(f"{folder}: the model has {model.config.num_labels} outputs, the card {len(card.labels)} labels")
        model.eval()
        tuning = None
        if settings.dtype == "auto" and device == "cpu":
            model, tuning = tune_cpu(model, folder, card, settings.tuning_cache)
            weights: WeightDtype = tuning.dtype
        else:
            weights = "bfloat16" if settings.dtype == "auto" else settings.dtype
            model = with_weights(model, weights, device)
        lexical = LexicalModel.load(folder) if card.served == "stack" else None
        return cls(model, tokenizer, card, device=device, batch_size=settings.batch_size,
                   overlap_tokenize=settings.overlap_tokenize, weights=weights, tuning=tuning, lexical=lexical)

    @property
    def dtype(self) -> str:
        """float32, bfloat16 or int8 (int8 models keep fp32 embeddings and norms; their Linears are int8)."""
        return self.weights or str(next(self.model.parameters()).dtype).removeprefix("torch.")

    def device_memory_bytes(self) -> int | None:
        if not self.device.startswith("cuda"):
            return None
        import torch

        return int(torch.cuda.memory_allocated(self.device))

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

    def _tensors(self, encoded: Sequence[Sequence[int]]):  # noqa: ANN202
        ids, mask = pad_batch(encoded, self.tokenizer.pad_token_id or 0)
        if self.device.startswith("cuda"):  # pinned host memory: the copy overlaps the previous batch
            ids, mask = ids.pin_memory(), mask.pin_memory()
        return ids, mask

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """The model's raw logits (before the card's calibration), in the order of ``texts``: the
        encoder's, or for a stack its meta-model's over the encoder and the lexical model."""
        out = self.encoder_logits(texts)
        if self.lexical is None:  # not a stack (the constructor requires it of one)
            return out
        return self.card.stack.combine(out, self.lexical.read_posts(texts))

    def encoder_logits(self, texts: Sequence[str]) -> np.ndarray:
        """The encoder's raw logits, in the order of ``texts``.

        Texts are cut by characters first (a 1 MB post never reaches the tokenizer whole), then
        tokenised (the fast tokenizer spreads a call over the cores; per batch it is too little work
        to) and grouped by exact token length, so each batch pads to a similar width. With
        ``overlap_tokenize`` (CUDA) the texts go in chunks of ``CHUNK_BATCHES`` batches, the next chunk
        tokenised in a thread while this one's forward passes run, and the logits of a chunk come back
        to the host in one copy; on a CPU the tokenizer would only take cores from the matrix
        products, so the whole call is one chunk.
        """
        import torch

        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        if not texts:
            return out
        cut = [self._cut(t) for t in texts]
        # Chunks only where the next one is tokenised during this one's forward passes: otherwise the
        # whole call is one chunk, sorted by length as a whole (1,024 Druglib reviews in chunks of 512
        # padded to 2% more tokens than sorted together).
        span = self.batch_size * CHUNK_BATCHES if self.overlap_tokenize else len(cut)
        chunks = [range(start, min(start + span, len(cut))) for start in range(0, len(cut), span)]
        prepare = lambda rows: (rows, self._encode_cut([cut[i] for i in rows]))  # noqa: E731
        pool = self._pool() if self.overlap_tokenize and len(chunks) > 1 else None
        pending = pool.submit(prepare, chunks[0]) if pool is not None else None
        with torch.inference_mode():
            for k, chunk in enumerate(chunks):
                rows, encoded = pending.result() if pending is not None else prepare(chunk)
                if pool is not None and k + 1 < len(chunks):
                    pending = pool.submit(prepare, chunks[k + 1])
                # Texts that encode alike (repeats; occlusion variants that differ only where the
                # truncation cuts) go through the model once.
                distinct: dict[tuple[int, ...], int] = {}
                which = [distinct.setdefault(tuple(e), len(distinct)) for e in encoded]
                inputs = [list(ids) for ids in distinct]
                order, results = [], []
                for batch in length_sorted_batches([len(e) for e in inputs], self.batch_size):
                    ids, mask = self._tensors([inputs[i] for i in batch])
                    results.append(self.model(input_ids=ids.to(self.device, non_blocking=True),
                                              attention_mask=mask.to(self.device, non_blocking=True)).logits)
                    order.extend(batch)
                computed = np.empty((len(inputs), len(self.labels)), dtype=np.float32)
                computed[order] = torch.cat(results).float().cpu().numpy()
                out[list(rows)] = computed[which]
        return out

    def _pool(self) -> ThreadPoolExecutor:
        if self._tokenize_pool is None:
            self._tokenize_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")
        return self._tokenize_pool

    def calibrate(self, logits: np.ndarray) -> np.ndarray:
        """The card's calibration for the serving dtype (its own one when none was refitted)."""
        return self.card.probabilities(logits, self.calibration)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Calibrated class probabilities (the card's calibration; see ``monitor.model_card``)."""
        return self.calibrate(self.logits(texts))

    def decide(self, probabilities: np.ndarray) -> np.ndarray:
        """The served label (an index into ``labels``) of each row: the card's decision rule."""
        return self.card.decide(probabilities)


def check_int8(folder: Path, texts: Sequence[str], gold: Sequence[str], *, measured_on: str,
               batch_size: int = 64) -> Int8Check:
    """int8 against fp32 weights on labelled rows (the model's held-out test split): label agreement and metric.

    Predicted labels are the card's decision on the calibrated probabilities, as the pipeline serves them.
    """
    import torch

    card = read_card(folder)
    fp32 = EncoderClassifier.load(folder, ClassifierSettings(device="cpu", batch_size=batch_size, dtype="float32",
                                                             tuning_cache=None))
    int8 = EncoderClassifier(quantize_int8(fp32.model, inplace=False), fp32.tokenizer, card, device="cpu",
                             batch_size=batch_size, weights="int8", lexical=fp32.lexical)
    labels = list(card.labels)
    pred32 = [labels[i] for i in fp32.decide(fp32.predict_proba(texts))]
    pred8 = [labels[i] for i in int8.decide(int8.predict_proba(texts))]

    def metric(pred: Sequence[str]) -> float:
        return task_metric(confusion_matrix(gold, pred, labels), labels, card.metric,
                           positive_label=card.positive_label, metric_labels=card.metric_labels)

    return Int8Check(model_version=card.model_version, rows=len(texts), measured_on=measured_on,
                     agreement=label_agreement(pred32, pred8), metric=card.metric, metric_float32=metric(pred32),
                     metric_int8=metric(pred8), torch_version=torch.__version__)
