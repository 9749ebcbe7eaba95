"""``monitor produce FILE``: send the posts of a file to Kafka, keyed by post id, timed by ``created_at``."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from enum import Enum
from itertools import chain, islice
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from monitor.cli.context import settings_of
from monitor.config import KafkaSettings, TopicSettings
from monitor.errors import BrokerError, ConfigError, MonitorError

console = Console()
#: How long a send may wait for the broker before it counts as failed.
DELIVERY_TIMEOUT_MS = 60_000
#: Kafka 4 refuses record times more than an hour ahead (log.message.timestamp.after.max.ms), and
#: fails the whole batch with them: such a post is held back, a minute's margin under the limit.
FUTURE_LIMIT_MS = 59 * 60_000


class Compression(str, Enum):
    none = "none"
    gzip = "gzip"
    lz4 = "lz4"
    snappy = "snappy"
    zstd = "zstd"


class Delivery:
    """What the broker said about each send (the callbacks run on the producer's I/O thread)."""

    def __init__(self) -> None:
        self.acked = 0
        self.failed = 0
        self.first_error: str | None = None
        self.oldest_ms: int | None = None

    def ok(self, metadata: object) -> None:
        self.acked += 1

    def error(self, exc: BaseException) -> None:
        self.refuse(f"{type(exc).__name__}: {exc}")

    def refuse(self, message: str) -> None:
        self.failed += 1
        if self.first_error is None:
            self.first_error = message


def open_producer(kafka: KafkaSettings, compression: Compression):  # noqa: ANN201 - a KafkaProducer
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    options = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": f"{kafka.client_id}-produce",
        "acks": "all",
        "linger_ms": 20,  # fill batches at high rates; at --rate the wait is far shorter than the pace
        "batch_size": 256 * 1024,
        "compression_type": None if compression is Compression.none else compression.value,
        "request_timeout_ms": int(kafka.request_timeout_s * 1000),
        "delivery_timeout_ms": DELIVERY_TIMEOUT_MS,
        "max_block_ms": int(kafka.request_timeout_s * 1000),
        "bootstrap_timeout_ms": int(kafka.request_timeout_s * 1000),
    }
    options = {key: value for key, value in options.items() if key in KafkaProducer.DEFAULT_CONFIG}
    if "enable_idempotence" in KafkaProducer.DEFAULT_CONFIG:
        options["enable_idempotence"] = True  # a retried batch is written once
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


def produce(
    ctx: typer.Context,
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSONL of posts, or a labelled file with --task"),
    task: str | None = typer.Option(None, help="Task whose framing reads a labelled CSV/TSV/JSONL (gold labels are kept)"),
    topic: str | None = typer.Option(None, help="Topic to write (default: topics.posts)"),
    rate: float | None = typer.Option(None, min=0.001, help="Posts per second (default: as fast as the broker takes them)"),
    limit: int | None = typer.Option(None, min=1, help="Stop after N posts"),
    source: str | None = typer.Option(None, help="Source of the posts (default: the record's, or the file name with --task)"),
    skip_bad_rows: bool = typer.Option(False, help="Skip (and count) malformed records instead of failing"),
    shift_to_now: bool = typer.Option(
        False, help="Move all times by one offset so the newest post is now (old posts outlive the topic's retention)"),
    compression: Compression = typer.Option(Compression.none, help="Batch compression"),
) -> None:
    """Send the posts of FILE to Kafka: key = post id, value = the post's JSON, timestamp = created_at."""
    from kafka.errors import KafkaError, KafkaTimeoutError

    from monitor.feed import RateLimiter, posts_from_file, shift_times, timestamp_ms
    from monitor.records import encode_post
    from monitor.tasks import load_task

    settings = settings_of(ctx)
    try:
        topic = TopicSettings(posts=topic).posts if topic else settings.topics.posts
    except ValidationError as exc:
        raise ConfigError(f"--topic: not a valid Kafka topic name: {topic!r}") from exc
    definition = load_task(task) if task else None
    skipped = 0

    def on_skip(_bad: object) -> None:
        nonlocal skipped
        skipped += 1

    # Read up to the first post before connecting: a file that is bad from the start fails at once,
    # and the rate below measures sending, not parsing (a labelled file is read whole first).
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

    producer = open_producer(settings.kafka, compression)  # first: it gives up on a silent broker in time
    try:
        check_topic(settings.kafka, topic)
    except BrokerError:
        producer.close(timeout=1)
        raise
    limiter = RateLimiter(rate) if rate else None
    delivery = Delivery()
    sent = 0
    error: MonitorError | None = None
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[speed]}"), TimeElapsedColumn(), console=console)
    started = finished = time.perf_counter()
    try:
        with progress:
            job = progress.add_task(f"-> {topic}", total=total, speed="")
            shown = started
            for post in posts:
                if limiter is not None:
                    limiter.wait()
                ms = timestamp_ms(post.created_at)
                if ms > time.time() * 1000 + FUTURE_LIMIT_MS:
                    problem = f"post {post.id!r}: created_at {post.created_at:%Y-%m-%dT%H:%M:%SZ} is in the future"
                    if skip_bad_rows:
                        skipped += 1
                    else:
                        sent += 1
                        delivery.refuse(f"{problem}; the broker refuses times over an hour ahead")
                    continue
                delivery.oldest_ms = ms if delivery.oldest_ms is None else min(ms, delivery.oldest_ms)
                try:
                    future = producer.send(topic, key=post.id.encode("utf-8"), value=encode_post(post), timestamp_ms=ms)
                except KafkaTimeoutError as exc:  # no metadata for the topic: every further send would wait too
                    raise BrokerError(f"Kafka at {settings.kafka.bootstrap_servers} did not take a send to "
                                      f"{topic!r}: {exc}") from exc
                except KafkaError as exc:  # this record only (e.g. over the size limit)
                    delivery.error(exc)
                else:
                    future.add_callback(delivery.ok).add_errback(delivery.error)
                sent += 1
                now = time.perf_counter()
                if now - shown >= 0.2:
                    progress.update(job, completed=sent, speed=f"{sent / (now - started):,.0f} posts/s")
                    shown = now
            progress.update(job, completed=sent, speed="flushing")
            producer.flush(timeout=DELIVERY_TIMEOUT_MS / 1000 + 5)
            finished = time.perf_counter()
            progress.update(job, speed=f"{sent / (time.perf_counter() - started):,.0f} posts/s")
    except MonitorError as exc:  # a bad line (DataError) or a lost broker: report what was sent first
        error = exc
    except KafkaError as exc:  # flush timed out
        error = BrokerError(f"Kafka at {settings.kafka.bootstrap_servers} did not confirm every send: {exc}")
    finally:
        finished = finished if finished > started else time.perf_counter()
        try:
            producer.close(timeout=10)
        except KafkaError:
            pass
    seconds = finished - started
    failed = delivery.failed + (sent - delivery.acked - delivery.failed)  # unconfirmed counts as failed

    table = Table("measure", "value", title=f"monitor produce {file.name} -> {topic}")
    table.add_row("sent (acknowledged)", str(delivery.acked))
    table.add_row("failed", str(failed))
    if skip_bad_rows:
        table.add_row("bad rows skipped", str(skipped))
    table.add_row("seconds", f"{seconds:.2f}")
    table.add_row("posts/s", f"{delivery.acked / max(seconds, 1e-9):,.0f}")
    table.add_row("seconds reading before the first send", f"{read_seconds:.2f}")
    console.print(table)
    if delivery.first_error:
        console.print(f"[red]first failure:[/] {delivery.first_error}", highlight=False)
    retention = timedelta(hours=settings.kafka.retention_hours)
    if delivery.oldest_ms is not None and not shift_to_now and \
            datetime.fromtimestamp(delivery.oldest_ms / 1000, UTC) < datetime.now(UTC) - retention:
        console.print(f"[yellow]warning:[/] some posts are older than the topics' retention "
                      f"({settings.kafka.retention_hours} h): the broker may delete them within minutes; "
                      "--shift-to-now keeps their spacing but moves them to now", highlight=False)
    if error is not None:
        raise error
    if failed:
        raise typer.Exit(1)
