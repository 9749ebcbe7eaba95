"""``monitor train``: fine-tune a classifier for a task with ALEX's balancing, into a model folder."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from monitor.cli.context import settings_of
from monitor.model_card import ModelCard

console = Console()


def training_progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console)


def print_card_summary(card: ModelCard, out: Path) -> None:
    test = card.metrics["test"]
    raw = card.metrics["test_uncalibrated"]
    val = card.metrics["validation"]
    table = Table(title=f"{card.task} -> {out}", show_header=True)
    table.add_column("measure")
    table.add_column("value", justify="right")
    decision = card.decision
    tuned = decision is not None and decision.kind == "log_bias"
    named = {"prior": "prior-corrected arg-max, for its metric", "argmax": "arg-max, for its metric",
             "plugin": "plug-in F1 threshold"}
    rule = "arg-max"
    if decision is not None and decision.fitted in named:
        rule = named[decision.fitted]
    elif tuned:
        rule = "tuned biases"
    elif decision is not None and decision.tuned_for:
        rule = "arg-max, no bias helped"
    table.add_row(f"test {test['task_metric']['name']} (arg-max)", f"{raw['task_metric']['value']:.4f}")
    table.add_row(f"test {test['task_metric']['name']} ({rule})", f"{test['task_metric']['value']:.4f}")
    table.add_row("test macro-F1", f"{test['macro_f1']:.4f}")
    table.add_row("test micro-F1", f"{test['micro_f1']:.4f}")
    table.add_row("validation ECE before -> after", f"{val['ece_before']:.4f} -> {val['ece_after']:.4f}")
    table.add_row("test ECE before -> after", f"{raw['ece']:.4f} -> {test['ece']:.4f}")
    if test.get("ece_if_calibrated") is not None:
        table.add_row("test ECE of a calibrated model (same confidences, same rows)",
                      f"{test['ece_if_calibrated']:.4f} on average, {test['ece_if_calibrated_p95']:.4f} at the "
                      f"95th percentile ({test['n']} rows)")
    if card.calibration is not None:
        cal = card.calibration
        how = {"temperature": f"temperature {cal.temperature:.3f}", "vector": "vector scaling",
               "none": "none (raw softmax was best)"}[cal.method]
        tried = ", ".join(f"{m} {v:.4f}" for m, v in cal.nll.items())
        table.add_row("calibration (cross-validated NLL)", f"{how}" + (f" ({tried})" if tried else ""))
        if tuned:
            table.add_row("decision biases (log p)", " ".join(f"{b:+.1f}" for b in decision.biases))
    else:
        table.add_row("temperature", f"{card.temperature:.3f}")
    table.add_row("escalation threshold", f"{card.escalation_threshold:.4f} "
                                          f"({val['escalated_share']:.1%} of validation escalated)")
    table.add_row("best epoch / seconds", f"{card.training['best_epoch']} / {card.training['seconds']:.0f}")
    table.add_row("serves", card.served)
    table.add_row("model version", card.model_version)
    console.print(table)
    members = card.metrics.get("members") or {}
    if len(members) > 1:
        on_validation = val.get("members") or {}
        name = test["task_metric"]["name"]
        compare = Table("member", f"validation {name}", f"test {name}", "test macro-F1", "test micro-F1", "test ECE",
                        title="what the folder holds, each with its own calibration and decision rule "
                              f"(--serve {card.data.get('stack', {}).get('requested', 'best')})")
        regularisation = card.data.get("stack", {}).get("lexical_regularisation", {}).get("chosen")
        for member, m in members.items():
            label = f"{member} (served)" if member == card.served else member
            if member == "lexical" and regularisation:
                label += f" [{regularisation}]"
            chosen = f"{on_validation[member]:.4f}" if member in on_validation else "-"
            compare.add_row(label, chosen, f"{m['task_metric']['value']:.4f}", f"{m['macro_f1']:.4f}",
                            f"{m['micro_f1']:.4f}", f"{m['ece']:.4f}")
        console.print(compare)
        if card.data.get("stack", {}).get("skipped"):
            console.print(f"[yellow]no stack:[/] {card.data['stack']['skipped']}")
    for label, scores in test["per_class"].items():
        console.print(f"  {label:>16}: P {scores['precision']:.3f}  R {scores['recall']:.3f}  "
                      f"F1 {scores['f1']:.3f}  n={scores['support']}")


def train(
    ctx: typer.Context,
    task: str = typer.Argument(..., help="Task name (see `monitor tasks`) or path to a task TOML file"),
    data: Path = typer.Argument(..., exists=True, dir_okay=False, help="Labeled data: SMM4H TSV/CSV, CSV/TSV or JSONL"),
    out: Path = typer.Option(..., "--out", "-o", help="Model folder to write"),
    model: Path | None = typer.Option(None, help="Encoder folder (default: classifier.base_model or all-MiniLM-L6-v2)"),
    epochs: int = typer.Option(4, min=1, help="Maximum epochs (early stopping may end sooner)"),
    patience: int = typer.Option(2, min=1, help="Epochs without validation improvement before stopping"),
    max_length: int = typer.Option(256, min=16, max=8192, help="Tokens per post (head+tail truncation)"),
    batch_size: int = typer.Option(16, min=1, help="Training batch size"),
    learning_rate: float = typer.Option(5e-5, help="Peak AdamW learning rate"),
    seed: int = typer.Option(13, help="Seed for the split, balancing and training"),
    train_subsample: int | None = typer.Option(None, min=10, help="Use a seeded stratified subsample of the training split"),
    augment: bool = typer.Option(True, help="Augment minority classes (ALEX)"),
    copies: int = typer.Option(2, min=1, help="Augmented copies per minority post"),
    resample: bool = typer.Option(True, help="Oversample minority classes to --target-ratio"),
    target_ratio: float = typer.Option(0.5, min=0.01, max=1.0, help="Minority/majority ratio after resampling"),
    class_weights: bool = typer.Option(True, help="Class-weighted cross-entropy"),
    tune_biases: bool = typer.Option(True, help="Tune class biases on validation for the task metric"),
    max_escalation_share: float = typer.Option(0.1, min=0.0, max=1.0, help="Share of posts the threshold may escalate"),
    skip_bad_rows: bool = typer.Option(False, help="Skip (and report) malformed rows instead of failing"),
    device: str | None = typer.Option(None, help="auto, cpu, cuda, cuda:N (default: classifier.device)"),
    serve: str = typer.Option("stack", help="What the folder serves: stack (encoder and lexical model combined "
                                            "by a pool fitted on validation; the encoder when validation is too "
                                            "small to fit one), best (whichever of the three scores highest on "
                                            "validation), encoder, or lexical (a TF-IDF word+char model, no torch "
                                            "at inference)"),
) -> None:
    """Fine-tune a classifier with ALEX balancing, fit a word+char lexical model and a stack of the two,
    calibrate each, and serve the stack; write weights, tokenizer and model_card.json.

    The card compares every member the folder holds on validation (which decided) and on the test split."""
    from monitor.models import default_encoder_path
    from monitor.tasks import load_task

    if serve not in ("best", "encoder", "lexical", "stack"):
        raise typer.BadParameter("choose best, encoder, lexical or stack", param_hint="--serve")
    from monitor.training.finetune import FineTuneConfig
    from monitor.training.recipe import BalanceOptions, DataOptions, train_model
    from monitor.training.wordnet import WordNetSynonyms

    settings = settings_of(ctx)
    definition = load_task(task)
    encoder = model or settings.classifier.base_model or default_encoder_path()
    config = FineTuneConfig(model_path=encoder, max_length=max_length, epochs=epochs, patience=patience,
                            batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                            device=device or settings.classifier.device)
    balance = BalanceOptions(augment=augment, copies=copies, resample=resample, target_ratio=target_ratio,
                             class_weights=class_weights, tune_biases=tune_biases)
    data_options = DataOptions(seed=seed, train_subsample=train_subsample, skip_bad_rows=skip_bad_rows)
    with training_progress() as progress:
        card = train_model(definition, task, data, out, data_options=data_options, balance_options=balance,
                           finetune_config=config, max_escalation_share=max_escalation_share, serve=serve,
                           synonyms=WordNetSynonyms() if augment else None, progress=progress)
    print_card_summary(card, out)
