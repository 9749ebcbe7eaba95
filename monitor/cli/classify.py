"""``monitor classify FILE``: the whole pipeline over a file, no Kafka, into the configured database."""

from __future__ import annotations

import json
import time
from collections import Counter
from itertools import islice
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from monitor.cli.context import settings_of

console = Console()


def classify(
    ctx: typer.Context,
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSONL of posts, or a CSV/TSV a task can read"),
    task: str | None = typer.Option(None, help="Task whose data framing reads a CSV/TSV (gold labels are kept)"),
    model: list[Path] = typer.Option([], help="Trained model folder (repeatable; default: classifier.models)"),
    out: Path | None = typer.Option(None, help="Also write one JSON line per (post, task) decision here"),
    explain: bool = typer.Option(True, help="Escalate to the LLM explainer per policy"),
    store: bool = typer.Option(True, help="Persist to the configured database"),
    run: str = typer.Option("live", help="Run name the rows are stored under"),
    batch_size: int = typer.Option(64, min=1, help="Posts per batch"),
    limit: int | None = typer.Option(None, min=1, help="Stop after N posts"),
    skip_bad_rows: bool = typer.Option(False, help="Skip (and count) malformed records instead of failing"),
) -> None:
    """Classify, escalate, explain and persist the posts of FILE with the same code the stream runs."""
    from monitor.feed import posts_from_file
    from monitor.pipeline import BatchResult, process_batch
    from monitor.runtime import Runtime
    from monitor.tasks import load_task

    settings = settings_of(ctx)
    roles = ["classify", *(["explain"] if explain else []), *(["persist"] if store else [])]
    # The embedded SQLite default is migrated on first use; a server database must be migrated by hand.
    runtime = Runtime.build(settings, roles, folders=model or None, migration="migrate")
    posts = posts_from_file(file, task=load_task(task) if task else None, skip_bad_rows=skip_bad_rows)
    if limit:
        posts = islice(posts, limit)
    total = BatchResult()
    signals: Counter[str] = Counter()
    started = time.perf_counter()
    sink = open(out, "w", encoding="utf-8") if out else None  # noqa: SIM115 - closed below
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console)
    try:
        with progress:
            job = progress.add_task("classifying", total=None)
            while batch := list(islice(posts, batch_size)):
                result = process_batch(batch, runtime, run=run)
                total.add(result)
                for d in result.decisions:
                    signals[d.case.prediction.task] += d.is_signal
                    if sink:
                        e = d.explanation
                        sink.write(json.dumps({
                            "id": d.case.post.id, "task": d.case.prediction.task, "label": d.case.prediction.label,
                            "confidence": d.case.prediction.confidence, "escalated": d.case.escalation,
                            "verdict": e.verdict if e else None, "final_label": d.final_label,
                            "decided_by": d.decided_by, "signal": d.is_signal,
                            "rationale": e.rationale if e else None, "evidence": e.evidence if e else None,
                            "gold": d.case.post.labels.get(d.case.prediction.task),
                        }, ensure_ascii=False) + "\n")
                progress.update(job, advance=len(batch),
                                description=f"classifying ({total.posts / (time.perf_counter() - started):.1f} posts/s)")
    finally:
        if sink:
            sink.close()
    seconds = time.perf_counter() - started
    table = Table("measure", "value", title=f"monitor classify {file.name}")
    table.add_row("posts", f"{total.posts} in {seconds:.1f} s ({total.posts / max(seconds, 1e-9):.1f} posts/s)")
    table.add_row("predictions", str(total.predictions))
    table.add_row("escalated / explained / unverified / over budget",
                  f"{total.escalated} / {total.explained} / {total.unverified} / {total.over_budget}")
    table.add_row("flipped by the explainer", str(total.flipped))
    for model_ in runtime.task_models:
        table.add_row(f"signals: {model_.task.name}", f"{signals[model_.task.name]} (explainer mode {model_.mode})")
    if runtime.factory is not None:
        table.add_row("rows inserted", ", ".join(f"{k} {v}" for k, v in total.rows.items() if k != "write_ms"))
    console.print(table)
