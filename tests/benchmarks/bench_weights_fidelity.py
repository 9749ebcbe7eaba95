"""Benchmark (not a test): how faithful and how fast requantised copies of the explainer's GGUF are.

    .venv/bin/python tests/benchmarks/bench_weights_fidelity.py [--gguf PATH] [--types q8_0,q4_0,iq4_nl]
        [--reviews 24] [--rounds 3]

Each type is made from the GGUF with llama.cpp's own quantiser (into a temporary folder), then, in one
process:
- fidelity: the next-token distributions of the copy against the GGUF's over the first ``--reviews``
  Druglib reviews (read as the druglib tasks frame them, at most 400 tokens each): mean KL divergence a
  token, its 99th percentile, and how often both pick the same next token;
- speed on one thread: a 500-token prompt read at once, then one token at a time and eight at a time
  at position 500 (about where an explanation's reply is decoded after the ~470-token prompt prefix),
  the best of ``--rounds`` rounds with the files taking turns.

What it showed on a 2-core AVX-512 EPYC (the reason ``weights=auto`` offers only Q8_0): the Q8_0 copy
of the shipped Q4_1 is the same model (KL 0.006), while Q4_0 and IQ4_NL, repacked by llama.cpp and
1.3-1.7x faster a decoded token in five runs, are other ones (KL 0.30 and 0.19).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

TYPES = {"q8_0": 7, "q4_0": 2, "iq4_nl": 25, "q4_k_s": 14}
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "druglib" / "drugLibTrain_raw.tsv"
SAMPLE = Path(__file__).resolve().parents[2] / "monitor" / "demo_data" / "druglib_sample.tsv"


def reviews(n: int) -> list[str]:
    """The first ``n`` Druglib reviews as the druglib tasks frame them (the shared data, else the demo sample)."""
    from monitor.corpus import load_examples
    from monitor.tasks import load_task

    path = DATA if DATA.is_file() else SAMPLE
    return [example.text for example in load_examples(path, load_task("druglib_adverse"), skip_bad_rows=True).examples[:n]]


def log_probs(path: Path, texts: list[str]) -> np.ndarray:
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=1024, n_threads=os.cpu_count() or 1, logits_all=True, verbose=False)
    try:
        out = []
        for text in texts:
            tokens = llm.tokenize(text.encode())[:400]
            llm.reset()
            llm.eval(tokens)
            scores = np.asarray(llm.scores[: len(tokens)], dtype=np.float64)
            scores -= scores.max(axis=1, keepdims=True)
            out.append(scores - np.log(np.exp(scores).sum(axis=1, keepdims=True)))
        return np.concatenate(out)
    finally:
        llm.close()


def speeds(paths: dict[str, Path], rounds: int) -> dict[str, tuple[float, float, float]]:
    """Per file, the best (prompt of 500, one token at 500, eight tokens at 500) seconds on one thread."""
    from llama_cpp import Llama

    text = " ".join(reviews(40))
    models = {name: Llama(model_path=str(path), n_ctx=1024, n_threads=1, n_threads_batch=1, verbose=False)
              for name, path in paths.items()}
    best = {name: (float("inf"),) * 3 for name in models}
    try:
        for k in range(rounds):
            names = list(models)
            for name in names[k % len(names):] + names[:k % len(names)]:
                llm = models[name]
                tokens = llm.tokenize(text.encode())[:548]
                llm.reset()
                start = time.perf_counter()
                llm.eval(tokens[:500])
                prompt = time.perf_counter() - start
                start = time.perf_counter()
                for token in tokens[500:516]:
                    llm.eval([token])
                one = (time.perf_counter() - start) / 16
                start = time.perf_counter()
                for i in range(4):
                    llm.eval(tokens[516 + 8 * i:524 + 8 * i])
                eight = (time.perf_counter() - start) / 4
                best[name] = tuple(min(a, b) for a, b in zip(best[name], (prompt, one, eight), strict=True))
        return best
    finally:
        for llm in models.values():
            llm.close()


def main() -> None:
    from monitor.config import Settings
    from monitor.cpu_tuning import read_cpu_identity
    from monitor.explainer.weights import quantise
    from monitor.models import default_gguf_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=None, help="default: the configured explainer GGUF (as configured)")
    parser.add_argument("--types", default="q8_0,q4_0,iq4_nl", help=f"of {', '.join(TYPES)}")
    parser.add_argument("--reviews", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    source = args.gguf or Settings().explainer.model_path or default_gguf_path()
    unknown = set(args.types.split(",")) - set(TYPES)
    if unknown:
        parser.error(f"unknown types {sorted(unknown)}; known: {', '.join(TYPES)}")
    texts = reviews(args.reviews)
    with tempfile.TemporaryDirectory() as folder:
        paths = {"as shipped": source}
        for name in args.types.split(","):
            paths[name] = Path(folder) / f"copy.{name}.gguf"
            quantise(source, paths[name], TYPES[name])
        reference = log_probs(source, texts)
        timing = speeds(paths, args.rounds)
        print(f"{source.name} on {read_cpu_identity().model_name}; fidelity over {len(reference)} tokens of "
              f"{len(texts)} reviews; speed on 1 thread, best of {args.rounds} rounds")
        print(f"{'weights':<11} {'MB':>6} {'KL mean':>8} {'KL p99':>7} {'same top':>8} {'prompt 500':>11} "
              f"{'1 tok':>8} {'8 tok':>8} {'1 tok vs shipped':>17}")
        for name, path in paths.items():
            copy = reference if name == "as shipped" else log_probs(path, texts)
            kl = (np.exp(reference) * (reference - copy)).sum(axis=1)
            same = float(np.mean(reference.argmax(axis=1) == copy.argmax(axis=1)))
            prompt, one, eight = timing[name]
            print(f"{name:<11} {path.stat().st_size / 1e6:6.0f} {kl.mean():8.4f} {np.quantile(kl, 0.99):7.4f} "
                  f"{same:8.1%} {prompt * 1000:8.0f} ms {one * 1000:5.1f} ms {eight * 1000:5.1f} ms "
                  f"{timing['as shipped'][1] / one:16.2f}x")


if __name__ == "__main__":
    main()
