"""``monitor reviews``: what reviewers decided in the console, exported for the next model."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from monitor.cli.context import settings_of

app = typer.Typer(help="Reviews from the console: export reviewed posts as training data.", no_args_is_help=True)
console = Console()


@app.command()
def export(
    ctx: typer.Context,
    task: str = typer.Argument(..., help="Task name or path to a task TOML file"),
    out: Path = typer.Option(..., "--out", "-o", dir_okay=False,
                             help="File to write, in the format `monitor train TASK FILE` reads for the task "
                                  "(the task's data.format, else by extension: .jsonl, .csv, .tsv)"),
) -> None:
    """Write each reviewed post's current label for TASK (the latest review wins) as a training file.

    Train on it with `monitor train TASK FILE --out MODEL`, alone or appended to the task's own data."""
    from monitor.console.export import write_training_file
    from monitor.errors import DataError
    from monitor.runtime import open_database
    from monitor.storage.reviews import reviewed_posts
    from monitor.storage.session import transaction
    from monitor.tasks import load_task
    from monitor.telemetry import CONSOLE_EXPORTED

    definition = load_task(task)
    with transaction(open_database(settings_of(ctx), "require")) as session:
        written = write_training_file(definition, reviewed_posts(session, definition.name), out)
    if not written:
        out.unlink(missing_ok=True)
        raise DataError(f"no reviewed posts for {definition.name} yet: review some in `monitor console` first")
    CONSOLE_EXPORTED.labels(definition.name).inc(written)
    console.print(f"[green]{written}[/] reviewed posts of {definition.name} -> {out} "
                  f"(train: monitor train {task} {out} --out MODEL)")
