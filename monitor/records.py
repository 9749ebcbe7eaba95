"""The records that travel through the pipeline: frozen, validated, no I/O.

``decode_post`` is the edge of the stream: it turns untrusted bytes into a :class:`Post` or raises
:class:`RecordError` with a short reason code; the caller sends the bytes to the dead-letter topic
as a :class:`DeadLetter`. The wire format is documented in ``docs/post-schema.md``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from monitor.errors import MonitorError

MAX_TEXT_CHARS = 40_000
#: A post is a few kilobytes; the cap keeps one record from costing a worker real memory or time.
MAX_RECORD_BYTES = 256 * 1024
MAX_ID_CHARS = 128
MAX_SOURCE_CHARS = 64
MAX_AUTHOR_CHARS = 64
MAX_LANG_CHARS = 16
MAX_GEO_MEMBERS = 16
MAX_GEO_KEY_CHARS = 64
MAX_GEO_VALUE_CHARS = 256
MAX_LABELS = 64
#: A dead letter keeps at most this much of the original: base64 makes it 4/3 larger, and the whole
#: record must stay under the broker's default 1 MB message limit.
MAX_DEAD_LETTER_BYTES = 512 * 1024
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: Every reason ``decode_post`` can give, with what it means (the table in docs/post-schema.md).
REASONS: dict[str, str] = {
    "empty": "no bytes at all (an empty message or a tombstone)",
    "too_large": f"the record is over {MAX_RECORD_BYTES} bytes",
    "not_utf8": "the bytes are not UTF-8",
    "not_json": "not one JSON value, or a JSON that cannot be read safely "
                "(NaN/Infinity, an out-of-range number, a repeated key, nesting too deep)",
    "not_object": "the JSON value is not an object",
    "missing_id": "no id, or id is null",
    "missing_text": "no text, or text is null",
    "wrong_type": "a field has the wrong JSON type (e.g. a fractional or boolean id, a numeric created_at)",
    "bad_id": f"id is blank, longer than {MAX_ID_CHARS} characters, negative, or holds control characters",
    "blank_text": "text has nothing but white space and control characters",
    "text_too_long": f"text is over {MAX_TEXT_CHARS} characters",
    "bad_created_at": "created_at is not an ISO 8601 time from 1970 on",
    "bad_field": "source, author, lang, geo or labels break their limits",
}
#: The stage that sent a record to the dead-letter topic.
Stage = Literal["source", "decode", "classify", "explain", "persist"]


class RecordError(MonitorError):
    """Bytes that are not a valid record: ``reason`` is a code from ``REASONS``, ``message`` says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


# ---------------------------------------------------------------- Unicode at the edge

# C0/C1 controls except tab, line feed and carriage return, and UTF-16 surrogates: Python's json
# turns an escaped lone surrogate ("\ud800") into a str that cannot be encoded to UTF-8.
_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
# What a name-like field (id, source, author, lang, geo keys) may never hold.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_TASK_KEY = re.compile(r"[a-z][a-z0-9_]{0,63}")
_LABEL_VALUE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")
# The ISO 8601 subset accepted for created_at (the same pattern is in docs/post.schema.json).
_TIME = re.compile(
    r"(19[7-9][0-9]|[2-9][0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"([T ]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,9})?)?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?)?"
)


def _safe_char(match: re.Match[str]) -> str:
    char = match.group()
    if "\ud800" <= char <= "\udfff":
        return "\ufffd"
    # A control that means a break (vertical tab, form feed, NEL) keeps words apart; NUL and the
    # rest carry nothing (often UTF-16 read as bytes: "h\x00i\x00") and are dropped.
    return " " if char.isspace() else ""


def clean_text(text: str) -> str:
    """Free text made safe to store: lone surrogates -> U+FFFD, whitespace controls -> space,
    other controls (NUL included: PostgreSQL refuses it) removed; tab, CR and LF kept."""
    return _UNSAFE.sub(_safe_char, text) if _UNSAFE.search(text) else text


def _printable(value: str, what: str) -> str:
    if _UNPRINTABLE.search(value):
        raise ValueError(f"{what} holds control characters or lone surrogates")
    return value


def _check_geo(geo: Mapping[Any, Any]) -> dict[str, Any]:
    if len(geo) > MAX_GEO_MEMBERS:
        raise ValueError(f"geo has {len(geo)} members; at most {MAX_GEO_MEMBERS}")
    clean: dict[str, Any] = {}
    for key, value in geo.items():
        if not isinstance(key, str) or not 0 < len(key) <= MAX_GEO_KEY_CHARS:
            raise ValueError(f"geo keys are strings of 1 to {MAX_GEO_KEY_CHARS} characters, got {key!r:.80}")
        _printable(key, "a geo key")
        if isinstance(value, str):
            if len(value) > MAX_GEO_VALUE_CHARS:
                raise ValueError(f"geo.{key} is over {MAX_GEO_VALUE_CHARS} characters")
            value = clean_text(value)
        elif isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"geo.{key} is not a finite number")
        elif value is not None and not isinstance(value, (bool, int, float)):
            raise ValueError(f"geo.{key} must be a string, number, boolean or null, got {type(value).__name__}")
        clean[key] = value
    return clean


def _check_labels(labels: Mapping[Any, Any]) -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise ValueError(f"labels has {len(labels)} members; at most {MAX_LABELS}")
    for task, label in labels.items():
        if not isinstance(task, str) or not _TASK_KEY.fullmatch(task):
            raise ValueError(f"labels keys are task names (a-z, 0-9, _), got {task!r:.80}")
        if not isinstance(label, str) or not _LABEL_VALUE.fullmatch(label):
            raise ValueError(f"labels.{task} must be a label name (a letter, then letters, digits, _ or -), "
                             f"got {label!r:.80}")
    return dict(labels)


# ---------------------------------------------------------------- records


class Post(BaseModel):
    """A social-media post as it arrives: the source's id is a string, never a number.

    Constructed directly or by ``decode_post``, the same rules hold: free text is cleaned with
    ``clean_text``; name-like fields refuse control characters; ``created_at`` is UTC from 1970 on.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    created_at: datetime
    source: str = Field("unknown", min_length=1, max_length=MAX_SOURCE_CHARS)
    author: str | None = Field(None, max_length=MAX_AUTHOR_CHARS)
    lang: str | None = Field(None, max_length=MAX_LANG_CHARS)
    geo: dict[str, Any] | None = None
    labels: dict[str, str] = Field(default_factory=dict, description="gold labels per task (evaluation streams)")

    @field_validator("text", mode="before")
    @classmethod
    def _clean(cls, value: object) -> object:
        return clean_text(value) if isinstance(value, str) else value

    @field_validator("text")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("text is blank")
        return value

    @field_validator("id", "source")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("blank")
        return _printable(value, "the value")

    @field_validator("author", "lang")
    @classmethod
    def _optional_name(cls, value: str | None) -> str | None:
        return None if value is None else _printable(value, "the value")

    @field_validator("geo")
    @classmethod
    def _geo(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else _check_geo(value)

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_labels(value)

    @field_validator("created_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        # A timestamp without a zone is taken as UTC, the convention of every source we read.
        try:
            value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        except OverflowError:
            raise ValueError("created_at is out of range in UTC") from None
        if value < _EPOCH:
            # A Kafka record timestamp is milliseconds since 1970: earlier times cannot be replayed.
            raise ValueError("created_at is before 1970-01-01")
        return value


class Prediction(BaseModel):
    """One classifier output for one post and task."""

    model_config = ConfigDict(frozen=True)

    post_id: str
    source: str = "unknown"
    task: str
    model_version: str
    label: str
    probabilities: dict[str, float]
    confidence: float = Field(ge=0.0, le=1.0)
    escalated: bool = False


class Explanation(BaseModel):
    """The explainer's answer on one (post, task, predicted label); ``unverified`` carries the reason."""

    model_config = ConfigDict(frozen=True)

    #: ``withheld``: the LLM answered, but its verdicts were not measured informative for this task,
    #: LLM, prompt and policy (``monitor explain-eval``): the rationale stands, the verdict is not shown.
    verdict: Literal["confirm", "reject", "withheld", "unverified", "over_budget"]
    predicted_label: str
    suggested_label: str | None = None
    evidence: str | None = None
    #: The evidence's line number among the post's numbered lines (``prompts.post_lines``).
    evidence_line: int | None = None
    #: The LLM's contextually calibrated probability of each label, read from its scores of the
    #: reply's openings (confirm = the predicted label; None when the reply was decoded unconstrained).
    label_scores: dict[str, float] | None = None
    rationale: str | None = None
    reason: str | None = None
    llm_model: str
    prompt_version: str
    latency_s: float = 0.0
    attempts: int = 0
    cached: bool = False
    #: Terms of the rationale (a drug, a symptom, a number) that the post does not contain.
    unsupported: tuple[str, ...] | None = None

    @property
    def confirm_score(self) -> float | None:
        """P(the predicted label is right), from the scores; None without them."""
        if self.label_scores is None:
            return None
        return self.label_scores.get(self.predicted_label)

    def at_threshold(self, threshold: float) -> tuple[str, str | None]:
        """(verdict, label it asserts) as the scores give it at ``threshold``: what the reply would have
        said had it been asked with that threshold. Without scores, the reply's own verdict."""
        if self.label_scores is None or self.verdict not in ("confirm", "reject"):
            return self.verdict, self.suggested_label
        if self.label_scores[self.predicted_label] >= threshold:
            return "confirm", self.predicted_label
        others = [(p, label) for label, p in self.label_scores.items() if label != self.predicted_label]
        return "reject", max(others)[1]


# ---------------------------------------------------------------- the wire format of a post


def format_time(value: datetime) -> str:
    """UTC ISO 8601 with a ``Z``: ``2024-05-01T12:00:00Z`` (microseconds only when there are some)."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse_time(value: str) -> datetime:
    """An aware UTC datetime from the ISO 8601 subset of the schema; ``ValueError`` otherwise."""
    if not _TIME.fullmatch(value):
        raise ValueError("expected ISO 8601 like 2024-05-01T12:00:00Z (a date, or date and time, "
                         "an optional offset; from 1970)")
    parsed = datetime.fromisoformat(value)  # ValueError for a day the month lacks
    try:
        parsed = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError("out of range in UTC") from None
    if parsed < _EPOCH:  # 1970-01-01T00:30+01:00
        raise ValueError("before 1970-01-01T00:00:00Z")
    return parsed


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record = dict(pairs)
    if len(record) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                # Parsers disagree on which copy wins; a record that means two things is refused.
                raise ValueError(f"repeated key {key!r:.80}")
            seen.add(key)
    return record


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(value), type(value).__name__)


def _optional_string(record: Mapping[str, Any], name: str, limit: int) -> str | None:
    value = record.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RecordError("wrong_type", f"{name} must be a string or null, got {_type_name(value)}")
    if len(value) > limit:
        raise RecordError("bad_field", f"{name} is over {limit} characters")
    if _UNPRINTABLE.search(value):
        raise RecordError("bad_field", f"{name} holds control characters or lone surrogates")
    return value


def _record_id(value: object) -> str:
    if value is None:
        raise RecordError("missing_id", "the record has no id")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        hint = " (a fractional number may have lost digits: send ids as strings)" if isinstance(value, float) else ""
        raise RecordError("wrong_type", f"id must be a string or an integer, got {_type_name(value)}{hint}")
    if isinstance(value, int):
        if value < 0:
            raise RecordError("bad_id", "an integer id must not be negative")
        if value >= 10**MAX_ID_CHARS:
            raise RecordError("bad_id", f"id is over {MAX_ID_CHARS} digits")
        return str(value)
    if len(value) > MAX_ID_CHARS:
        raise RecordError("bad_id", f"id is over {MAX_ID_CHARS} characters")
    if _UNPRINTABLE.search(value):
        raise RecordError("bad_id", "id holds control characters or lone surrogates")
    stripped = value.strip()
    if not stripped:
        raise RecordError("bad_id", "id is blank")
    return stripped


def post_from_record(record: Mapping[str, Any], *, fallback_time: datetime) -> Post:
    """A :class:`Post` from a decoded JSON object, with the checks and reason codes of ``decode_post``."""
    post_id = _record_id(record.get("id"))

    text = record.get("text")
    if text is None:
        raise RecordError("missing_text", "the record has no text")
    if not isinstance(text, str):
        raise RecordError("wrong_type", f"text must be a string, got {_type_name(text)}")
    if len(text) > MAX_TEXT_CHARS:
        raise RecordError("text_too_long", f"text has {len(text)} characters; at most {MAX_TEXT_CHARS}")
    text = clean_text(text)
    if not text.strip():
        raise RecordError("blank_text", "text is blank")

    raw_time = record.get("created_at")
    if raw_time is None:
        created_at = fallback_time
    elif not isinstance(raw_time, str):
        raise RecordError("wrong_type", f"created_at must be an ISO 8601 string, got {_type_name(raw_time)}")
    else:
        try:
            created_at = parse_time(raw_time)
        except ValueError as exc:
            raise RecordError("bad_created_at", f"created_at {raw_time[:64]!r}: {exc}") from None

    source = record.get("source")
    if source is not None:
        source = _optional_string(record, "source", MAX_SOURCE_CHARS)
        if not source or not source.strip():
            raise RecordError("bad_field", "source is blank")
    author = _optional_string(record, "author", MAX_AUTHOR_CHARS)
    lang = _optional_string(record, "lang", MAX_LANG_CHARS)

    geo = record.get("geo")
    if geo is not None:
        if not isinstance(geo, dict):
            raise RecordError("wrong_type", f"geo must be an object or null, got {_type_name(geo)}")
        try:
            geo = _check_geo(geo)
        except ValueError as exc:
            raise RecordError("bad_field", str(exc)) from None
    labels = record.get("labels")
    if labels is None:
        labels = {}
    elif not isinstance(labels, dict):
        raise RecordError("wrong_type", f"labels must be an object or null, got {_type_name(labels)}")
    else:
        try:
            labels = _check_labels(labels)
        except ValueError as exc:
            raise RecordError("bad_field", str(exc)) from None

    fields: dict[str, Any] = {"id": post_id, "text": text, "created_at": created_at, "author": author,
                              "lang": lang, "geo": geo, "labels": labels}
    if source is not None:
        fields["source"] = source
    try:
        return Post(**fields)
    except ValidationError as exc:  # the checks above should leave nothing for Post to refuse
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "record"
        raise RecordError("bad_field", f"{where}: {first['msg']}") from None


def decode_post(raw: bytes | bytearray | memoryview | None, *, fallback_time: datetime) -> Post:
    """A :class:`Post` from the bytes of one record, or ``RecordError`` with a reason code.

    ``fallback_time`` (the Kafka record's timestamp) is the post's time when the record has no
    ``created_at``. Nothing but ``RecordError`` is raised, whatever the bytes.
    """
    if raw is None or len(raw) == 0:
        raise RecordError("empty", "the record has no bytes")
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise RecordError("not_utf8", f"expected bytes, got {type(raw).__name__}")
    if len(raw) > MAX_RECORD_BYTES:
        raise RecordError("too_large", f"{len(raw)} bytes; at most {MAX_RECORD_BYTES}")
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError("not_utf8", f"invalid UTF-8 at byte {exc.start}: {exc.reason}") from None
    try:
        value = json.loads(text.removeprefix("\ufeff"), parse_float=_finite_float, parse_constant=_constant,
                           object_pairs_hook=_unique_keys)
    except RecursionError:
        raise RecordError("not_json", "nested too deep") from None
    except ValueError as exc:  # JSONDecodeError, the hooks above, an integer over 4300 digits
        raise RecordError("not_json", str(exc)[:200]) from None
    if not isinstance(value, dict):
        raise RecordError("not_object", f"expected a JSON object, got {_type_name(value)}")
    return post_from_record(value, fallback_time=fallback_time)


def encode_post(post: Post) -> bytes:
    """Canonical JSON of a post: UTF-8, sorted keys, no spaces, nulls and empty labels left out.

    ``decode_post(encode_post(p), fallback_time=...) == p`` for every valid post.
    """
    record: dict[str, Any] = {"id": post.id, "text": post.text, "created_at": format_time(post.created_at),
                              "source": post.source}
    for name in ("author", "lang", "geo"):
        if getattr(post, name) is not None:
            record[name] = getattr(post, name)
    if post.labels:
        record["labels"] = post.labels
    return json.dumps(record, ensure_ascii=False, sort_keys=True, separators=(",", ":"),
                      allow_nan=False).encode("utf-8")


# ---------------------------------------------------------------- dead letters


def as_utc(value: datetime) -> datetime:
    """A time in UTC; one without a zone is taken as UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class DeadLetter(BaseModel):
    """A record a stage could not handle: its bytes, why, where it came from and when.

    ``original`` is base64 in JSON and keeps at most ``MAX_DEAD_LETTER_BYTES`` of the record
    (``original_bytes`` is its full size, ``truncated`` says whether the tail was cut).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    original: bytes
    original_bytes: int = Field(ge=0)
    truncated: bool = False
    key: bytes | None = None
    reason: str = Field(min_length=1, max_length=64)
    message: str = Field(max_length=2000)
    stage: Stage
    topic: str | None = None
    partition: int | None = Field(None, ge=0)
    offset: int | None = Field(None, ge=0)
    time: datetime

    _utc = field_validator("time")(as_utc)

    @classmethod
    def of(cls, raw: bytes | bytearray | memoryview | None, *, reason: str, message: str, stage: Stage,
           time: datetime, key: bytes | None = None, topic: str | None = None, partition: int | None = None,
           offset: int | None = None) -> DeadLetter:
        """A dead letter for ``raw`` (cut to ``MAX_DEAD_LETTER_BYTES``), e.g. from a ``RecordError``'s
        ``reason`` and ``message``."""
        data = bytes(raw or b"")
        return cls(original=data[:MAX_DEAD_LETTER_BYTES], original_bytes=len(data),
                   truncated=len(data) > MAX_DEAD_LETTER_BYTES, key=key, reason=reason[:64],
                   message=message[:2000], stage=stage, topic=topic, partition=partition, offset=offset,
                   time=time)

    @classmethod
    def from_error(cls, error: BaseException, *, raw: bytes | bytearray | memoryview | None, stage: Stage,
                   time: datetime | None = None, key: bytes | None = None, topic: str | None = None,
                   partition: int | None = None, offset: int | None = None) -> DeadLetter:
        """A dead letter for ``raw`` that ``error`` stopped: a ``RecordError`` gives its reason code,
        any other exception its class name. ``time`` defaults to now."""
        reason = error.reason if isinstance(error, RecordError) else type(error).__name__
        message = error.message if isinstance(error, RecordError) else str(error)
        return cls.of(raw, reason=reason, message=message, stage=stage, time=time or datetime.now(UTC), key=key,
                      topic=topic, partition=partition, offset=offset)

    def to_bytes(self) -> bytes:
        record = self.model_dump()
        record["original"] = base64.b64encode(self.original).decode("ascii")
        record["key"] = None if self.key is None else base64.b64encode(self.key).decode("ascii")
        record["time"] = format_time(self.time)
        return json.dumps(record, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_bytes(cls, raw: bytes) -> DeadLetter:
        """The dead letter ``to_bytes`` wrote; ``RecordError("bad_dead_letter", ...)`` for anything else."""
        try:
            record = json.loads(bytes(raw).decode("utf-8"))
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            for name in ("original", "key"):
                if isinstance(record.get(name), str):
                    record[name] = base64.b64decode(record[name], validate=True)
            return cls.model_validate(record)
        except (ValueError, TypeError, RecursionError, binascii.Error) as exc:  # ValidationError is a ValueError
            raise RecordError("bad_dead_letter", str(exc).splitlines()[0][:200]) from None


# ---------------------------------------------------------------- erasures


class Erasure(BaseModel):
    """A deletion the monitor must honour: one post (``post_id``) or every post of an ``author`` on a
    ``source``. Platforms send them when a post or an account is deleted (``origin="platform"``);
    ``monitor privacy erase`` when a request arrives another way (``origin="request"``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: str = Field(min_length=1, max_length=MAX_SOURCE_CHARS)
    post_id: str | None = Field(None, min_length=1, max_length=MAX_ID_CHARS)
    author: str | None = Field(None, min_length=1, max_length=MAX_AUTHOR_CHARS)
    origin: Literal["platform", "request"] = "platform"
    time: datetime

    @field_validator("source", "post_id", "author")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return None if value is None else _printable(value, "the value")

    _utc = field_validator("time")(as_utc)

    @model_validator(mode="after")
    def _one_target(self) -> Erasure:
        if (self.post_id is None) == (self.author is None):
            raise ValueError("an erasure names either a post_id or an author, not both")
        return self

    @property
    def key(self) -> bytes:
        return (self.post_id or self.author or "").encode("utf-8")
