"""The ``monitor`` command: a Typer app split by command group."""

from __future__ import annotations

import logging
import sys

import typer
from pydantic import ValidationError
from rich.console import Console

from monitor.cli import config_cmd, console, db, models, privacy, reviews, services, signals, source
from monitor.cli.classify import classify
from monitor.cli.demo import demo
from monitor.cli.evaluate import evaluate
from monitor.cli.explain import explain, explain_adversarial, explain_eval
from monitor.cli.produce import produce
from monitor.cli.replay import replay
from monitor.cli.train import train
from monitor.cli.worker import worker
from monitor.cli.context import State
from monitor.config import Settings, describe_validation_error
from monitor.errors import ConfigError, MonitorError

err_console = Console(stderr=True)

app = typer.Typer(
    name="monitor",
    help="Streaming public-health social-media monitor (ALEX): classify posts, explain with a local LLM, "
    "store health signals.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command()(demo)
app.command()(train)
app.command()(evaluate)
app.command()(classify)
app.command()(worker)
app.command()(replay)
app.command()(explain)
app.command("explain-eval")(explain_eval)
app.command("explain-adversarial")(explain_adversarial)
app.command()(produce)
app.add_typer(db.app, name="db")
app.add_typer(services.app, name="services")
app.add_typer(config_cmd.app, name="config")
app.add_typer(models.app, name="models")
app.add_typer(signals.app, name="signals")
app.add_typer(source.app, name="source")
app.add_typer(privacy.app, name="privacy")
app.add_typer(console.app, name="console")
app.add_typer(reviews.app, name="reviews")


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from exc


def _version(value: bool) -> None:
    if value:
        from monitor import __version__

        typer.echo(f"monitor {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Settings come from MONITOR_* environment variables and an optional .env file (see `monitor config show`)."""
    settings = load_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.log_level != "DEBUG":
        # Client libraries narrate every connection at INFO; keep the terminal for what matters.
        for noisy in ("aiokafka", "alembic.runtime.migration"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        # kafka-python logs every refused connection as an ERROR, also while `services up` waits for a
        # broker that is starting; our adapters raise BrokerError with the reason when it matters.
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
    ctx.obj = State(settings)


def _click_exceptions() -> tuple[type[Exception], ...]:
    """Click's usage-error class, and typer's vendored copy of it (typer >= 0.16 ships its own click)."""
    from click.exceptions import ClickException

    classes: list[type[Exception]] = [ClickException]
    try:
        from typer._click.exceptions import ClickException as TyperClickException
    except ImportError:
        pass
    else:
        classes.append(TyperClickException)
    return tuple(classes)


def main() -> None:
    """Console entry point: a ``MonitorError`` is one red line and exit code 1, never a traceback."""
    try:
        code = app(standalone_mode=False)
    except MonitorError as exc:
        logging.getLogger("monitor").debug("command failed", exc_info=exc)
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
        sys.exit(1)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("aborted")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        if isinstance(exc, _click_exceptions()):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    sys.exit(code if isinstance(code, int) else 0)
