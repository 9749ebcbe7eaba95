"""Labelled data for training: read a file the way its task frames it, normalise the text, and split
it into train/validation/test with exact and near duplicates kept on one side only.

Pure apart from reading the file; deterministic given a seed. Ids are strings from start to end:
no CSV or JSON value ever passes through float.
"""

from __future__ import annotations

import ast
import csv
import html
import json
import math
import random
import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path

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


# ---------------------------------------------------------------- text normalisation

_URL = re.compile(r"(?:\bhttps?://|\bwww\.)[^\s<>\"]+", re.IGNORECASE)
_URL_TAIL = ".,;:!?)]}'"
_MENTION = re.compile(r"(?<![\w@])@\w+|(?<![\w/])/?u/[\w-]+")
# Printable ASCII and ordinary line breaks never need a category look-up; everything else might be
# a control (-> space) or a format/zero-width/surrogate character (-> removed).
_SUSPECT = re.compile(r"[^\x20-\x7e\t\n\r]")


def _drop_invisible(match: re.Match[str]) -> str:
    category = unicodedata.category(match.group())
    if category == "Cc":
        return " "
    if category in ("Cf", "Cs"):
        return ""
    return match.group()


def _url_token(match: re.Match[str]) -> str:
    url = match.group()
    kept = url.rstrip(_URL_TAIL)
    # Sentence punctuation after a link ("see http://x.org).") is not part of it; keep it.
    return "HTTPURL" + url[len(kept):] if kept else url


def _unescape(text: str) -> str:
    # Scraped text is often escaped twice ("&amp;lt;"); undo it all, or a second pass would differ.
    while True:
        unescaped = html.unescape(text)
        if unescaped == text:
            return text
        text = unescaped


def _normalise_once(text: str) -> str:
    text = unicodedata.normalize("NFKC", _unescape(unicodedata.normalize("NFKC", text)))
    text = _SUSPECT.sub(_drop_invisible, text)
    # The patterns start with look-behinds that the regex engine tries at every position; a plain
    # substring test first makes the common case (no link, no mention) several times faster.
    if "://" in text or "www." in text.lower():
        text = _URL.sub(_url_token, text)
    if "@" in text or "u/" in text:
        text = _MENTION.sub("@USER", text)
    return " ".join(text.split())


def normalise_text(text: str) -> str:
    """The one text normalisation, for real and augmented rows and for posts at inference.

    HTML entities unescaped, NFKC, control characters to spaces, zero-width/format characters
    removed, URLs -> ``HTTPURL``, @mentions and Reddit ``u/`` names -> ``@USER``, whitespace
    collapsed. Idempotent: ``normalise_text(normalise_text(t)) == normalise_text(t)``.
    """
    for _ in range(8):
        again = _normalise_once(text)
        if again == text:
            return text
        text = again
    return text  # real input settles after one or two changing passes; the bound guards against a cycle


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


# ---------------------------------------------------------------- duplicates and splits

SHINGLE_WORDS = 3
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class DedupeReport:
    """What deduplication removed before the split (counts of examples)."""

    exact_duplicates_removed: int
    near_duplicates_removed: int
    conflicting_label_dropped: int
    kept: int
    near_duplicate_threshold: float


@dataclass(frozen=True)
class Splits:
    """Disjoint train/validation/test parts of the deduplicated examples, each in input order."""

    train: tuple[Example, ...]
    val: tuple[Example, ...]
    test: tuple[Example, ...]
    report: DedupeReport
    seed: int


def duplicate_key(text: str) -> str:
    """Two texts with the same key are exact duplicates: normalised and case-folded."""
    return normalise_text(text).casefold()


Shingle = tuple[str, ...]


def shingles(text: str, size: int = SHINGLE_WORDS) -> frozenset[Shingle]:
    """Word ``size``-grams of the normalised, case-folded words (a shorter text is one shingle)."""
    return _key_shingles(duplicate_key(text), size)


def _key_shingles(key: str, size: int) -> frozenset[Shingle]:
    words = _WORD.findall(key)
    if len(words) <= size:
        return frozenset({tuple(words)}) if words else frozenset()
    return frozenset(zip(*(words[k:] for k in range(size)), strict=False))


def jaccard(a: frozenset[Shingle], b: frozenset[Shingle]) -> float:
    if not a or not b:
        return 0.0
    common = len(a & b)
    return common / (len(a) + len(b) - common)


def near_duplicate_pairs(sets: Sequence[frozenset[Shingle]], threshold: float) -> list[tuple[int, int]]:
    """Every pair (i, j), i < j, whose Jaccard similarity is >= ``threshold``; exact, no sampling.

    Prefix filtering (Bayardo et al., "Scaling up all pairs similarity search", WWW 2007): with the
    shingles of every set ordered rarest first, two sets with J >= t must share one of the first
    ``|s| - ceil(t*|s|) + 1`` shingles of each, and their sizes lie within a factor t. Only those
    candidates are compared. Unlike MinHash/LSH it misses no pair, needs no seed and, at a high
    threshold, is faster in pure Python (a few rare shingles per post instead of 128 hashes each).
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    frequency = Counter(chain.from_iterable(sets))
    order = sorted((i for i, s in enumerate(sets) if s), key=lambda i: (len(sets[i]), i))
    index: dict[Shingle, list[int]] = defaultdict(list)
    pairs: list[tuple[int, int]] = []
    for i in order:
        size = len(sets[i])
        # Float products like 0.7 * 10 land just above the integer; the epsilon keeps ceil honest.
        prefix_size = size - math.ceil(threshold * size - 1e-9) + 1
        # Shingles no other set has sort first; when they fill the prefix, no pair is possible,
        # and that is most posts: skip them without sorting.
        unique = (shingle for shingle in sets[i] if frequency[shingle] == 1)
        if sum(1 for _ in islice(unique, prefix_size)) == prefix_size:
            continue
        prefix = sorted(sets[i], key=lambda shingle: (frequency[shingle], shingle))[:prefix_size]
        candidates = {j for shingle in prefix for j in index[shingle]
                      if len(sets[j]) >= threshold * size - 1e-9}
        for j in sorted(candidates):
            if jaccard(sets[i], sets[j]) >= threshold - 1e-12:
                pairs.append((min(i, j), max(i, j)))
        for shingle in prefix:
            index[shingle].append(i)
    return sorted(pairs)


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def deduplicate(examples: Sequence[Example], *, near_duplicate_threshold: float = 0.9
                ) -> tuple[tuple[Example, ...], DedupeReport]:
    """One representative per group of exact or near duplicates; groups whose labels disagree go.

    Groups are the connected components of "same duplicate key" and "Jaccard >= threshold over
    word shingles". The representative is the group's first example in input order, so the choice
    does not depend on any seed. A group with more than one label is dropped whole: there is no
    telling which label is right, and keeping one would put a contradicted label in the data.
    """
    by_key: dict[str, list[int]] = {}
    for i, example in enumerate(examples):
        by_key.setdefault(duplicate_key(example.text), []).append(i)
    exact_groups = list(by_key.values())  # in order of first appearance
    parent = list(range(len(exact_groups)))
    head_shingles = [_key_shingles(key, SHINGLE_WORDS) for key in by_key]
    for a, b in near_duplicate_pairs(head_shingles, near_duplicate_threshold):
        root_a, root_b = _find(parent, a), _find(parent, b)
        if root_a != root_b:
            parent[max(root_a, root_b)] = min(root_a, root_b)
    components: dict[int, list[int]] = defaultdict(list)
    for g in range(len(exact_groups)):
        components[_find(parent, g)].append(g)
    kept: list[int] = []
    exact = near = conflicting = 0
    for groups in components.values():
        members = [i for g in groups for i in exact_groups[g]]
        if len({examples[i].label for i in members}) > 1:
            conflicting += len(members)
            continue
        kept.append(min(members))
        exact += sum(len(exact_groups[g]) - 1 for g in groups)
        near += len(groups) - 1
    kept.sort()
    report = DedupeReport(exact_duplicates_removed=exact, near_duplicates_removed=near,
                          conflicting_label_dropped=conflicting, kept=len(kept),
                          near_duplicate_threshold=near_duplicate_threshold)
    return tuple(examples[i] for i in kept), report


def _allocate(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(val, test) counts for one label: rounded shares, at least one each from 3 examples up."""
    n_val, n_test = math.floor(n * val_fraction + 0.5), math.floor(n * test_fraction + 0.5)
    if n >= 3:
        n_val, n_test = max(n_val, int(val_fraction > 0)), max(n_test, int(test_fraction > 0))
    # Training keeps at least one of every label. From 3 examples up the larger share is then >= 2,
    # so giving one back never undoes the guarantee above.
    while n > 0 and n_val + n_test > n - 1:
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def split_examples(examples: Sequence[Example], *, seed: int, val_fraction: float = 0.1,
                   test_fraction: float = 0.2, near_duplicate_threshold: float = 0.9) -> Splits:
    """Deduplicate, then a seeded split stratified by label.

    Deduplicating first is what keeps a post and its copies from sitting on both sides of a split.
    Each label is shuffled on its own and cut by the fractions, so every split keeps the label
    balance; a label with three or more examples gets at least one in validation and in test.
    Each split keeps the input order.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"fractions must be >= 0 and sum below 1, got val={val_fraction}, test={test_fraction}")
    kept, report = deduplicate(examples, near_duplicate_threshold=near_duplicate_threshold)
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, example in enumerate(kept):
        by_label[example.label].append(i)
    rng = random.Random(seed)
    where: dict[int, str] = {}
    for label in sorted(by_label):
        members = by_label[label]
        rng.shuffle(members)
        n_val, n_test = _allocate(len(members), val_fraction, test_fraction)
        for rank, i in enumerate(members):
            where[i] = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"

    def part(name: str) -> tuple[Example, ...]:
        return tuple(example for i, example in enumerate(kept) if where[i] == name)

    return Splits(train=part("train"), val=part("val"), test=part("test"), report=report, seed=seed)
