"""``monitor db``: schema migrations on the configured database (SQLite or PostgreSQL)."""

from __future__ import annotations

import typer
from rich.console import Console

from monitor.cli.context import settings_of
from monitor.storage import migrations

app = typer.Typer(help="Database schema: upgrade, downgrade, current revision.", no_args_is_help=True)
console = Console()


def _where(ctx: typer.Context) -> str:
    from monitor.storage.session import display_url

    return display_url(settings_of(ctx).database.url)


@app.command()
def upgrade(ctx: typer.Context, revision: str = typer.Argument("head", help="Target revision")) -> None:
    """Migrate the database up to REVISION (default: the newest)."""
    settings = settings_of(ctx).database
    migrations.upgrade(settings, revision)
    console.print(f"[green]database at {migrations.current_revision(settings) or 'base'}[/] ({_where(ctx)})")


@app.command()
def downgrade(
    ctx: typer.Context,
    revision: str = typer.Argument(..., help="Target revision: an id, -1 for one step, or 'base' for empty"),
) -> None:
    """Migrate the database down to REVISION ('base' drops every table the monitor created)."""
    settings = settings_of(ctx).database
    migrations.downgrade(settings, revision)
    console.print(f"[yellow]database at {migrations.current_revision(settings) or 'base'}[/] ({_where(ctx)})")


@app.command()
def current(ctx: typer.Context) -> None:
    """Print the database's revision and the code's newest revision."""
    settings = settings_of(ctx).database
    now, head = migrations.current_revision(settings), migrations.head_revision()
    state = "[green]up to date[/]" if now == head else "[yellow]needs `monitor db upgrade`[/]"
    console.print(f"database {_where(ctx)}: {now or 'base (empty)'}; code: {head}; {state}")
