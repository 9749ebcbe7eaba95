"""``monitor config``: the effective settings, and the reference table of every setting."""

from __future__ import annotations

import json
from pathlib import Path

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


START, END = "<!-- settings:start -->\n", "<!-- settings:end -->"


@app.command()
def reference(
    update: Path | None = typer.Option(None, help="Rewrite the table between the settings markers of this file"),
) -> None:
    """Print the Markdown table of every setting (the one in README.md), or rewrite it in a file."""
    table = settings_table_markdown()
    if update is None:
        typer.echo(table, nl=False)
        return
    text = update.read_text()
    if START not in text or END not in text:
        raise typer.BadParameter(f"{update} has no {START.strip()} ... {END} markers")
    head, rest = text.split(START, 1)
    update.write_text(head + START + table + END + rest.split(END, 1)[1])
    console.print(f"updated the settings table in {update}")
