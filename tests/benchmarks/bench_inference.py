"""Benchmark (not a test): classifier inference posts/s at the real length distribution vs padded to 128.

    .venv/bin/python tests/benchmarks/bench_inference.py --model MODEL_DIR --task rmhd27_social_anxiety \\
        --data ../shared/data/rmhd27/rmhd27_dev.csv [--posts 512] [--device cpu|cuda]

Both paths run the same weights on the same posts in one process, so the printed ratio holds on a
noisy machine: "sorted" is the Classifier (length-sorted batches, dynamic padding, head+tail
truncation at the card's max length); "padded-128" is the common recipe of padding every post to
128 tokens in arrival order. Runs on CUDA too when there is one.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    import torch

    from monitor.classifier import Classifier
    from monitor.config import ClassifierSettings
    from monitor.tasks import load_task
    from monitor.training.data import load_examples, normalise_text

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--task", required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--posts", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    texts = [normalise_text(e.text) for e in load_examples(args.data, load_task(args.task), skip_bad_rows=True).examples]
    rng = np.random.default_rng(0)
    texts = [texts[i] for i in rng.choice(len(texts), size=min(args.posts, len(texts)), replace=False)]
    classifier = Classifier.load(args.model, ClassifierSettings(device=args.device, batch_size=args.batch_size))
    tokenizer, model, device = classifier.tokenizer, classifier.model, classifier.device
    lengths = [len(e) for e in classifier.encode(texts)]

    def padded_128() -> None:
        with torch.inference_mode():
            for start in range(0, len(texts), args.batch_size):
                batch = tokenizer(texts[start : start + args.batch_size], padding="max_length", truncation=True,
                                  max_length=128, return_tensors="pt").to(device)
                model(**batch)

    classifier.predict_proba(texts[: args.batch_size])  # warm-up: allocator, kernels
    padded_128()
    # Alternate the two paths so a change in machine load hits both alike; report each one's median.
    sorted_runs, padded_runs = [], []
    for _ in range(args.repeats):
        sorted_runs.append(_timed(lambda: classifier.predict_proba(texts), 1))
        padded_runs.append(_timed(padded_128, 1))
    sorted_s, padded_s = statistics.median(sorted_runs), statistics.median(padded_runs)
    print(f"device {device}, torch threads {torch.get_num_threads()}, {len(texts)} posts, batch {args.batch_size}, "
          f"card max_length {classifier.card.max_length}")
    print(f"token lengths: median {int(np.median(lengths))}, p90 {int(np.percentile(lengths, 90))}, max {max(lengths)}")
    print(f"sorted + dynamic padding (real lengths): {len(texts) / sorted_s:8.1f} posts/s")
    print(f"padded to 128, arrival order:            {len(texts) / padded_s:8.1f} posts/s")
    print(f"ratio sorted / padded-128: {padded_s / sorted_s:.2f}x")


if __name__ == "__main__":
    main()
