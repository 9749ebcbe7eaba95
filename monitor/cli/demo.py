"""``monitor demo``: services up, a small model trained on the shipped sample (cached), the sample
streamed through every worker role, a summary of what the monitor found, and the analyst's console left
running on it (with a ``demo`` reviewer when the database has no account yet)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from monitor.cli.context import settings_of
from monitor.config import Settings
from monitor.errors import MonitorError, ServiceError
from monitor.services import process

if TYPE_CHECKING:
    from monitor.storage.queries import ExplainedExample

console = Console()
SAMPLE = Path(__file__).resolve().parents[1] / "demo_data" / "druglib_sample.tsv"
TASK = "druglib_adverse"
DEMO_USER = "demo"


def demo_model(settings: Settings, *, retrain: bool) -> Path:
    """A small model for the demo task, trained once per sample file and cached."""
    from monitor.cli.train import print_card_summary, training_progress
    from monitor.models import default_encoder_path, file_sha256
    from monitor.tasks import load_task
    from monitor.training.finetune import FineTuneConfig
    from monitor.training.recipe import BalanceOptions, DataOptions, train_model
    from monitor.training.wordnet import WordNetSynonyms

    folder = settings.cache_dir / "demo" / f"{TASK}-{file_sha256(SAMPLE)[:10]}"
    if (folder / "model_card.json").exists() and not retrain:
        console.print(f"[green]model[/]: cached {folder}")
        return folder
    console.print(f"[bold]training[/] a small {TASK} model on {SAMPLE.name} (CPU: a few minutes)")
    config = FineTuneConfig(model_path=settings.classifier.base_model or default_encoder_path(), max_length=128,
                            epochs=2, batch_size=16, device=settings.classifier.device, seed=13)
    with training_progress() as progress:
        card = train_model(load_task(TASK), TASK, SAMPLE, folder, data_options=DataOptions(seed=13, train_subsample=700),
                           balance_options=BalanceOptions(), finetune_config=config, serve="stack",
                           synonyms=WordNetSynonyms(), progress=progress)
    print_card_summary(card, folder)
    return folder


def _counts(factory, source: str) -> dict[str, int]:  # noqa: ANN001
    from monitor.storage.queries import source_counts
    from monitor.storage.session import transaction

    with transaction(factory) as session:
        return source_counts(session, source)


def _examples(factory, source: str, n: int = 3) -> list[ExplainedExample]:  # noqa: ANN001
    from monitor.storage.queries import explained_examples
    from monitor.storage.session import transaction

    with transaction(factory) as session:
        return explained_examples(session, source, limit=n)


def demo(
    ctx: typer.Context,
    posts: int = typer.Option(2000, min=10, max=2000, help="How many sample posts to stream"),
    retrain: bool = typer.Option(False, help="Train the demo model again even if one is cached"),
    timeout: float = typer.Option(900, help="Give up waiting for the workers after this many seconds"),
) -> None:
    """The whole monitor on one machine, on the shipped sample: services, model, workers, stream, summary."""
    from monitor.kafka.producer import Compression, Tally, open_producer, send_posts
    from monitor.feed import posts_from_file, shift_times
    from monitor.services import local
    from monitor.storage import migrations
    from monitor.signals.detect import run_detection
    from monitor.storage.session import create_db_engine, display_url, make_sessionmaker, transaction
    from monitor.tasks import load_task

    settings = settings_of(ctx)
    database = settings.database  # the embedded SQLite default, or the configured server
    services = ("kafka", "postgres") if database.url.startswith("postgresql") else ("kafka",)
    with console.status(f"bringing up {' and '.join(services)}..."):
        for outcome in local.up(settings, services):  # type: ignore[arg-type]
            console.print(f"[green]{outcome.service}[/]: {outcome.message}")
    migrations.upgrade(database)
    model = demo_model(settings, retrain=retrain)

    source = f"demo-{datetime.now(UTC):%Y%m%dT%H%M%S}"
    sample = list(posts_from_file(SAMPLE, task=load_task(TASK), source=source))[:posts]
    sample = shift_times(sample, newest=datetime.now(UTC))  # inside topic retention, replayable by time
    log_path = settings.data_dir / "demo-workers.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MONITOR_CLASSIFIER__MODELS": json.dumps([str(model)]),
           "MONITOR_DATABASE__URL": database.url}
    with open(log_path, "wb") as log:
        workers = subprocess.Popen([sys.executable, "-m", "monitor.cli", "worker", "--role", "all"], env=env,  # noqa: S603
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    if settings.metrics.port:
        console.print(f"metrics while the workers run: http://{settings.metrics.host}:{settings.metrics.port}/metrics "
                      "(Prometheus config and alert rules: deploy/prometheus/)")
    factory = make_sessionmaker(create_db_engine(database))
    started = time.perf_counter()
    try:
        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("{task.fields[speed]}"), console=console)
        with progress:
            job = progress.add_task("producing", total=len(sample), speed="")
            producer = open_producer(settings.kafka, Compression.none)
            tally = Tally()
            send_posts(producer, settings.topics.posts, sample, tally, rate=None, skip_future=True,
                       on_progress=lambda sent, speed: progress.update(job, completed=sent, speed=speed))
            producer.close()
            stored = progress.add_task("stored by the workers", total=len(sample), speed="")
            while True:
                if workers.poll() is not None:
                    tail = log_path.read_text(errors="replace").strip().splitlines()[-8:]
                    raise MonitorError(f"the workers stopped (exit {workers.returncode}): {' | '.join(tail)}")
                counts = _counts(factory, source)
                elapsed = time.perf_counter() - started
                progress.update(stored, completed=counts["predictions"],
                                speed=f"{counts['predictions'] / max(elapsed, 1e-9):.1f} posts/s")
                if counts["predictions"] >= len(sample) and counts["explanations"] >= counts["escalated"]:
                    break
                if elapsed > timeout:
                    raise MonitorError(f"timed out after {timeout:.0f}s with {counts} (log: {log_path})")
                time.sleep(1)
    finally:
        process.stop_group(workers, timeout_s=60)
    seconds = time.perf_counter() - started
    table = Table("measure", "value", title=f"monitor demo: {len(sample)} posts, task {TASK}")
    table.add_row("end to end", f"{seconds:.1f} s ({len(sample) / seconds:.1f} posts/s, produce to rows)")
    for name in ("posts", "predictions", "escalated", "explanations", "flipped", "over_budget", "unverified", "signals"):
        table.add_row(name, str(counts[name]))
    console.print(table)
    for text, predicted, verdict, suggested, final, evidence, rationale in _examples(factory, source):
        said = "LLM (no verdict: not measured informative)" if verdict == "withheld" else f"LLM {verdict} ({suggested})"
        console.print(f"[dim]{text[:140]}...[/]\n  classifier [bold]{predicted}[/]; {said}: "
                      f"\"{evidence[:100]}\" - {rationale}; final [bold]{final}[/]")
    with transaction(factory) as session:  # the spikes in what was just stored, for the console's alert list
        report = run_detection(session, settings.signals, now=datetime.now(UTC))
    console.print(f"detection: {len(report.alerts)} alerting buckets, {report.inserted} new alerts "
                  "(`monitor signals detect` runs it again)")
    password = demo_reviewer(factory)
    factory.kw["bind"].dispose()
    where = display_url(database.url)
    console.print(f"rows: {where} (posts with source {source}); worker log: {log_path}")
    try:
        with console.status("starting the console..."):
            (outcome,) = local.up(settings, ["console"])
        console.print(f"[green]console[/]: {outcome.message}")
    except ServiceError as exc:  # what the demo stored stays; say why the console is not ours to show
        console.print(f"[yellow]console[/]: not started: {exc}")
    url = local.local_console(settings).url
    if password is not None:
        console.print(f"analyst's console: [bold]{url}[/]; sign in as [bold]{DEMO_USER}[/] with the password "
                      f"[bold]{password}[/] (shown only now; change it with `monitor console add-user {DEMO_USER} "
                      "--role reviewer --reset`)")
    else:
        console.print(f"analyst's console: [bold]{url}[/]; sign in with your account (new ones: "
                      "`monitor console add-user NAME --role reviewer`)")
    console.print("stop the console and the broker with `monitor services down` (docs/console.md)")


def demo_reviewer(factory) -> str | None:  # noqa: ANN001 - a sessionmaker
    """A ``demo`` reviewer with a random password when the database has no console account yet; the password,
    or None when accounts exist (the demo never adds one beside someone's own, nor resets it)."""
    from monitor.console.auth import hash_password
    from monitor.storage.reviews import add_user, list_users
    from monitor.storage.session import transaction

    with transaction(factory) as session:
        if list_users(session):
            return None
        password = secrets.token_urlsafe(12)  # 16 characters, 96 random bits
        add_user(session, DEMO_USER, hash_password(password), "reviewer")
    return password
