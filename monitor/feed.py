"""Posts from files, for feeding the stream or a batch run: JSONL post records, or a labelled file a
task can read; plus the rate limiter of ``monitor produce``. Reads files, no Kafka; the clock is an
argument (the system's by default).

Times. A post keeps its record's ``created_at``. A labelled file has no ``created_at`` field, so the
first date column the file has (``created_at``, ``date``, ``created_utc``, ``timestamp``) gives the
time: an ISO 8601 value (``2019/02/19`` reads as ``2019-02-19``) or Unix seconds; the posts that share
a date without a time of day are spread evenly over that UTC day in file order. A post with no time
at all (a file without a date column, a JSONL record without ``created_at``) gets a synthetic one:
row ``i`` of ``n`` is at ``end - days + i * days / n`` (whole seconds), where ``end`` is the UTC
midnight before ``now``. The same file on the same day gives the same times, and replaying by time
replays in file order.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from monitor.errors import DataError
from monitor.records import (
    MAX_SOURCE_CHARS,
    Post,
    RecordError,
    decode_post,
    format_time,
    parse_time,
    post_from_record,
)
from monitor.tasks import TaskDefinition
from monitor.corpus import BadRow, delimited_records, file_format, jsonl_records, load_examples

DATE_COLUMNS = ("created_at", "date", "created_utc", "timestamp")
SYNTHETIC_DAYS = 7
_TABLE_SUFFIXES = {".csv", ".tsv", ".tab", ".txt"}
_DAY_S = 86_400
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

OnSkip = Callable[[BadRow], None]


def timestamp_ms(created_at: datetime) -> int:
    """Milliseconds since 1970 (the Kafka record timestamp), exact: no float in between."""
    return (created_at - _EPOCH) // timedelta(milliseconds=1)


def synthetic_times(n: int, *, now: datetime, days: int = SYNTHETIC_DAYS) -> list[datetime]:
    """``n`` times in row order over the ``days`` before the UTC midnight preceding ``now``."""
    end = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    span = days * _DAY_S
    return [end - timedelta(seconds=span) + timedelta(seconds=i * span // max(n, 1)) for i in range(n)]


def shift_times(posts: Sequence[Post], *, newest: datetime) -> list[Post]:
    """The posts moved in time by one offset so the newest lands on ``newest``; spacing is kept."""
    if not posts:
        return []
    delta = newest.astimezone(UTC) - max(post.created_at for post in posts)
    return [post.model_copy(update={"created_at": post.created_at + delta}) for post in posts]


def parse_date_value(raw: str) -> tuple[datetime, bool]:
    """(time, whether it had a time of day) of a date cell; ``ValueError`` if it is neither ISO 8601
    (``/`` allowed between date parts) nor Unix seconds."""
    value = raw.strip()
    if value.replace(".", "", 1).isdigit() and value.isascii():
        try:
            return _EPOCH + timedelta(seconds=float(value)), True
        except OverflowError:
            raise ValueError(f"{value[:40]} seconds is out of range") from None
    if len(value) >= 10 and value[4:5] == "/" and value[7:8] == "/":
        value = f"{value[:4]}-{value[5:7]}-{value[8:]}"
    return parse_time(value), len(value) > 10


def default_source(path: Path) -> str:
    """A source name from the file's name: the same file gives the same (source, id) keys."""
    return path.stem[:MAX_SOURCE_CHARS].strip() or "file"


# ---------------------------------------------------------------- JSONL post records


def _jsonl_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if number == 1:
                line = line.removeprefix(b"\xef\xbb\xbf")
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield number, line


def _posts_from_jsonl(path: Path, *, source: str | None, skip_bad_rows: bool, on_skip: OnSkip | None,
                      now: datetime, days: int) -> Iterator[Post]:
    count = sum(1 for _ in _jsonl_lines(path))
    fallback = synthetic_times(count, now=now, days=days)
    for index, (line, raw) in enumerate(_jsonl_lines(path)):
        try:
            post = decode_post(raw, fallback_time=fallback[index])
        except RecordError as exc:
            if not skip_bad_rows:
                raise DataError(f"{path}:{line}: {exc.reason}: {exc.message}") from None
            if on_skip:
                on_skip(BadRow(line, f"{exc.reason}: {exc.message}"))
            continue
        if source and post.source == "unknown":
            post = post.model_copy(update={"source": source})
        yield post


# ---------------------------------------------------------------- labelled files


def _table_records(path: Path, fmt: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(start line, record) of a CSV/TSV/JSONL file, read the way ``load_examples`` read it (which
    already accepted the file); a record it would refuse comes as an empty dict."""
    reader = jsonl_records(path) if fmt == "jsonl" else delimited_records(path, fmt)
    for number, record, _problem in reader:
        yield number, record if isinstance(record, dict) else {}


def _row_index(path: Path, task: TaskDefinition) -> tuple[dict[str, int], dict[str, str], str | None]:
    """By example id: the line the record starts on and its raw date cell; and the date column."""
    lines: dict[str, int] = {}
    dates: dict[str, str] = {}
    date_column: str | None = None
    framing = task.data
    for ordinal, (line, record) in enumerate(_table_records(path, file_format(path, task.data)), start=1):
        if framing.id_field:
            id_field = next((name for name in framing.id_field if name in record), None)
            raw_id = record.get(id_field) if id_field is not None else None
            if raw_id is None or isinstance(raw_id, (dict, list, bool)):
                continue
            key = str(raw_id).strip()
        else:
            key = str(ordinal)
        if key in lines:
            continue  # load_examples keeps the first of a repeated id
        lines[key] = line
        if date_column is None:
            date_column = next((name for name in DATE_COLUMNS if name in record), None)
        value = record.get(date_column) if date_column else None
        if isinstance(value, str):
            dates[key] = value
    return lines, dates, date_column


def _posts_from_examples(path: Path, task: TaskDefinition, *, source: str | None, skip_bad_rows: bool,
                         on_skip: OnSkip | None, now: datetime, days: int) -> Iterator[Post]:
    loaded = load_examples(path, task, skip_bad_rows=skip_bad_rows)
    if on_skip:
        for bad in loaded.bad_rows:
            on_skip(bad)
    lines, dates, date_column = _row_index(path, task)
    source = source or default_source(path)

    def refuse(example_id: str, reason: str) -> None:
        line = lines.get(example_id, 0)
        if not skip_bad_rows:
            raise DataError(f"{path}:{line}: {reason}")
        if on_skip:
            on_skip(BadRow(line, reason))

    examples = list(loaded.examples)
    times: dict[str, datetime] = {}
    if date_column is not None:
        parsed: dict[str, tuple[datetime, bool]] = {}
        kept = []
        for example in examples:
            try:
                parsed[example.id] = parse_date_value(dates.get(example.id, ""))
            except ValueError as exc:
                refuse(example.id, f"bad_created_at: {date_column} {dates.get(example.id, '')[:40]!r}: {exc}")
                continue
            kept.append(example)
        examples = kept
        # Posts that share a date and no time of day are spread over that day in file order.
        per_day = Counter(day for day, timed in parsed.values() if not timed)
        seen: Counter[datetime] = Counter()
        for example in examples:
            day, timed = parsed[example.id]
            if timed:
                times[example.id] = day
            else:
                times[example.id] = day + timedelta(seconds=seen[day] * _DAY_S // per_day[day])
                seen[day] += 1
    else:
        times = dict(zip((e.id for e in examples), synthetic_times(len(examples), now=now, days=days), strict=True))

    for example in examples:
        record = {"id": example.id, "text": example.text, "created_at": format_time(times[example.id]),
                  "source": source, "labels": {task.name: example.label}}
        try:
            post = post_from_record(record, fallback_time=times[example.id])
        except RecordError as exc:
            refuse(example.id, f"{exc.reason}: {exc.message}")
            continue
        yield post


def posts_from_file(path: str | Path, *, task: TaskDefinition | None = None, source: str | None = None,
                    skip_bad_rows: bool = False, on_skip: OnSkip | None = None, now: datetime | None = None,
                    synthetic_days: int = SYNTHETIC_DAYS) -> Iterator[Post]:
    """The posts of ``path`` in file order.

    Without ``task``: a JSONL file of post records (docs/post-schema.md), each line read by
    ``decode_post``; ``source`` names the posts whose record names none. With ``task``: any file the
    task's framing reads (CSV/TSV/SMM4H/JSONL), each example a post with ``labels={task: label}`` and
    ``source`` (default: the file's stem). A bad line fails with ``DataError("path:LINE: reason")``
    unless ``skip_bad_rows``, which skips it and tells ``on_skip``. ``now`` (default: the clock) anchors
    synthetic times; see the module docstring.
    """
    path = Path(path)
    now = now or datetime.now(UTC)
    if synthetic_days < 1:
        raise ValueError("synthetic_days must be at least 1")
    if task is None:
        if path.suffix.lower() in _TABLE_SUFFIXES:
            raise DataError(f"{path}: a {path.suffix} file is read through a task's framing: pass a task")
        try:
            yield from _posts_from_jsonl(path, source=source, skip_bad_rows=skip_bad_rows, on_skip=on_skip,
                                         now=now, days=synthetic_days)
        except FileNotFoundError as exc:
            raise DataError(f"{path}: no such file") from exc
        except OSError as exc:
            raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
        return
    yield from _posts_from_examples(path, task, source=source, skip_bad_rows=skip_bad_rows, on_skip=on_skip,
                                    now=now, days=synthetic_days)


# ---------------------------------------------------------------- pacing


class RateLimiter:
    """At most ``rate`` events per second on average, ``burst`` of them back to back.

    Pure: the clock is injected and ``reserve`` only says how long to wait (GCRA, the "virtual
    scheduling" form of a token bucket); the caller sleeps.
    """

    def __init__(self, rate: float, *, burst: int = 1, clock: Callable[[], float] = time.monotonic) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be positive, got {rate}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst}")
        self.rate = rate
        self._interval = 1.0 / rate
        self._tolerance = (burst - 1) * self._interval
        self._clock = clock
        self._next: float | None = None  # the time the next event is due, were the pace exact

    def reserve(self) -> float:
        """Claim the next slot; the seconds to wait before the event may happen (0 when it may now)."""
        now = self._clock()
        due = now if self._next is None else max(self._next, now)
        self._next = due + self._interval
        return max(0.0, due - self._tolerance - now)

    def wait(self, sleep: Callable[[float], None] = time.sleep) -> None:
        """Claim the next slot and sleep until it is due."""
        delay = self.reserve()
        if delay > 0:
            sleep(delay)
