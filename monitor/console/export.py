"""Reviewed posts as a training file that ``monitor train TASK FILE`` reads with the task's own framing.

A task frames its files (``[data]`` in its TOML): the format, the id column, the text columns and a
rule from a label column's raw value to a label. The export writes the same shape: the post's stored
text in the first text column, and for each label a raw value that the rule maps back to it (a map
key, the value of a default, or a number inside a bin). Every row is checked against the rule before
it is written, so a file that trains is a file that was checked.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path

from monitor.corpus import file_format
from monitor.errors import DataError
from monitor.storage.reviews import ReviewedPost
from monitor.tasks import LabelRule, TaskDefinition


def raw_label_value(rule: LabelRule, label: str) -> str:
    """A raw column value that ``rule`` reads as ``label``; DataError when it can produce no such label."""
    candidates: list[str] = []
    if rule.map is not None:
        candidates += [key for key, value in rule.map.items() if value == label]
        if rule.default == label:
            candidates.append(label)  # any value the map does not name gives the default
            candidates.append(f"other:{label}")
    for b in rule.bins or ():
        if b.label == label:
            candidates.append(f"{b.min if b.min is not None else b.max:g}")
    for value in candidates:
        if rule.label_for(value) == label:
            return value
    raise DataError(f"the task's label rule (column {rule.field!r}) cannot give the label {label!r}")


def _record(task: TaskDefinition, post: ReviewedPost) -> dict[str, object]:
    framing = task.data
    record: dict[str, object] = {name: "" for name in framing.text_fields + framing.context_fields}
    text = post.text
    record[framing.text_fields[0]] = [text] if framing.text_format == "python_list" else text
    if framing.id_field:
        record[framing.id_field[0]] = f"{post.source}:{post.source_id}"
    record[framing.label.field] = raw_label_value(framing.label, post.label)
    return record


def write_training_file(task: TaskDefinition, posts: Iterable[ReviewedPost], out: Path) -> int:
    """Write ``posts`` (current reviewed labels) to ``out`` in the task's format; return the rows written.

    The format is the task's ``data.format``, or, where that is ``auto``, the one ``out``'s extension
    names (.jsonl, .csv, .tsv): the same rule ``monitor train`` reads it by.
    """
    fmt = file_format(out, task.data)
    framing = task.data
    columns = list(dict.fromkeys([*framing.id_field[:1], *framing.text_fields, *framing.context_fields,
                                  framing.label.field]))
    out.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with out.open("w", encoding="utf-8", newline="") as handle:
        writer = None
        if fmt != "jsonl":
            writer = csv.DictWriter(handle, fieldnames=columns, delimiter="," if fmt == "csv" else "\t",
                                    lineterminator="\n")
            writer.writeheader()
        for post in posts:
            if post.label not in task.labels:
                raise DataError(f"post {post.post_id} was reviewed as {post.label!r}, which is no label of "
                                f"{task.name} ({', '.join(task.labels)})")
            record = _record(task, post)
            if writer is None:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            else:
                if framing.text_format == "python_list":
                    record[framing.text_fields[0]] = repr(record[framing.text_fields[0]])
                writer.writerow(record)
            written += 1
    return written
