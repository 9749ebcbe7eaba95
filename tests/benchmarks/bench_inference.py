"""Benchmark (not a test): the classify path the agent runs vs model-only inference vs plain transformers.

    .venv/bin/python tests/benchmarks/bench_inference.py --model MODEL_DIR --task druglib_adverse \\
        --data monitor/demo_data/druglib_sample.tsv [--posts 1024] [--batch-size 64] [--device cpu|cuda]

Every path runs in one process on the same posts, alternating, so the printed ratios hold on a noisy
machine:
- ``classify path``: ``monitor.pipeline.classify_batch`` exactly as the classify agent calls it (one
  micro-batch of ``--posts`` posts: normalise, char pre-cut, length grouping, tokenise (overlapped
  with the forward pass on CUDA), forward, calibrate, policy, Prediction records);
- ``model only``: the same weights and dtype on pre-tokenised, length-sorted, pre-padded tensors: the
  ceiling, nothing but forward passes (the issue's goal: the classify path >= 0.85x of it on a GPU);
- ``transformers pipeline``: ``pipeline("text-classification", model=FOLDER, batch_size=B,
  truncation=True)`` loaded as a user would (float32), arrival order (goal: classify path >= 2x on
  CPU, >= 3x on a GPU);
- ``pipeline, max_length 128``: the same with posts cut at 128 tokens, the common recipe.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from rich.console import Console
    from rich.table import Table
    from transformers import pipeline

    from monitor.classifier import Classifier, pad_batch
    from monitor.config import ClassifierSettings
    from monitor.encoding import length_sorted_batches
    from monitor.explainer.policy import Policy
    from monitor.pipeline import TaskModel, classify_batch
    from monitor.records import Post
    from monitor.tasks import load_task
    from monitor.corpus import load_examples

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--task", required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--posts", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--skip-pipeline", action="store_true", help="leave out the transformers pipeline paths")
    args = parser.parse_args()
    console = Console()

    task = load_task(args.task)
    texts = [e.text for e in load_examples(args.data, task, skip_bad_rows=True).examples]
    rng = np.random.default_rng(0)
    picked = rng.choice(len(texts), size=args.posts, replace=len(texts) < args.posts)
    texts = [texts[i] for i in picked]
    now = datetime.now(UTC)
    posts = [Post(id=str(i), text=t, source="bench", created_at=now) for i, t in enumerate(texts)]
    settings = ClassifierSettings(device=args.device, batch_size=args.batch_size, dtype=args.dtype)
    classifier = Classifier.load(args.model, settings)
    model = TaskModel(task, classifier, "explain", "benchmark")
    policy = Policy(mode="explain", below_threshold=True, verify_signals=False, max_share=0.1, threshold=None)
    device = classifier.device
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    encoded = classifier.encode(texts)
    pad_id = classifier.tokenizer.pad_token_id or 0
    tensors = [tuple(t.to(device) for t in pad_batch([encoded[i] for i in b], pad_id))
               for b in length_sorted_batches([len(e) for e in encoded], args.batch_size)]

    def model_only() -> None:
        with torch.inference_mode():
            for ids, mask in tensors:
                classifier.model(input_ids=ids, attention_mask=mask).logits.float().cpu()
        sync()

    def classify_path() -> None:
        classify_batch(posts, [model], policy)
        sync()

    paths = {"classify path": classify_path, "model only": model_only}
    if not args.skip_pipeline:
        pipe = pipeline("text-classification", model=str(args.model), device=device if device != "cpu" else -1,
                        batch_size=args.batch_size, truncation=True)
        paths["transformers pipeline"] = lambda: pipe(texts, batch_size=args.batch_size)
        paths["pipeline, max_length 128"] = lambda: pipe(texts, batch_size=args.batch_size, max_length=128)

    for fn in paths.values():  # warm-up: allocator, kernels, thread pools
        fn()
    runs: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(args.repeats):  # alternate, so a change in machine load hits every path alike
        for name, fn in paths.items():
            start = time.perf_counter()
            fn()
            runs[name].append(time.perf_counter() - start)
    rate = {name: len(texts) / statistics.median(times) for name, times in runs.items()}

    lengths = [len(e) for e in encoded]
    console.print(f"device {device}, dtype {classifier.dtype}, torch threads {torch.get_num_threads()}, "
                  f"{len(texts)} posts, batch {args.batch_size}, card max_length {classifier.card.max_length}; "
                  f"tokens median {int(np.median(lengths))}, p90 {int(np.percentile(lengths, 90))}, max {max(lengths)}")
    table = Table("path", "posts/s", "classify path / this")
    for name, value in rate.items():
        table.add_row(name, f"{value:,.1f}", f"{rate['classify path'] / value:.2f}x")
    console.print(table)


if __name__ == "__main__":
    main()
