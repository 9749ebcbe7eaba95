"""``monitor config``: the effective settings, and the reference table of every setting."""

from __future__ import annotations

import json

import typer
from rich.console import Console

from monitor.cli.context import settings_of
from monitor.config import settings_table_markdown

app = typer.Typer(help="Show the effective settings or the reference of every setting.", no_args_is_help=True)
console = Console()


@app.command()
def show(ctx: typer.Context) -> None:
    """Print the effective settings as JSON (secrets masked)."""
    console.print_json(json.dumps(settings_of(ctx).model_dump(mode="json"), default=str))


@app.command()
def reference() -> None:
    """Print the Markdown table of every setting (the one in README.md)."""
    typer.echo(settings_table_markdown(), nl=False)
