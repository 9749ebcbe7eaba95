"""``monitor produce FILE``: send the posts of a file to Kafka, keyed by post id, timed by ``created_at``."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from itertools import chain, islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from monitor.cli.context import settings_of
from monitor.config import KafkaSettings, TopicSettings
from monitor.errors import BrokerError, ConfigError, MonitorError

if TYPE_CHECKING:
    from monitor.records import Post

console = Console()
#: How long a send may wait for the broker before it counts as failed.
DELIVERY_TIMEOUT_MS = 60_000
#: Kafka 4 refuses record times more than an hour ahead (log.message.timestamp.after.max.ms) and
#: fails the whole batch with them: such a post is held back, with a minute's margin.
FUTURE_LIMIT_MS = 59 * 60_000


class Compression(str, Enum):
    none = "none"
    gzip = "gzip"
    lz4 = "lz4"
    snappy = "snappy"
    zstd = "zstd"


@dataclass
class Tally:
    """What happened to the posts; ``ok``/``error`` are the send callbacks (the producer's I/O thread
    calls them, one writer per counter)."""

    sent: int = 0
    acked: int = 0
    failed: int = 0
    skipped: int = 0
    first_error: str | None = None
    oldest_ms: int | None = None

    def ok(self, _metadata: object) -> None:
        self.acked += 1

    def error(self, exc: BaseException) -> None:
        self.refuse(f"{type(exc).__name__}: {exc}")

    def refuse(self, message: str) -> None:
        self.failed += 1
        if self.first_error is None:
            self.first_error = message

    @property
    def unconfirmed(self) -> int:
        return self.sent - self.acked - self.failed


def open_producer(kafka: KafkaSettings, compression: Compression) -> Any:
    """A KafkaProducer that writes each batch once (acks=all, idempotent) and batches by time."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    from monitor.kafka_security import client_options

    timeout_ms = int(kafka.request_timeout_s * 1000)
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": f"{kafka.client_id}-produce",
        "acks": "all",
        "enable_idempotence": True,  # kafka-python 3: a retried batch is written once
        # 20 ms fills batches at full speed (measured: 7,000 posts/s against 4,900 at 5 ms and 16 KiB).
        "linger_ms": 20,
        "batch_size": 256 * 1024,
        "compression_type": None if compression is Compression.none else compression.value,
        "request_timeout_ms": timeout_ms,
        "delivery_timeout_ms": DELIVERY_TIMEOUT_MS,
        "max_block_ms": timeout_ms,
        "bootstrap_timeout_ms": timeout_ms,
        **client_options(kafka),
    }
    options = {key: value for key, value in options.items() if key in KafkaProducer.DEFAULT_CONFIG}
    try:
        return KafkaProducer(**options)
    except AssertionError as exc:  # kafka-python's check for a compression library
        raise ConfigError(f"--compression {compression.value}: {exc}") from exc
    except KafkaError as exc:
        raise BrokerError(f"no Kafka broker answers at {kafka.bootstrap_servers}: {exc}") from exc


def check_topic(kafka: KafkaSettings, topic: str) -> None:
    from monitor import broker

    try:
        broker.end_offsets(kafka, topic)
    except BrokerError as exc:
        if "does not exist" in str(exc):
            raise BrokerError(f"{exc} (`monitor services up` creates the project topics)") from exc
        raise


def send_posts(producer: Any, topic: str, posts: Iterable[Post], tally: Tally, *, rate: float | None,
               skip_future: bool, progress: Progress, job: Any) -> None:
    """Send every post (paced by ``rate``), then wait for the broker to confirm them all."""
    from kafka.errors import KafkaError, KafkaTimeoutError

    from monitor.feed import RateLimiter, timestamp_ms
    from monitor.records import encode_post

    limiter = RateLimiter(rate) if rate else None
    started = shown = time.perf_counter()
    for post in posts:
        if limiter is not None:
            limiter.wait()
        ms = timestamp_ms(post.created_at)
        if ms > time.time() * 1000 + FUTURE_LIMIT_MS:
            if skip_future:
                tally.skipped += 1
            else:
                tally.sent += 1
                tally.refuse(f"post {post.id!r}: created_at {post.created_at:%Y-%m-%dT%H:%M:%SZ} is in the "
                             "future; the broker refuses times over an hour ahead")
            continue
        tally.oldest_ms = ms if tally.oldest_ms is None else min(ms, tally.oldest_ms)
        try:
            future = producer.send(topic, key=post.id.encode("utf-8"), value=encode_post(post), timestamp_ms=ms)
        except KafkaTimeoutError as exc:  # no metadata for the topic: every further send would wait too
            raise BrokerError(f"Kafka did not take a send to {topic!r}: {exc}") from exc
        except KafkaError as exc:  # this record only (e.g. over the size limit)
            tally.error(exc)
        else:
            future.add_callback(tally.ok).add_errback(tally.error)
        tally.sent += 1
        now = time.perf_counter()
        if now - shown >= 0.2:
            progress.update(job, completed=tally.sent, speed=f"{tally.sent / (now - started):,.0f} posts/s")
            shown = now
    progress.update(job, completed=tally.sent, speed="waiting for acks")
    try:
        producer.flush(timeout=DELIVERY_TIMEOUT_MS / 1000 + 5)
    except KafkaError as exc:
        raise BrokerError(f"Kafka did not confirm every send to {topic!r}: {exc}") from exc
    progress.update(job, speed=f"{tally.sent / max(time.perf_counter() - started, 1e-9):,.0f} posts/s")


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
            send_posts(producer, topic, posts, tally, rate=rate, skip_future=skip_bad_rows, progress=progress,
                       job=job)
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
