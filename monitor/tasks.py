"""Task definitions as data: the labels, which of them are the health signal, the metric, the rules
the LLM explainer is given, and how a labelled file is framed into (id, text, label).

A task is one TOML file. The built-in ones live in ``monitor/task_definitions/``; a user adds a task
by writing one more file and passing its path wherever a task name is accepted.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from importlib import resources
from itertools import pairwise
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from monitor.errors import DataError

MAX_RATIONALE_WORDS = 30
_TASK_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")

Metric = Literal["f1_positive", "micro_f1", "macro_f1"]
FileFormat = Literal["auto", "smm4h", "csv", "tsv", "jsonl"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _unique(values: tuple[str, ...], what: str) -> tuple[str, ...]:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{what} lists {value!r} twice")
        seen.add(value)
    return values


class PromptExample(_Frozen):
    """A worked case shown to the explainer: what the classifier said and what a reviewer concluded."""

    text: str = Field(min_length=1)
    predicted_label: str
    verdict: Literal["confirm", "reject"]
    corrected_label: str | None = None
    rationale: str = Field(min_length=1)
    evidence: str = Field(min_length=1, description="a verbatim quote from text that supports the verdict")

    @model_validator(mode="after")
    def _consistent(self) -> PromptExample:
        if self.verdict == "reject":
            if self.corrected_label is None:
                raise ValueError("a 'reject' example needs corrected_label")
            if self.corrected_label == self.predicted_label:
                raise ValueError("corrected_label must differ from predicted_label in a 'reject' example")
        elif self.corrected_label is not None:
            raise ValueError("a 'confirm' example has no corrected_label")
        # The explainer is told to quote its evidence; an example that does not would teach it to invent.
        if self.evidence not in self.text:
            raise ValueError(f"evidence {self.evidence!r} does not occur in the example text")
        words = len(self.rationale.split())
        if words > MAX_RATIONALE_WORDS:
            raise ValueError(f"rationale has {words} words; keep it to {MAX_RATIONALE_WORDS}")
        return self


class PromptRules(_Frozen):
    """What the explainer is told: what the signal is, what counts, what does not, two worked cases."""

    version: str = Field(min_length=1, max_length=32, description="bumped whenever the rules change")
    signal_definition: str = Field(min_length=1)
    counts: tuple[str, ...] = Field(min_length=1)
    does_not_count: tuple[str, ...] = Field(min_length=1)
    examples: tuple[PromptExample, PromptExample]

    @model_validator(mode="after")
    def _one_of_each(self) -> PromptRules:
        if {example.verdict for example in self.examples} != {"confirm", "reject"}:
            raise ValueError("examples must be one 'confirm' and one 'reject'")
        return self

    @property
    def confirm_example(self) -> PromptExample:
        return next(example for example in self.examples if example.verdict == "confirm")

    @property
    def reject_example(self) -> PromptExample:
        return next(example for example in self.examples if example.verdict == "reject")


class LabelBin(_Frozen):
    """A closed numeric interval [min, max] of the label column; an open end is left out."""

    label: str
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _bounded(self) -> LabelBin:
        if self.min is None and self.max is None:
            raise ValueError(f"the bin for {self.label!r} needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"the bin for {self.label!r} has min > max")
        return self

    def contains(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


class LabelRule(_Frozen):
    """How one column's value becomes a label: a value map (with an optional default) or numeric bins.

    An equality test ("subreddit is socialanxiety, else other") is a one-entry map with a default.
    A value the rule does not cover is a bad row, never a silent default.
    """

    field: str = Field(min_length=1)
    map: dict[str, str] | None = None
    default: str | None = None
    bins: tuple[LabelBin, ...] | None = None
    ignore_case: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> LabelRule:
        if (self.map is None) == (self.bins is None):
            raise ValueError("give exactly one of map or bins")
        if self.default is not None and self.map is None:
            raise ValueError("default is only for map (bins cover their values explicitly)")
        if self.map is not None:
            if not self.map:
                raise ValueError("map is empty")
            keys = [self._key(key) for key in self.map]
            if len(set(keys)) != len(keys):
                raise ValueError("map has keys that collide (ignore_case folds them together)")
        if self.bins is not None:
            ordered = sorted(self.bins, key=lambda b: float("-inf") if b.min is None else b.min)
            for low, high in pairwise(ordered):
                if low.max is None or high.min is None or low.max >= high.min:
                    raise ValueError(f"bins for {low.label!r} and {high.label!r} overlap")
        return self

    def _key(self, value: str) -> str:
        value = value.strip()
        return value.casefold() if self.ignore_case else value

    def outputs(self) -> set[str]:
        """Every label this rule can produce."""
        if self.map is not None:
            return set(self.map.values()) | ({self.default} if self.default is not None else set())
        return {b.label for b in self.bins or ()}

    def label_for(self, raw: str) -> str | None:
        """The label of a raw column value, or None when the rule does not cover it."""
        if self.map is not None:
            folded = {self._key(key): label for key, label in self.map.items()}
            return folded.get(self._key(raw), self.default)
        try:
            # Label values, not ids: a float is safe here, and "7.0" should bin like "7".
            value = float(raw.strip())
        except ValueError:
            return None
        return next((b.label for b in self.bins or () if b.contains(value)), None)


class DataFraming(_Frozen):
    """How one file becomes (id, text, label) rows, without task-specific code.

    ``id_field`` lists candidate columns, the first one present wins (druglib's first column is
    ``num`` in some copies and unnamed in others); left out, the id is the record's 1-based number.
    ``context_fields`` are optional columns shown before the text as ``name: value`` (SMM4H task 2's
    ``therapy``): absent or empty, they are skipped. ``text_format = "python_list"`` reads a column
    holding a Python list of strings (CSSRS) and joins the items.
    """

    format: FileFormat = "auto"
    id_field: tuple[str, ...] = ()
    text_fields: tuple[str, ...] = Field(min_length=1)
    context_fields: tuple[str, ...] = ()
    joiner: str = Field(" | ", min_length=1)
    text_format: Literal["plain", "python_list"] = "plain"
    label: LabelRule

    @field_validator("id_field", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return (value,) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _no_leak(self) -> DataFraming:
        _unique(self.text_fields + self.context_fields, "text_fields + context_fields")
        # A label column that is also model input would hand the model the answer.
        if self.label.field in self.text_fields + self.context_fields:
            raise ValueError(f"the label column {self.label.field!r} is also a text or context field")
        return self


class WatchTerms(_Frozen):
    """What a platform source keeps for this task (``monitor source --keywords-from-task``): posts with
    one of the keywords (whole words, case-insensitive; ``vaccin*`` matches a word's start) or hashtags."""

    keywords: tuple[str, ...] = ()
    hashtags: tuple[str, ...] = ()

    @field_validator("keywords", "hashtags")
    @classmethod
    def _terms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for term in value:
            if not term.strip() or len(term) > 100 or any(c in term for c in "\n\r\t"):
                raise ValueError(f"a watch term is 1-100 characters on one line, got {term!r}")
        return value

    def terms(self) -> tuple[str, ...]:
        """Keywords, then hashtags written with their ``#``."""
        return self.keywords + tuple(t if t.startswith("#") else f"#{t}" for t in self.hashtags)


class TaskDefinition(_Frozen):
    """One classification task: labels, signal, metric, explainer rules, data framing, watch terms."""

    name: str
    title: str = Field(min_length=1)
    description: str = Field(min_length=1)
    source: str = Field("", description="where the data comes from: citation and licence")
    labels: tuple[str, ...] = Field(min_length=2)
    signal_labels: tuple[str, ...] = Field(min_length=1)
    metric: Metric
    positive_label: str | None = None
    metric_labels: tuple[str, ...] | None = None
    prompt: PromptRules
    data: DataFraming
    watch: WatchTerms = WatchTerms()

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _TASK_NAME.match(value):
            raise ValueError(f"task names are lower_snake_case (a-z, 0-9, _), got {value!r}")
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for label in value:
            if not _LABEL.match(label):
                raise ValueError(f"labels are a letter then letters, digits, _ or - (32 at most), got {label!r}")
        return _unique(value, "labels")

    @model_validator(mode="after")
    def _consistent(self) -> TaskDefinition:
        labels = set(self.labels)

        def check(values: Iterable[str], what: str) -> None:
            unknown = sorted(set(values) - labels)
            if unknown:
                raise ValueError(f"{what} {', '.join(map(repr, unknown))} not among labels {list(self.labels)}")

        _unique(self.signal_labels, "signal_labels")
        check(self.signal_labels, "signal_labels")
        if set(self.signal_labels) == labels:
            raise ValueError("signal_labels must leave at least one label that is not the signal")
        if self.metric == "f1_positive":
            if self.positive_label is None:
                raise ValueError("metric f1_positive needs positive_label")
            check([self.positive_label], "positive_label")
            if self.positive_label not in self.signal_labels:
                raise ValueError("positive_label must be one of the signal_labels")
            if self.metric_labels is not None:
                raise ValueError("metric_labels is for micro_f1 and macro_f1; f1_positive uses positive_label")
        elif self.positive_label is not None:
            raise ValueError(f"positive_label is only for metric f1_positive, not {self.metric}")
        if self.metric_labels is not None:
            _unique(self.metric_labels, "metric_labels")
            check(self.metric_labels, "metric_labels")
            if not self.metric_labels:
                raise ValueError("metric_labels is empty; leave it out to use every label")
        for example in self.prompt.examples:
            check([example.predicted_label], "prompt example predicted_label")
            if example.corrected_label is not None:
                check([example.corrected_label], "prompt example corrected_label")
        produced = self.data.label.outputs()
        check(produced, "data.label produces")
        if labels - produced:
            raise ValueError(f"data.label never produces {sorted(labels - produced)}")
        return self

    @property
    def text_fields(self) -> tuple[str, ...]:
        """The file columns the model's input text is built from (context fields first, if present)."""
        return self.data.context_fields + self.data.text_fields

    @property
    def scored_labels(self) -> tuple[str, ...]:
        """The labels the metric looks at."""
        if self.metric == "f1_positive":
            return (self.positive_label,)  # type: ignore[return-value]
        return self.metric_labels or self.labels


def _one_line(exc: ValidationError) -> str:
    """pydantic's multi-line report as one line: ``where: what; where: what``."""
    parts = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "(top level)"
        # TOML has arrays, not tuples: say what the author of the file wrote.
        message = error["msg"].removeprefix("Value error, ").replace("a valid tuple", "a list")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        parts.append(f"{where}: {message}")
    return "; ".join(parts)


def parse_task(text: str, *, origin: str) -> TaskDefinition:
    """A task from TOML text; ``origin`` (a path) names the source in error messages."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DataError(f"{origin}: not valid TOML: {exc}") from exc
    try:
        return TaskDefinition.model_validate(raw)
    except ValidationError as exc:
        raise DataError(f"{origin}: invalid task definition: {_one_line(exc)}") from exc


def _builtin_dir():  # noqa: ANN202 - a Traversable, which has no public name to annotate with
    return resources.files("monitor").joinpath("task_definitions")


def builtin_task_names() -> tuple[str, ...]:
    """The names of the tasks shipped with the monitor, sorted."""
    return tuple(sorted(entry.name.removesuffix(".toml") for entry in _builtin_dir().iterdir()
                        if entry.name.endswith(".toml")))


def _looks_like_path(value: str | Path) -> bool:
    return isinstance(value, Path) or value.endswith(".toml") or "/" in value or "\\" in value


def load_task(name_or_path: str | Path) -> TaskDefinition:
    """A built-in task by name, or a user's task from a ``.toml`` file path."""
    if _looks_like_path(name_or_path):
        path = Path(name_or_path).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise DataError(f"{path}: no such task file") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: cannot read the task file: {exc}") from exc
        return parse_task(text, origin=str(path))
    name = str(name_or_path)
    entry = _builtin_dir().joinpath(f"{name}.toml")
    if not _TASK_NAME.match(name) or not entry.is_file():
        raise DataError(
            f"unknown task {name!r}; built-in tasks are {', '.join(builtin_task_names())}, "
            "or give the path of a .toml task file"
        )
    task = parse_task(entry.read_text(encoding="utf-8"), origin=str(entry))
    if task.name != name:
        raise DataError(f"{entry}: name is {task.name!r} but the file is named {name!r}")
    return task
