"""Benchmark (not a test): our classify path vs model-only inference vs the plain transformers pipeline.

    .venv/bin/python tests/benchmarks/bench_inference.py --model MODEL_DIR \\
        --data monitor/demo_data/druglib_sample.tsv [--posts 1024] [--batch-size 64] [--device cpu|cuda]

Every path runs in one process on the same posts, alternating, so the printed ratios hold on a noisy
machine:
- ``transformers pipeline``: ``pipeline("text-classification", model=FOLDER, batch_size=B,
  truncation=True, max_length=<the card's max_length>)``, float32, arrival order, as a user would run
  it (the issue's goal: the classify path >= 2x of it on CPU);
- ``model only``: the auto-chosen weights on pre-tokenised, length-sorted, pre-padded tensors: nothing
  but forward passes (and, for a stacked folder, its lexical member on pre-normalised texts), the
  ceiling (goal: the classify path >= 0.9x of it);
- ``classify path``: ``monitor.pipeline.classify_batch`` as the classify agent calls it (one micro-batch
  of ``--posts`` posts: normalise, char pre-cut, length grouping, tokenise, forward, calibrate, policy,
  Prediction records, and the occlusion evidence of each escalation the explanation budget admits,
  ``MONITOR_EXPLAINER__BUDGET_PER_S`` as configured) with ``dtype=auto``; the tuning is measured at load
  into a fresh cache file (``--tuning-cache`` to reuse one) and printed;
- ``predict_proba <dtype>``: ``EncoderClassifier.predict_proba`` with each dtype set explicitly
  (int8 on CPU only, whether or not the model's int8 check passed), to show what auto chose from;
  on CPU also the auto weights with the next batch tokenised during the forward pass (off by default
  on CPU).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from rich.console import Console
    from rich.table import Table
    from transformers import pipeline

    from monitor.classifier import EncoderClassifier, pad_batch
    from monitor.config import ClassifierSettings, Settings
    from monitor.corpus import load_examples
    from monitor.cpu_tuning import read_cpu_identity
    from monitor.encoding import length_sorted_batches
    from monitor.explainer.policy import ExplanationBudget, Policy
    from monitor.model_card import read_card
    from monitor.pipeline import classify_batch
    from monitor.records import Post
    from monitor.runtime import TaskModel
    from monitor.tasks import load_task

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--task", help="task name or TOML (default: the model card's)")
    parser.add_argument("--posts", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtypes", default="float32,bfloat16,int8", help="explicit dtypes to time as well")
    parser.add_argument("--tuning-cache", type=Path, help="reuse this CPU tuning cache (default: measure afresh)")
    parser.add_argument("--skip-pipeline", action="store_true", help="leave out the transformers pipeline")
    args = parser.parse_args()
    console = Console()

    card = read_card(args.model)
    task = load_task(args.task or card.training.get("task_source", card.task))
    texts = [e.text for e in load_examples(args.data, task, skip_bad_rows=True).examples]
    rng = np.random.default_rng(0)
    picked = rng.choice(len(texts), size=args.posts, replace=len(texts) < args.posts)
    texts = [texts[i] for i in picked]
    now = datetime.now(UTC)
    posts = [Post(id=str(i), text=t, source="bench", created_at=now) for i, t in enumerate(texts)]

    cache = args.tuning_cache or Path(tempfile.mkdtemp(prefix="bench-tuning-")) / "cpu-tuning.json"
    settings = ClassifierSettings(device=args.device, batch_size=args.batch_size, dtype="auto", tuning_cache=cache)
    started = time.perf_counter()
    classifier = EncoderClassifier.load(args.model, settings)
    load_s = time.perf_counter() - started
    device = classifier.device
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    models = [TaskModel(args.model, task, card)]
    policy = Policy(mode="explain", below_threshold=True, verify_signals=False, threshold=None)

    encoded = classifier.encode(texts)
    pad_id = classifier.tokenizer.pad_token_id or 0
    tensors = [tuple(t.to(device) for t in pad_batch([encoded[i] for i in b], pad_id))
               for b in length_sorted_batches([len(e) for e in encoded], args.batch_size)]

    # A stack's lexical member is part of the model: its features and regression, on texts cut and
    # normalised beforehand (more than the lexical memo keeps, so every run computes them).
    lexical_texts = classifier.lexical.prepare(texts) if classifier.lexical is not None else []

    def model_only(n: int) -> None:
        with torch.inference_mode():
            for ids, mask in tensors[:n]:
                classifier.model(input_ids=ids, attention_mask=mask).logits.float().cpu()
        sync()
        if lexical_texts:
            classifier.lexical.log_proba(lexical_texts[: n * args.batch_size])

    budget = ExplanationBudget(Settings().explainer.budget_per_s)  # as the classify worker admits escalations
    admitted: list[tuple[int, int]] = []

    def classify_path(n: int) -> None:
        cases = classify_batch(posts[:n], models, {task.name: classifier}, policy, budget=budget)
        admitted.append((sum(c.escalation is not None for c in cases), sum(c.admission == "admitted" for c in cases)))
        sync()

    paths: dict[str, Callable[[int], None]] = {}
    if not args.skip_pipeline:
        pipe = pipeline("text-classification", model=str(args.model), device=device if device != "cpu" else -1,
                        batch_size=args.batch_size)
        paths["transformers pipeline (float32)"] = lambda n: pipe(texts[:n], batch_size=args.batch_size,
                                                                  truncation=True, max_length=card.max_length)
    paths[f"model only ({classifier.dtype}{' + lexical member' if lexical_texts else ''})"] = model_only
    paths[f"classify path (auto: {classifier.dtype})"] = classify_path
    measured = classifier.tuning.rates if classifier.tuning is not None else {}
    skipped = []
    for dtype in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
        if dtype == "int8" and device != "cpu":
            continue
        if measured.get(dtype, float("inf")) < max(measured.values(), default=0) / 3:
            skipped.append(f"{dtype} ({measured[dtype]:,.0f}/s at load against {max(measured.values()):,.0f}/s)")
            continue  # emulated bf16: a full run would take minutes and tell nothing new
        explicit = EncoderClassifier.load(args.model, settings.model_copy(update={"dtype": dtype}))
        paths[f"predict_proba {dtype}"] = lambda n, c=explicit: (c.predict_proba(texts[:n]), sync())

    if device == "cpu" and not classifier.overlap_tokenize:  # off by default on CPU: show what it would do
        overlapped = EncoderClassifier(classifier.model, classifier.tokenizer, card, device=device,
                                       batch_size=args.batch_size, overlap_tokenize=True, weights=classifier.weights,
                                       lexical=classifier.lexical)
        paths[f"predict_proba {classifier.dtype}, overlapped tokenising"] = \
            lambda n: overlapped.predict_proba(texts[:n])
    size = {name: len(tensors) if name.startswith("model only") else len(texts) for name in paths}
    for name, fn in paths.items():  # warm-up on a slice: allocator, kernels, thread pools
        fn(max(1, size[name] // 8))
    runs: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.repeats):  # alternate, so a change in machine load hits every path alike
        for name, fn in paths.items():
            start = time.perf_counter()
            fn(size[name])
            runs[name].append(time.perf_counter() - start)
    rate = {name: len(texts) / statistics.median(times) for name, times in runs.items()}

    cpu = read_cpu_identity()
    lengths = [len(e) for e in encoded]
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in cpu.features().items())
    console.print(f"CPU {cpu.model_name} ({flags}); torch {torch.__version__}, {torch.get_num_threads()} threads")
    console.print(f"device {device}, {len(texts)} posts, batch {args.batch_size}, card max_length {card.max_length}; "
                  f"tokens median {int(np.median(lengths))}, p90 {int(np.percentile(lengths, 90))}, "
                  f"max {max(lengths)}; {args.repeats} alternating runs, median")
    if classifier.tuning is not None:
        console.print(f"auto chose {classifier.tuning.describe()}; load incl. tuning {load_s:.1f}s")
    escalated, occluded = admitted[-1]
    console.print(f"classify path: {escalated} of {len(texts)} posts escalated, {occluded} admitted by the budget "
                  f"({budget.rate:g}/s) and given occlusion evidence (last run)")
    if skipped:
        console.print(f"not run in full, over 3x slower in the load-time measurement: {', '.join(skipped)}")
    table = Table("path", "posts/s", "classify path / this")
    ours = rate[f"classify path (auto: {classifier.dtype})"]
    for name, value in rate.items():
        table.add_row(name, f"{value:,.1f}", f"{ours / value:.2f}x")
    console.print(table)


if __name__ == "__main__":
    main()
