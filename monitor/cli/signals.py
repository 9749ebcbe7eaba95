"""``monitor signals``: recent EARS alerts over the flagged signals, a detection run, a plot of a series."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from monitor.cli.context import settings_of
from monitor.errors import ConfigError

if TYPE_CHECKING:
    from monitor.signals.detect import DetectedAlert

app = typer.Typer(
    help="EARS spike detection over flagged signals. Without a command: list the recent alerts "
    "(or, with --plot, draw a series).",
    invoke_without_command=True,
)
console = Console()
_GRANULARITIES = ("hour", "day")


def _time(value: str | None) -> datetime:
    from monitor.records import parse_time

    if value is None:
        return datetime.now(UTC)
    try:
        return parse_time(value)
    except ValueError as exc:
        raise typer.BadParameter(f"{value!r}: {exc}") from exc


def _granularity(value: str | None) -> str | None:
    if value is not None and value not in _GRANULARITIES:
        raise typer.BadParameter(f"expected hour or day, got {value!r}")
    return value


def _bucket(start: datetime, granularity: str) -> str:
    return f"{start:%Y-%m-%d}" if granularity == "day" else f"{start:%Y-%m-%d %H:00}"


def _alerts_table(rows: list[DetectedAlert], title: str) -> Table:
    table = Table("bucket (UTC)", "task", "method", "series", "stratum", "observed", "expected", "score", "posts",
                  title=title)
    for a in rows:
        s = a.score
        table.add_row(f"{_bucket(a.bucket_start, a.key.granularity)} ({a.key.granularity})", a.key.task, a.method,
                      a.key.series, a.key.stratum, f"{s.observed:.2f}", f"{s.expected:.2f}",
                      f"{s.score:.2f} > {s.threshold:g}", str(a.posts))
    return table


def _print_top_posts(top_posts: list[dict]) -> None:
    for p in top_posts:
        shown = "no verdict" if p.get("verdict") == "withheld" else p.get("verdict")
        explained = f" [{shown}] {p['rationale']}" if p.get("verdict") else ""
        console.print(f"    #{p['post_id']} {p['confidence']:.2f} {p['text']!r}[dim]{explained}[/]", highlight=False,
                      markup=True, soft_wrap=True)


@app.callback()
def signals(
    ctx: typer.Context,
    limit: int = typer.Option(20, min=1, help="Alerts listed, newest bucket first"),
    task: str | None = typer.Option(None, help="Only this task (for --plot: the task drawn)"),
    granularity: str | None = typer.Option(None, help="hour or day (for --plot: default hour)"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also list each alert's top posts"),
    plot: Path | None = typer.Option(None, help="Write a PNG of a series, its alert bounds and alerts instead"),
    stratum: str = typer.Option("all", help="--plot: the stratum drawn (all, source:NAME, region:C/R)"),
    series: str = typer.Option("count", help="--plot: count or weighted"),
    now: str | None = typer.Option(None, help="--plot: draw the buckets complete at this time (default: now)"),
) -> None:
    """List the recent alerts, or with --plot draw a signal series; `monitor signals detect` runs detection."""
    if ctx.invoked_subcommand is not None:
        return
    granularity = _granularity(granularity)
    if plot is not None:
        _plot(ctx, plot, task=task, granularity=granularity or "hour", stratum=stratum, series=series, now=_time(now))
        return
    from monitor.runtime import open_database
    from monitor.storage.alerts import recent_alerts
    from monitor.storage.session import transaction

    with transaction(open_database(settings_of(ctx), "migrate")) as session:
        rows = recent_alerts(session, limit=limit, task=task, granularity=granularity)
    if not rows:
        console.print("no alerts stored (run `monitor signals detect`, or let the persist worker run it)")
        return
    table = Table("bucket (UTC)", "task", "method", "series", "stratum", "observed", "expected", "score", "posts",
                  "detected", title=f"latest {len(rows)} alerts")
    for r in rows:
        table.add_row(f"{_bucket(r.bucket_start, r.granularity)} ({r.granularity})", r.task, r.method, r.series,
                      r.stratum, f"{r.observed:.2f}", f"{r.expected:.2f}", f"{r.score:.2f} > {r.threshold:g}",
                      str(r.posts), f"{r.detected_at:%Y-%m-%d %H:%M}")
    console.print(table)
    if verbose:
        for r in rows:
            console.print(f"[bold]{_bucket(r.bucket_start, r.granularity)} {r.task} {r.method} {r.series} "
                          f"{r.stratum}[/]: top posts")
            _print_top_posts(r.top_posts)


@app.command()
def detect(
    ctx: typer.Context,
    now: str | None = typer.Option(None, help="Detect as of this time, ISO 8601 (default: now)"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also list each alert's top posts"),
) -> None:
    """Run detection once on the configured database, store new alerts and print them (for cron)."""
    from monitor.runtime import open_database
    from monitor.signals.detect import run_detection
    from monitor.storage.session import transaction

    settings = settings_of(ctx)
    with transaction(open_database(settings, "migrate")) as session:
        report = run_detection(session, settings.signals, now=_time(now))
    console.print(f"{report.signals} signals in {len(report.series)} series (buckets complete by "
                  f"{report.cutoff:%Y-%m-%d %H:%M} UTC): {len(report.alerts)} alerting buckets, "
                  f"{report.inserted} new, {len(report.latest_alerts)} on a latest bucket")
    if report.alerts:
        console.print(_alerts_table(sorted(report.alerts, key=lambda a: (a.bucket_start, a.key.task, a.method)),
                                    "alerting buckets in the window"))
        if verbose:
            for a in report.alerts:
                console.print(f"[bold]{_bucket(a.bucket_start, a.key.granularity)} {a.key.task} {a.method} "
                              f"{a.key.series} {a.key.stratum}[/]: top posts")
                _print_top_posts(list(a.top_posts))


def _plot(ctx: typer.Context, path: Path, *, task: str | None, granularity: str, stratum: str, series: str,
          now: datetime) -> None:
    from monitor.runtime import open_database
    from monitor.signals.detect import SeriesKey, run_detection
    from monitor.signals.plot import plot_series
    from monitor.storage.session import transaction

    settings = settings_of(ctx)
    if granularity not in settings.signals.granularities or series not in settings.signals.series:
        raise ConfigError(f"{granularity}/{series} is not among MONITOR_SIGNALS__GRANULARITIES/SERIES")
    with transaction(open_database(settings, "migrate")) as session:
        report = run_detection(session, settings.signals, now=now, write=False,
                               tasks=[task] if task is not None else None)
    tasks = sorted({r.key.task for r in report.series})
    if task is None:
        if len(tasks) != 1:
            window = f"the {settings.signals.history_buckets} buckets before {report.cutoff:%Y-%m-%d %H:%M}"
            raise typer.BadParameter(f"name the task to draw: signals of {', '.join(tasks) or 'no task'} in {window}",
                                     param_hint="--task")
        task = tasks[0]
    key = SeriesKey(task, granularity, stratum, series)  # type: ignore[arg-type]
    found = [r for r in report.series if r.key == key]
    if not found:
        strata = sorted({r.key.stratum for r in report.series if r.key.task == task})
        raise typer.BadParameter(f"no {series} series for {task} / {granularity} / {stratum} before "
                                 f"{report.cutoff:%Y-%m-%d %H:%M}; strata with signals: {', '.join(strata) or 'none'}",
                                 param_hint="--stratum")
    result = found[0]
    plot_series(result.starts, result.values, dict(result.scores), path,
                title=f"{task} ({stratum}): {series} per {granularity}, EARS {', '.join(result.scores)}",
                ylabel="flagged posts" if series == "count" else "sum of confidence")
    alerts = sum(s.alert for scores in result.scores.values() for s in scores)
    console.print(f"wrote {path} ({len(result.values)} buckets, {alerts} alerting bucket-methods)")
