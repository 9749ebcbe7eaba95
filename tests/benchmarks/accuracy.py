"""Benchmark (not a test): the accuracy table of every shipped task that has data in ../shared/data.

For each task, on its seeded split and held-out test set, the ablation's rows (``monitor evaluate TASK
DATA --ablation``): TF-IDF LR, frozen encoder LR, plain fine-tune, the full ALEX fine-tune, the word+char
lexical model and the full recipe stacked with it; task metric, macro-F1, micro-F1, per-class F1, ECE,
CPU seconds. Writes docs/accuracy.md (with the exact command and the CPU) and copies each task's plots
(the ablation bars, the served model's reliability diagrams and precision-recall curves) beside it,
with the raw rows (``ablation.json``). A run of some tasks rewrites their sections and keeps the
others' as they were (each section names its own command and CPU).

    # what the closing note of issue 14 reports (2 cores: sized to finish in about half an hour)
    .venv/bin/python tests/benchmarks/accuracy.py --train-subsample 1000 --epochs 2 --max-length 128
    # the full recipe, one option away, on a GPU machine
    .venv/bin/python tests/benchmarks/accuracy.py --epochs 4 --max-length 256 --device cuda
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
TASKS = {
    "druglib_sentiment": SHARED / "druglib" / "drugLibTrain_raw.tsv",
    "druglib_adverse": SHARED / "druglib" / "drugLibTrain_raw.tsv",
    "rmhd27_social_anxiety": SHARED / "rmhd27" / "rmhd27_dev.csv",
    "cssrs_suicide_risk": SHARED / "cssrs" / "cssrs_dev.csv",
}
#: The issue's goals, checked against the row ``monitor train`` serves by default.
GOALS = {
    "druglib_sentiment": [("micro_f1", 0.80), ("macro_f1", 0.70)],
    "rmhd27_social_anxiety": [("task_metric", 0.72)],
}
PLOTS = ("reliability_test.png", "reliability_validation.png", "precision_recall_test.png")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated (default: all four)")
    parser.add_argument("--variants", default=None,
                        help="ablation variants (default: all); the other rows of a task are kept from the "
                             "document's ablation.json, when it has one")
    parser.add_argument("--train-subsample", type=int, default=None, help="seeded stratified training subsample")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--out", type=Path, default=Path("/tmp/accuracy"), help="model folders and raw reports")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "accuracy.md")
    parser.add_argument("--reuse", action="store_true",
                        help="take a task's finished ablation.json from --out instead of training it again "
                             "(the same options are assumed: a run that was cut off goes on at the next task)")
    parser.add_argument("--note", default="", help="a line added to the sections written now (e.g. how busy the "
                                                    "machine was)")
    parser.add_argument("--keep-others", action=argparse.BooleanOptionalAction, default=True,
                        help="keep the sections of tasks not run now from the existing document")
    return parser.parse_args()


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def best_single(rows: list[dict]) -> dict:
    singles = [r for r in rows if r["variant"] not in ("stack_alex", "default")]
    return max(singles, key=lambda r: r["task_metric"])


def sections_of(doc: Path) -> dict[str, str]:
    """The existing document's task sections, by task name."""
    if not doc.exists():
        return {}
    parts = doc.read_text().split("\n## ")[1:]
    return {part.split("\n", 1)[0].strip(): "## " + part.rstrip() + "\n" for part in parts}


def verdict(rows: list[dict], name: str) -> list[str]:
    """Whether the shipped default beats the best single model, and the issue's goals for the task."""
    served = next((r for r in rows if r["variant"] == "default"), None)
    if served is None:
        return []
    single = best_single(rows)
    if served["task_metric"] > single["task_metric"] + 1e-9:
        how = "beats"
    elif abs(served["task_metric"] - single["task_metric"]) <= 1e-9:
        how = "equals"
    else:
        how = "does NOT beat"
    chosen = ", ".join(f"{k} {v:.4f}" for k, v in served.get("validation", {}).items())
    lines = [f"`monitor train` serves the {served['serves']} (validation {served['task_metric_name']}: {chosen}); "
             f"on the test split it {how} the best single model ({single['variant']}, {single['task_metric']:.4f} "
             f"vs {served['task_metric']:.4f})."]
    ece, floor = served.get("ece"), served.get("ece_if_calibrated")
    if ece is not None:
        lines.append(f"Goal test ECE <= 0.05: {ece:.4f} ({'met' if ece <= 0.05 else 'missed'})"
                     + (f"; a perfectly calibrated model with the served confidences would show {floor:.4f} "
                        f"on these rows, on average." if floor is not None else "."))
    for measure, goal in GOALS.get(name, []):
        value = served[measure]
        lines.append(f"Goal {measure} >= {goal}: {value:.4f} ({'met' if value >= goal else 'missed'}).")
    return lines


def main() -> int:
    args = parse_args()
    sys.path.insert(0, str(ROOT))
    import os

    from rich.console import Console

    from monitor.cli.train import training_progress
    from monitor.models import default_encoder_path
    from monitor.tasks import load_task
    from monitor.training.ablation import STACKED, VARIANTS, ablation_markdown, run_ablation, write_ablation
    from monitor.training.finetune import FineTuneConfig
    from monitor.training.recipe import DataOptions
    from monitor.training.wordnet import WordNetSynonyms

    console = Console()
    variants = tuple(v.strip() for v in args.variants.split(",")) if args.variants else VARIANTS
    command = "    .venv/bin/python tests/benchmarks/accuracy.py " + shlex.join(sys.argv[1:])
    sections = sections_of(args.doc) if args.keep_others else {}
    plots_dir = args.doc.parent / "accuracy"
    machine = (f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs); device {args.device}; encoder all-MiniLM-L6-v2; "
               f"max length {args.max_length}, at most {args.epochs} epochs, training subsample "
               f"{args.train_subsample or 'none (the whole training split)'}.")
    def training_minutes(rows: list[dict]) -> float:
        # One training gives the full recipe's row, the stack's and the default's: counted once.
        return sum(r["seconds"] for r in rows if r["variant"] not in (STACKED, "default")) / 60

    for name in [t.strip() for t in args.tasks.split(",")]:
        data = TASKS[name]
        if not data.exists():
            console.print(f"[yellow]{name}: no data at {data}, skipped[/]")
            continue
        task = load_task(name)
        config = FineTuneConfig(model_path=default_encoder_path(), max_length=args.max_length, epochs=args.epochs,
                                batch_size=args.batch_size, seed=args.seed, device=args.device)
        finished = args.out / name / "ablation.json"
        if args.reuse and not finished.exists() and (plots_dir / name / "ablation.json").exists():
            finished = plots_dir / name / "ablation.json"  # the rows this document was written from
        if args.reuse and finished.exists():  # a run cut off resumes at the next task
            rows = json.loads(finished.read_text())["rows"]
            minutes = training_minutes(rows)
            console.print(f"{name}: reusing {finished}")
        else:
            started = time.monotonic()
            with training_progress() as progress:
                rows = run_ablation(task, name, data, args.out / name, variants=variants, synonyms=WordNetSynonyms(),
                                    data_options=DataOptions(seed=args.seed, train_subsample=args.train_subsample),
                                    finetune_config=config, progress=progress)
            minutes = (time.monotonic() - started) / 60
            previous = plots_dir / name / "ablation.json"
            if args.variants and previous.exists():  # some rows run again: the others kept from the document
                payload = json.loads(previous.read_text())
                ran = {r["variant"] for r in rows}
                kept = [r for r in payload["rows"] if r["variant"] not in ran]
                rows = sorted(rows + kept, key=lambda r: VARIANTS.index(r["variant"]))
                write_ablation(rows, task, payload["data"], payload["finetune_config"], args.out / name)
                minutes = training_minutes(rows)
                console.print(f"{name}: rows {', '.join(sorted(ran))} measured now, "
                              f"{', '.join(r['variant'] for r in kept)} kept from {previous}")
        console.print(ablation_markdown(rows, task))
        target = plots_dir / name
        target.mkdir(parents=True, exist_ok=True)
        links = [f"![{name} ablation](accuracy/{name}/ablation.png)"]
        if finished.parent != target:
            shutil.copy(args.out / name / "ablation.png", target / "ablation.png")
            shutil.copy(args.out / name / "ablation.json", target / "ablation.json")
            for plot in PLOTS:  # the folder the stacked training wrote serves the default
                source = args.out / name / STACKED / "plots" / plot
                if source.exists():
                    shutil.copy(source, target / plot)
        links += [f"![{name} {plot}](accuracy/{name}/{plot})" for plot in PLOTS if (target / plot).exists()]
        lines = [f"## {name}\n", machine + (f" {args.note}" if args.note else "") + "\n", f"Command:\n\n{command}\n", ablation_markdown(rows, task),
                 *verdict(rows, name), f"\n{minutes:.1f} minutes in all for this task.\n", "\n".join(links) + "\n"]
        sections[name] = "\n".join(lines)
    header = (
        "# Accuracy on the shipped tasks\n\n"
        "Generated by `tests/benchmarks/accuracy.py` (a benchmark, not a test). Every row is measured on the "
        "task's held-out test split (seeded, deduplicated, stratified). Fine-tuned rows, the lexical model and "
        "the stack serve calibrated probabilities with their own decision rule, fitted on validation by the "
        "task's metric (F1 of one class: the plug-in F1 threshold; macro-F1: the class priors undone; micro-F1: "
        "biases tuned for it); the TF-IDF and frozen-encoder "
        "floors are plain arg-max. `default` is what `monitor train` serves: the stack "
        "of the full-recipe encoder and the lexical model (a log-linear pool fitted on validation), or the encoder "
        "where validation is too small to fit one. Which member a single validation split would pick is "
        "measured apart, over re-splits (`tests/benchmarks/bench_stack_meta.py`). ECE is "
        "top-label, 15 bins. Seconds are wall seconds of that row's training on the machine its section names.\n\n")
    ordered = [sections[t] for t in TASKS if t in sections] + [v for k, v in sections.items() if k not in TASKS]
    args.doc.write_text(header + "\n".join(ordered))
    console.print(f"written: {args.doc} and {plots_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
