"""``monitor produce FILE``: send the posts of a file to Kafka, keyed by post id, timed by ``created_at``."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from itertools import chain, islice
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from monitor.cli.context import settings_of
from monitor.config import TopicSettings
from monitor.errors import BrokerError, ConfigError, MonitorError
from monitor.kafka.producer import Compression, Tally, check_topic, open_producer, send_posts

console = Console()


def print_summary(title: str, tally: Tally, *, seconds: float, read_seconds: float, skip_bad_rows: bool) -> None:
    table = Table("measure", "value", title=title)
    table.add_row("sent (acknowledged)", str(tally.acked))
    table.add_row("failed", str(tally.failed + tally.unconfirmed))
    if skip_bad_rows:
        table.add_row("bad rows skipped", str(tally.skipped))
    table.add_row("seconds", f"{seconds:.2f}")
    table.add_row("posts/s", f"{tally.acked / max(seconds, 1e-9):,.0f}")
    table.add_row("seconds reading before the first send", f"{read_seconds:.2f}")
    console.print(table)
    if tally.first_error:
        console.print(f"[red]first failure:[/] {tally.first_error}", highlight=False)


def produce(
    ctx: typer.Context,
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSONL of posts, or a labelled file with --task"),
    task: str | None = typer.Option(None, help="Task whose framing reads a labelled CSV/TSV/JSONL (gold labels are kept)"),
    topic: str | None = typer.Option(None, help="Topic to write (default: topics.posts)"),
    rate: float | None = typer.Option(None, min=0.001, help="Posts per second (default: as fast as the broker takes them)"),
    limit: int | None = typer.Option(None, min=1, help="Stop after N posts"),
    source: str | None = typer.Option(None, help="Source of the posts (default: the record's, or the file name with --task)"),
    skip_bad_rows: bool = typer.Option(False, help="Skip (and count) malformed records and future times instead of failing"),
    shift_to_now: bool = typer.Option(
        False, help="Move all times by one offset so the newest post is now (old posts outlive the topic's retention)"),
    compression: Compression = typer.Option(Compression.none, help="Batch compression"),
) -> None:
    """Send the posts of FILE to Kafka: key = post id, value = the post's JSON, timestamp = created_at."""
    from monitor.feed import posts_from_file, shift_times
    from monitor.tasks import load_task

    settings = settings_of(ctx)
    try:
        topic = TopicSettings(posts=topic).posts if topic else settings.topics.posts
    except ValidationError as exc:
        raise ConfigError(f"--topic: not a valid Kafka topic name: {topic!r}") from exc
    definition = load_task(task) if task else None
    tally = Tally()

    def on_skip(_bad: object) -> None:
        tally.skipped += 1

    # Read up to the first post before connecting: a file that is bad from the start fails at once,
    # and the rate measures sending, not parsing (a labelled file is read whole before its first post).
    reading = time.perf_counter()
    posts = islice(posts_from_file(file, task=definition, source=source, skip_bad_rows=skip_bad_rows,
                                   on_skip=on_skip), limit)
    total = limit
    if shift_to_now:
        shifted = shift_times(list(posts), newest=datetime.now(UTC))
        posts, total = iter(shifted), len(shifted)
    first = next(posts, None)
    posts = chain([first], posts) if first is not None else iter(())
    read_seconds = time.perf_counter() - reading

    # The producer first: it gives up on a silent broker within the request timeout.
    producer = open_producer(settings.kafka, compression)
    try:
        check_topic(settings.kafka, topic)
    except BrokerError:
        producer.close(timeout=1)
        raise
    error: MonitorError | None = None
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[speed]}"), TimeElapsedColumn(), console=console)
    started = time.perf_counter()
    try:
        with progress:
            job = progress.add_task(f"-> {topic}", total=total, speed="")
            send_posts(producer, topic, posts, tally, rate=rate, skip_future=skip_bad_rows,
                       on_progress=lambda sent, speed: progress.update(job, completed=sent, speed=speed))
    except MonitorError as exc:  # a bad line (DataError) or a lost broker: report what was sent first
        error = exc
    finally:
        seconds = time.perf_counter() - started
        producer.close(timeout=10)  # sends anything still buffered after an error
    if tally.sent or tally.skipped:
        print_summary(f"monitor produce {file.name} -> {topic}", tally, seconds=seconds, read_seconds=read_seconds,
                      skip_bad_rows=skip_bad_rows)
    retention = timedelta(hours=settings.kafka.retention_hours)
    if tally.oldest_ms is not None and not shift_to_now and \
            datetime.fromtimestamp(tally.oldest_ms / 1000, UTC) < datetime.now(UTC) - retention:
        console.print(f"[yellow]warning:[/] some posts are older than the topics' retention "
                      f"({settings.kafka.retention_hours} h): the broker may delete them within minutes; "
                      "--shift-to-now keeps their spacing but moves them to now", highlight=False)
    if error is not None:
        raise error
    if tally.failed or tally.unconfirmed:
        raise typer.Exit(1)
