"""Benchmark (not a test): explanations/s of explainer pool layouts (contexts x threads x sequences).

    .venv/bin/python tests/benchmarks/bench_explainer_layouts.py [--gguf PATH] [--posts 32] [--rounds 4] \\
        2x1x1 2x1x8 1x2x1 1x2x8 1x2x16

Each layout is ``CONTEXTS x THREADS x SEQUENCES`` (``MONITOR_EXPLAINER__N_PARALLEL``, ``__N_THREADS``,
``__SEQUENCES``). Every pool is loaded and warmed once; each round runs the same short posts through
all of them, in rotating order, fed as the explain worker feeds a pool (``parallel`` at a time). The
figures are medians, and the ratios are medians of per-round ratios to the first layout, so they hold
on a noisy machine. Every reply must be answered (none ``unverified``).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from bench_explainer import POSTS, explain_all


def layout(text: str) -> tuple[int, int, int]:
    try:
        contexts, threads, sequences = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not CONTEXTSxTHREADSxSEQUENCES, e.g. 2x1x8") from None
    return contexts, threads, sequences


def main() -> None:
    from monitor.config import ExplainerSettings
    from monitor.cpu_tuning import read_cpu_identity
    from monitor.explainer.llm import ExplainerPool
    from monitor.models import default_gguf_path
    from monitor.tasks import load_task

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("layouts", nargs="+", type=layout, help="CONTEXTSxTHREADSxSEQUENCES, the first the reference")
    parser.add_argument("--gguf", type=Path, default=None, help="default: the shipped GGUF")
    parser.add_argument("--task", default="druglib_adverse")
    parser.add_argument("--posts", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--n-ctx", type=int, default=2048)
    args = parser.parse_args()

    gguf = args.gguf or default_gguf_path()
    task = load_task(args.task)
    cases = [(POSTS[i % len(POSTS)], task.labels[i % len(task.labels)]) for i in range(args.posts)]
    layouts = list(dict.fromkeys(args.layouts))
    pools = {shape: ExplainerPool.load(gguf, ExplainerSettings(n_ctx=args.n_ctx, n_parallel=shape[0], n_threads=shape[1],
                                                               sequences=shape[2]), cache=None)
             for shape in layouts}
    try:
        for pool in pools.values():
            pool.warm([task])
        rates: dict[tuple[int, int, int], list[float]] = {shape: [] for shape in layouts}
        for k in range(args.rounds):
            for shape in layouts[k % len(layouts):] + layouts[:k % len(layouts)]:
                results, rate = explain_all(pools[shape], task, cases)
                rates[shape].append(rate)
                failed = [result.reason for result in results if result.verdict == "unverified"]
                if failed:
                    raise SystemExit(f"layout {shape}: {len(failed)} unverified replies, e.g. {failed[0]}")
    finally:
        for pool in pools.values():
            pool.close()
    first = rates[layouts[0]]
    print(f"{gguf.name} on {read_cpu_identity().model_name}: {len(cases)} short posts, {args.rounds} rounds, medians")
    for shape in layouts:
        ratio = statistics.median(a / b for a, b in zip(rates[shape], first, strict=True))
        print(f"{shape[0]} context(s) x {shape[1]} thread(s) x {shape[2]:2d} sequence(s): "
              f"{statistics.median(rates[shape]):5.2f} explanations/s, {ratio:.2f}x the first")


if __name__ == "__main__":
    main()
