"""``monitor evaluate``: a trained model on labeled data, with plots; or the balancing ablation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from monitor.cli.context import settings_of
from monitor.cli.train import training_progress

console = Console()


def _print_report(report, title: str) -> None:  # noqa: ANN001 - monitor.evaluation.Report
    table = Table("class", "precision", "recall", "F1", "support", title=title)
    for label, s in report.per_class.items():
        table.add_row(label, f"{s.precision:.3f}", f"{s.recall:.3f}", f"{s.f1:.3f}", str(s.support))
    console.print(table)
    console.print(f"{report.task_metric_name}: [bold]{report.task_metric:.4f}[/]   macro-F1 {report.macro_f1:.4f}   "
                  f"micro-F1 {report.micro_f1:.4f}   ECE {report.ece:.4f}   n={report.n}")
    if report.ece_if_calibrated is not None:
        console.print(f"a perfectly calibrated model with these confidences would show ECE "
                      f"{report.ece_if_calibrated:.4f} on {report.n} rows on average "
                      f"({report.ece_if_calibrated_p95:.4f} at the 95th percentile)")
    matrix = Table("gold \\ predicted", *report.labels, title="confusion")
    for label, row in zip(report.labels, report.confusion, strict=True):
        matrix.add_row(label, *map(str, row))
    console.print(matrix)


def evaluate(
    ctx: typer.Context,
    model: Path = typer.Argument(..., help="A trained model folder; with --ablation, a task name or TOML file"),
    data: Path = typer.Argument(..., exists=True, dir_okay=False, help="Labeled data file"),
    out: Path | None = typer.Option(None, "--out", "-o", help="Where reports and plots go (default: MODEL/eval-*)"),
    split: str = typer.Option("auto", help="auto (the held-out test split when DATA is the training file, else "
                                           "every row), all, or test"),
    skip_bad_rows: bool = typer.Option(False, help="Skip (and report) malformed rows instead of failing"),
    ablation: bool = typer.Option(False, help="Run the balancing ablation for the task MODEL names"),
    variants: str | None = typer.Option(None, help="Ablation variants, comma-separated (default: all)"),
    encoder: Path | None = typer.Option(None, help="Ablation: encoder folder (default: the configured one)"),
    epochs: int = typer.Option(4, min=1, help="Ablation: maximum epochs per fine-tune"),
    max_length: int = typer.Option(256, min=16, help="Ablation: tokens per post"),
    batch_size: int = typer.Option(16, min=1, help="Ablation: training batch size"),
    train_subsample: int | None = typer.Option(None, min=10, help="Ablation: seeded stratified training subsample"),
    seed: int = typer.Option(13, help="Ablation: seed"),
) -> None:
    """Per-class precision/recall/F1, the task metric, macro-F1, confusion matrix, ECE and PNG plots."""
    settings = settings_of(ctx)
    if ablation:
        from monitor.models import default_encoder_path
        from monitor.tasks import load_task
        from monitor.training.ablation import VARIANTS, ablation_markdown, run_ablation
        from monitor.training.finetune import FineTuneConfig
        from monitor.training.recipe import DataOptions
        from monitor.training.wordnet import WordNetSynonyms

        task = load_task(str(model))
        config = FineTuneConfig(model_path=encoder or settings.classifier.base_model or default_encoder_path(),
                                max_length=max_length, epochs=epochs, batch_size=batch_size, seed=seed,
                                device=settings.classifier.device)
        chosen = tuple(v.strip() for v in variants.split(",")) if variants else VARIANTS
        target = out or Path(f"ablation-{task.name}")
        with training_progress() as progress:
            rows = run_ablation(task, str(model), data, target,
                                data_options=DataOptions(seed=seed, train_subsample=train_subsample,
                                                         skip_bad_rows=skip_bad_rows),
                                finetune_config=config, variants=chosen, synonyms=WordNetSynonyms(),
                                progress=progress)
        console.print(ablation_markdown(rows, task))
        console.print(f"written: {target}/ablation.md, ablation.json, ablation.png")
        return

    from monitor.evaluation import plot_confusion, plot_precision_recall, plot_reliability
    from monitor.model_card import read_card
    from monitor.models import file_sha256
    from monitor.tasks import load_task
    from monitor.model_card import softmax
    from monitor.corpus import load_examples
    from monitor.runtime import load_classifier
    from monitor.training.recipe import model_split, report_for

    card = read_card(model)
    task = load_task(card.training.get("task_source", card.task))
    held_out = model_split(card, task, data, "test", skip_bad_rows=skip_bad_rows) if split != "all" else None
    if split == "test" and held_out is None:
        raise typer.BadParameter("--split test needs the file the model was trained on", param_hint="DATA")
    if held_out is not None:
        rows, which = held_out, "held-out test split"
    else:
        loaded = load_examples(data, task, skip_bad_rows=skip_bad_rows)
        rows, which = loaded.examples, "every row"
        if loaded.bad_rows:
            console.print(f"[yellow]skipped {len(loaded.bad_rows)} bad rows[/] (first: line "
                          f"{loaded.bad_rows[0].line}: {loaded.bad_rows[0].reason})")
    classifier = load_classifier(model, settings.classifier, card)
    with console.status(f"classifying {len(rows)} posts ({which})..."):
        logits = classifier.logits([e.text for e in rows])
    probs = classifier.calibrate(logits)
    gold = [e.label for e in rows]
    served = [card.labels[i] for i in classifier.decide(probs)]
    report = report_for(task, gold, probs, predicted=served)
    _print_report(report, f"{card.model_version} on {data.name} ({which})")
    target = out or model / f"eval-{file_sha256(data)[:8]}-{split}"
    target.mkdir(parents=True, exist_ok=True)
    gold_index = np.array([card.labels.index(g) for g in gold])
    plot_confusion(report, target / "confusion.png", title=f"{task.name}: confusion")
    plot_reliability(probs, gold_index, target / "reliability.png", title=f"{task.name}: reliability",
                     before=softmax(logits))
    plot_precision_recall(gold, probs, card.labels, target / "precision_recall.png", title=f"{task.name}: PR")
    (target / "report.json").write_text(json.dumps({"model_version": card.model_version, "data": str(data),
                                                     "rows": which, **report.as_dict()}, indent=2) + "\n")
    console.print(f"written: {target}/report.json, confusion.png, reliability.png, precision_recall.png")
