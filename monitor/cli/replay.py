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
    from monitor.cli.classify import prepare_database
    from monitor.cli.explain import load_explainer
    from monitor.explainer.policy import ExplanationBudget
    from monitor.pipeline import load_task_models, policy_from_settings
    from monitor.privacy import load_author_key
    from monitor.replay import compare_runs
    from monitor.replay import replay as run_replay

    settings = settings_of(ctx)
    since, until = _time(start), _time(end)
    if until <= since:
        raise ConfigError("--to must be after --from")
    explainer = load_explainer(settings, None) if explain else None
    folders = model or list(settings.classifier.models)
    models = load_task_models(folders, settings.classifier, explainer=explainer)
    factory = prepare_database(settings)
    key = settings.privacy.author_key
    with console.status(f"replaying {topic or settings.topics.posts} {since:%Y-%m-%d %H:%M} .. {until:%Y-%m-%d %H:%M}"):
        report = run_replay(
            settings.kafka, topic or settings.topics.posts, since, until, run=run, models=models, explainer=explainer,
            factory=factory, policy=policy_from_settings(settings.explainer),
            budget=ExplanationBudget(settings.explainer.budget_per_s) if explainer else None,
            author_key=load_author_key(key.get_secret_value() if key else None, settings.data_dir / "author.key"),
            model_paths=[str(f) for f in folders])
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
