"""Labelled post files: read a CSV/TSV/SMM4H/JSONL file the way its task frames it, one
``Example`` per record, each bad record named by its line.

Used by training (``training/data.py`` splits what this reads) and by ``monitor produce`` (which
streams a file's rows as posts). Pure apart from reading the file. Ids are strings from start to
end: no CSV or JSON value ever passes through float.
"""

from __future__ import annotations

import ast
import csv
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from monitor.encoding import normalise_text
from monitor.errors import DataError
from monitor.tasks import DataFraming, TaskDefinition

# A social-media post is kilobytes; CSSRS packs a user's whole history in one field (~40 kB). The
# limit only has to stop a stray quote from swallowing an unbounded file into one field.
_FIELD_SIZE_LIMIT = 1 << 27
_SUFFIX_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".txt": "smm4h", ".jsonl": "jsonl", ".ndjson": "jsonl"}


@dataclass(frozen=True)
class Example:
    """One labelled post: the source's id (a string), the model's input text, the label name."""

    id: str
    text: str
    label: str

    def __post_init__(self) -> None:
        for name in ("id", "text", "label"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"Example.{name} must be a str, got {type(getattr(self, name)).__name__}")


@dataclass(frozen=True)
class BadRow:
    """A record that could not become an example: the physical line it starts on, and why."""

    line: int
    reason: str


@dataclass(frozen=True)
class LoadResult:
    """What a file gave: its examples in file order, and the records skipped (with skip_bad_rows)."""

    path: Path
    examples: tuple[Example, ...]
    bad_rows: tuple[BadRow, ...]


# ---------------------------------------------------------------- reading files


class _Bad(Exception):
    """A record-level problem: becomes a BadRow or, without skip_bad_rows, a DataError."""


def file_format(path: Path, framing: DataFraming) -> str:
    """The framing's format, or the one the extension names; DataError when neither says."""
    if framing.format != "auto":
        return framing.format
    if path.suffix.lower() not in _SUFFIX_FORMATS:
        raise DataError(f"{path}: cannot tell the format from the extension {path.suffix!r}; "
                        "set data.format in the task (smm4h, csv, tsv or jsonl)")
    return _SUFFIX_FORMATS[path.suffix.lower()]


def delimited_records(path: Path, fmt: str, on_header: Callable[[list[str]], None] = lambda _header: None
                      ) -> Iterator[tuple[int, dict[str, str] | None, str | None]]:
    """(start line, row by column, problem) for each record of a CSV/TSV file with a header."""
    if csv.field_size_limit() < _FIELD_SIZE_LIMIT:
        csv.field_size_limit(_FIELD_SIZE_LIMIT)
    with path.open(encoding="utf-8-sig", newline="") as handle:
        if fmt == "smm4h":  # the organisers ship .tsv, .csv and .txt; the header line says which
            delimiter = "\t" if "\t" in handle.readline() else ","
            handle.seek(0)
        else:
            delimiter = "\t" if fmt == "tsv" else ","
        reader = csv.reader(handle, delimiter=delimiter)
        header = [name.strip() for name in next(reader, [])]
        if not header or header == [""]:
            raise DataError(f"{path}:1: no header line")
        repeated = sorted({name for name in header if header.count(name) > 1})
        if repeated:
            raise DataError(f"{path}:1: repeated column names {repeated}")
        on_header(header)
        kind = "TSV" if delimiter == "\t" else "CSV"
        end = reader.line_num
        while True:
            start = end + 1
            try:
                record = next(reader, None)
            except csv.Error as exc:
                # The reader's position in a broken quote is unknowable: stop, whatever skip says.
                raise DataError(f"{path}:{start}: malformed {kind}: {exc}") from exc
            if record is None:
                return
            end = reader.line_num
            if not record:  # a blank line
                continue
            if len(record) != len(header):
                yield start, None, f"expected {len(header)} fields, got {len(record)}"
            else:
                yield start, dict(zip(header, record, strict=True)), None


def jsonl_records(path: Path) -> Iterator[tuple[int, dict[str, object] | None, str | None]]:
    """(line number, object or None, error or None) for each non-blank line of a JSONL file."""
    with path.open(encoding="utf-8-sig") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                # Numbers keep their literal text: a 19-digit id must not become a float.
                record = json.loads(line, parse_int=str, parse_float=str)
            except json.JSONDecodeError as exc:
                yield number, None, f"not valid JSON: {exc.msg} (column {exc.colno})"
                continue
            if isinstance(record, dict):
                yield number, record, None
            else:
                yield number, None, f"expected a JSON object, got {type(record).__name__}"


def _split_python_list(raw: str) -> list[str]:
    """Items of a Python-list rendering ``['a', "b's"]``; truncated renderings are split by pattern."""
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        value = None
    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        return list(value)
    body = raw.strip().removeprefix("[").removesuffix("]").strip()
    items = re.split(r"""(?<=['"]),\s*(?=['"])""", body)
    # The split keeps the quotes next to each boundary: take one off each end of every piece.
    items = [item[1 if item[:1] in "'\"" else 0:len(item) - (item[-1:] in "'\"")] for item in items]
    return [item.replace("\\'", "'").replace('\\"', '"').replace("\\n", "\n") for item in items]


def _text_value(value: object, framing: DataFraming) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):  # JSONL may hold a real list where a CSV holds its rendering
        return [str(item) for item in value if item is not None]
    if not isinstance(value, str):
        raise _Bad(f"expected text, got a JSON {type(value).__name__}")
    return _split_python_list(value) if framing.text_format == "python_list" else [value]


def _example(record: dict[str, object], framing: DataFraming, id_field: str | None, ordinal: int) -> Example:
    if id_field is None:
        example_id = str(ordinal)
    else:
        raw_id = record.get(id_field)
        if raw_id is None or isinstance(raw_id, (dict, list, bool)):
            raise _Bad(f"missing id in {id_field!r}")
        example_id = str(raw_id).strip()
        if not example_id:
            raise _Bad(f"missing id in {id_field!r}")
    parts = []
    for field in framing.text_fields:
        if field not in record:
            raise _Bad(f"missing text field {field!r}")
        parts += [piece for piece in map(normalise_text, _text_value(record[field], framing)) if piece]
    if not parts:
        raise _Bad("empty text")
    context = ""
    for field in framing.context_fields:
        value = record.get(field)
        if isinstance(value, str) and normalise_text(value):
            context += f"{field}: {normalise_text(value)}{framing.joiner}"
    text = normalise_text(context + framing.joiner.join(parts))
    raw_label = record.get(framing.label.field)
    # Checked before the rule: a map's default must not turn a blank cell into a label.
    if raw_label is None or isinstance(raw_label, (dict, list)) or not str(raw_label).strip():
        raise _Bad(f"missing label in {framing.label.field!r}")
    label = framing.label.label_for(str(raw_label))
    if label is None:
        raise _Bad(f"unknown label value {str(raw_label)!r} in {framing.label.field!r}")
    return Example(id=example_id, text=text, label=label)


def _header_id_field(path: Path, columns: Iterable[str], framing: DataFraming) -> str | None:
    columns = list(columns)
    missing = [f for f in (*framing.text_fields, framing.label.field) if f not in columns]
    if missing:
        raise DataError(f"{path}:1: missing column(s) {missing}; the columns are {columns}")
    if not framing.id_field:
        return None
    found = next((name for name in framing.id_field if name in columns), None)
    if found is None:
        raise DataError(f"{path}:1: no id column (looked for {list(framing.id_field)}); the columns are {columns}")
    return found


def load_examples(path: str | Path, task: TaskDefinition, *, skip_bad_rows: bool = False) -> LoadResult:
    """Read ``path`` into examples as ``task.data`` frames it; text is normalised.

    A bad record (wrong field count, missing or empty text, unknown label, broken JSON, repeated id)
    fails the load with ``path:LINE: reason`` (LINE = the physical line where the record starts),
    unless ``skip_bad_rows``, in which case it is listed in ``bad_rows`` and left out.
    """
    path = Path(path)
    framing = task.data
    fmt = file_format(path, framing)
    examples: list[Example] = []
    bad: list[BadRow] = []
    first_line: dict[str, int] = {}
    id_field: str | None = None

    def on_header(columns: list[str]) -> None:
        nonlocal id_field
        id_field = _header_id_field(path, columns, framing)

    ordinal = 0
    try:
        records = jsonl_records(path) if fmt == "jsonl" else delimited_records(path, fmt, on_header)
        for line, record, problem in records:
            ordinal += 1
            try:
                if problem is not None or record is None:
                    raise _Bad(problem or "unreadable record")
                if fmt == "jsonl":
                    # A JSONL record names its own fields: take the first id candidate it has.
                    id_field = next((f for f in framing.id_field if f in record), framing.id_field[0]) \
                        if framing.id_field else None
                example = _example(record, framing, id_field, ordinal)
                if example.id in first_line:
                    raise _Bad(f"repeated id {example.id!r} (first on line {first_line[example.id]})")
            except _Bad as exc:
                if not skip_bad_rows:
                    raise DataError(f"{path}:{line}: {exc}") from None
                bad.append(BadRow(line, str(exc)))
                continue
            first_line[example.id] = line
            examples.append(example)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if not examples:
        raise DataError(f"{path}: no usable rows" + (f" ({len(bad)} bad)" if bad else ""))
    return LoadResult(path=path, examples=tuple(examples), bad_rows=tuple(bad))


def label_counts(examples: Iterable[Example]) -> dict[str, int]:
    """How many examples carry each label, sorted by label."""
    return dict(sorted(Counter(example.label for example in examples).items()))
