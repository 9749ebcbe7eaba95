"""``monitor replay``: a time range of a topic through a model and policy, stored under a run name."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from monitor.cli.context import settings_of
from monitor.errors import ConfigError

console = Console()


def _time(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise typer.BadParameter(f"{value!r} is not an ISO 8601 time (e.g. 2026-11-01T00:00:00Z)") from exc
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def replay(
    ctx: typer.Context,
    start: str = typer.Option(..., "--from", help="Start of the range (ISO 8601, inclusive), by record time"),
    end: str = typer.Option(..., "--to", help="End of the range (ISO 8601, exclusive)"),
    run: str = typer.Option(..., help="Run name the results are stored under (not 'live')"),
    topic: str | None = typer.Option(None, help="Topic to read (default: topics.posts)"),
    model: list[Path] = typer.Option([], help="Model folder(s) to evaluate (default: classifier.models)"),
    explain: bool = typer.Option(True, help="Escalate to the explainer per policy"),
    compare: str | None = typer.Option(None, help="Put this run's results beside another run's (e.g. live)"),
) -> None:
    """Replay [--from, --to) of a topic with a model and policy, without touching the live pipeline."""
    from monitor.replay import check_run_name, compare_runs
    from monitor.replay import replay as run_replay
    from monitor.runtime import Runtime

    settings = settings_of(ctx)
    since, until = _time(start), _time(end)
    if until <= since:
        raise ConfigError("--to must be after --from")
    check_run_name(run)  # before loading any model, which takes a while
    runtime = Runtime.build(settings, ["classify", "persist", *(["explain"] if explain else [])],
                            folders=model or None, migration="migrate")
    factory = runtime.factory
    with console.status(f"replaying {topic or settings.topics.posts} {since:%Y-%m-%d %H:%M} .. {until:%Y-%m-%d %H:%M}"):
        report = run_replay(runtime, topic or settings.topics.posts, since, until, run=run)
    table = Table("measure", "value", title=f"replay {run}: {report.topic}")
    table.add_row("records in range (bad)", f"{report.records} ({report.bad_records})")
    table.add_row("throughput", f"{report.posts_per_s:.1f} posts/s over {report.seconds:.1f} s")
    for name, value in report.totals.items():
        table.add_row(name, str(value))
    posts = max(report.totals.get("predictions", 0), 1)
    table.add_row("escalation rate", f"{report.totals.get('escalated', 0) / posts:.1%}")
    for task, m in report.metrics.items():
        table.add_row(f"{task} {m['metric']} (n={m['n']})",
                      f"classifier {m['classifier']:.4f}, after explainer {m['final']:.4f}")
    console.print(table)
    if compare:
        c = compare_runs(factory, compare, run)
        console.print(f"[bold]{compare} vs {run}[/]: {c.common} (post, task) pairs in both, {c.changed_total} "
                      f"labels changed; only in {compare}: {c.only_a}, only in {run}: {c.only_b}")
        for task, (a, b) in c.signals.items():
            console.print(f"  signals {task}: {a} -> {b}")
        changes = Table("post", "task", compare, run, "confidence", "text", title="changed labels (first 20)")
        for row in c.changed:
            changes.add_row(str(row["post_id"]), row["task"], row[compare], row[run], f"{row['confidence_b']:.3f}",
                            row["text"][:80])
        console.print(changes)
