"""``monitor services``: the local Kafka broker, PostgreSQL server and analyst's console for a one-machine setup."""

from __future__ import annotations

from enum import Enum

import typer
from rich.console import Console
from rich.table import Table

from monitor.cli.context import settings_of
from monitor.services import local

app = typer.Typer(
    help="Local Kafka (KRaft, from Maven Central jars), PostgreSQL and the analyst's console: up, down, status. "
    "Without a service name: up starts Kafka and PostgreSQL, down stops all three.", no_args_is_help=True
)
console = Console()


class Which(str, Enum):
    all = "all"
    kafka = "kafka"
    postgres = "postgres"
    console = "console"


def _services(which: Which, default: tuple[local.Service, ...]) -> tuple[local.Service, ...]:
    return default if which is Which.all else (which.value,)  # type: ignore[return-value]


@app.command()
def up(ctx: typer.Context, which: Which = typer.Argument(Which.all, help="Which service")) -> None:
    """Start the services (if not running), wait until they answer, create the project's topics.

    `all` is Kafka and PostgreSQL; the console (`monitor console` in the background, over the configured
    database, its log under MONITOR_DATA_DIR/services/console) starts only when named."""
    with console.status("starting services..."):
        outcomes = local.up(settings_of(ctx), _services(which, local.ALL))
    for outcome in outcomes:
        console.print(f"[green]{outcome.service}[/]: {outcome.message}")


@app.command()
def down(ctx: typer.Context, which: Which = typer.Argument(Which.all, help="Which service")) -> None:
    """Stop the services this project started (nothing else); `all` includes the console."""
    for outcome in local.down(settings_of(ctx), _services(which, local.EVERY)):
        console.print(f"[yellow]{outcome.service}[/]: {outcome.message}")


@app.command()
def status(ctx: typer.Context, which: Which = typer.Argument(Which.all, help="Which service")) -> None:
    """Show each service's process and whether it answers; exit 1 if any does not answer."""
    table = Table("service", "process", "health", "where")
    healthy = True
    settings = settings_of(ctx)
    for state, health in local.status(settings, _services(which, local.shown(settings))):
        healthy &= health == "answers"
        process = f"pid {state.pid}" if state.running else "not running"
        table.add_row(state.name, process, health, state.detail)
    console.print(table)
    if not healthy:
        raise typer.Exit(1)
