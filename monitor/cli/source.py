"""``monitor source``: watch a platform (Bluesky through Jetstream, Mastodon) and send its posts to the
posts topic; list and forget stored positions; serve a local stand-in of a platform's stream."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from monitor.cli.context import settings_of
from monitor.config import SourceSettings

app = typer.Typer(help="Watch a platform's live stream and send its posts into the pipeline. Positions are "
                  "stored on the broker, so a restarted source resumes where it stopped.", no_args_is_help=True)
console = Console()

_TASKS = typer.Option([], "--keywords-from-task", "-t", help="Keep posts with this task's [watch] keywords or "
                      "hashtags (a task name or TOML path; repeatable)")
_KEYWORDS = typer.Option([], "--keyword", "-k", help="Keep posts with this word, phrase, #hashtag or prefix* "
                         "(repeatable; added to MONITOR_SOURCE__KEYWORDS)")
_LANGUAGES = typer.Option([], "--language", "-l", help="Keep posts in this language (repeatable; e.g. en)")
_SAMPLE = typer.Option(None, "--sample-rate", min=0.0001, max=1.0, help="Share of kept posts sent on")
_NAME = typer.Option(None, "--name", help="Key of the stored position (default: the platform)")
_METRICS = typer.Option(0, "--metrics-port", min=0, max=65535, help="Serve /metrics here (0 = not served; the "
                        "worker's source role serves them with the others)")


def _source(ctx: typer.Context, platform: str, updates: dict[str, Any], keywords: list[str],
            languages: list[str], sample_rate: float | None, name: str | None) -> SourceSettings:
    base = settings_of(ctx).source
    changes: dict[str, Any] = {"platform": platform, **{k: v for k, v in updates.items() if v}}
    if keywords:
        changes["keywords"] = (*base.keywords, *keywords)
    if languages:
        changes["languages"] = tuple(languages)
    if sample_rate is not None:
        changes["sample_rate"] = sample_rate
    if name:
        changes["name"] = name
    return SourceSettings.model_validate({**base.model_dump(), **changes})


@app.command()
def bluesky(
    ctx: typer.Context,
    tasks: list[str] = _TASKS,
    keywords: list[str] = _KEYWORDS,
    languages: list[str] = _LANGUAGES,
    url: list[str] = typer.Option([], "--url", help="Jetstream subscribe URL (repeatable: failover order; default "
                                  "MONITOR_SOURCE__JETSTREAM_URLS, Bluesky's four public hosts)"),
    did: list[str] = typer.Option([], "--did", help="Only this account (repeatable)"),
    sample_rate: float | None = _SAMPLE,
    name: str | None = _NAME,
    metrics_port: int = _METRICS,
) -> None:
    """Watch Bluesky posts through Jetstream until Ctrl-C."""
    source = _source(ctx, "bluesky", {"jetstream_urls": tuple(url), "wanted_dids": tuple(did)}, keywords, languages,
                     sample_rate, name)
    _run(ctx, source, tasks, metrics_port)


@app.command()
def mastodon(
    ctx: typer.Context,
    tasks: list[str] = _TASKS,
    keywords: list[str] = _KEYWORDS,
    languages: list[str] = _LANGUAGES,
    instance: list[str] = typer.Option([], "--instance", help="Instance base URL, e.g. https://mastodon.social "
                                       "(repeatable; default MONITOR_SOURCE__MASTODON_INSTANCES)"),
    timeline: str | None = typer.Option(None, "--timeline", help="public, local or hashtag (one stream per "
                                        "#hashtag of the keywords and tasks)"),
    sample_rate: float | None = _SAMPLE,
    name: str | None = _NAME,
    metrics_port: int = _METRICS,
) -> None:
    """Watch Mastodon timelines (streaming API; REST backfill after a gap) until Ctrl-C.
    The access token comes from MONITOR_SOURCE__MASTODON_TOKEN."""
    if timeline is not None and timeline not in ("public", "local", "hashtag"):
        raise typer.BadParameter(f"expected public, local or hashtag, got {timeline!r}", param_hint="--timeline")
    source = _source(ctx, "mastodon", {"mastodon_instances": tuple(instance), "mastodon_timeline": timeline},
                     keywords, languages, sample_rate, name)
    _run(ctx, source, tasks, metrics_port)


def _run(ctx: typer.Context, source: SourceSettings, tasks: list[str], metrics_port: int) -> None:
    from monitor import telemetry
    from monitor.sources.stream import SourceRun
    from monitor.sources.watch import keywords_for, platforms, watch

    settings = settings_of(ctx)
    streams = platforms(source)  # a ConfigError here is one red line, before anything connects
    terms = keywords_for(source, tasks)
    if metrics_port:
        telemetry.serve(settings.metrics.model_copy(update={"port": metrics_port}))
    console.print(f"watching {', '.join(s.name for s in streams)} -> {settings.topics.posts} "
                  f"({len(terms)} keywords, languages: {', '.join(source.languages) or 'all'}, "
                  f"sample {source.sample_rate:g}); Ctrl-C stops")
    holder: list[SourceRun] = []

    async def main() -> SourceRun:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        task = asyncio.create_task(watch(source, settings.kafka, settings.topics, stop=stop, tasks=tasks,
                                         on_start=holder.append))
        with Live(console=console, refresh_per_second=1, transient=False) as live:
            while not task.done():
                if holder:
                    live.update(_status(holder[0]))
                await asyncio.wait([task], timeout=1.0)
            if holder:
                live.update(_status(holder[0]))
        return task.result()

    run = asyncio.run(main())
    sent = run.sent
    console.print(f"stopped: {sent['post']} posts, {sent['erase']} erasures, {sent['bad']} dead letters sent; "
                  "positions stored")


def _status(run: Any) -> Table:
    elapsed = max(time.monotonic() - run.started, 1e-9)
    table = Table("stream", "connected", "events", "kept", "dropped", "duplicates", "deletes", "bad", "position",
                  title=f"{run.sent['post']} posts sent ({run.sent['post'] / elapsed:.1f}/s), pending {run.pending}")
    for s in run.streams:
        c = s.counts
        dropped = sum(c.get(k, 0) for k in ("dropped_language", "dropped_keyword", "dropped_sample"))
        table.add_row(s.platform.name, "yes" if s.connected else "no", str(c.get("events", 0)),
                      str(c.get("kept", 0)), str(dropped), str(c.get("duplicate", 0)), str(c.get("erase", 0)),
                      str(c.get("bad", 0)), str(s.acked_position or "-"))
    return table


@app.command()
def positions(ctx: typer.Context) -> None:
    """The stored position of every source (where each resumes)."""
    from monitor.sources.positions import load_positions

    settings = settings_of(ctx)
    stored = load_positions(settings.kafka, settings.topics.positions)
    if not stored:
        console.print(f"no source position stored on {settings.topics.positions}")
        return
    table = Table("source", "cursor", "host", "stored at", "recent ids")
    for name, p in sorted(stored.items()):
        table.add_row(name, str(p.cursor), p.host or "-", p.updated_at, str(len(p.recent)))
    console.print(table)


@app.command()
def forget(ctx: typer.Context, name: str = typer.Argument(..., help="The source's name (see `monitor source "
                                                                   "positions`)")) -> None:
    """Drop a source's stored position: it starts from the live stream next time."""
    from monitor.sources.sink import BrokerSink

    settings = settings_of(ctx)
    sink = BrokerSink(settings.kafka, settings.topics)
    try:
        sink.forget(name)
    finally:
        sink.close()
    console.print(f"forgot the position of {name}")



@app.command()
def standin(
    platform: str = typer.Argument(..., help="jetstream or mastodon"),
    port: int = typer.Option(6008, min=1, max=65535, help="Port on 127.0.0.1"),
    events: Path | None = typer.Option(None, exists=True, dir_okay=False,
                                       help="A JSONL recording (default: the project's own, a few hundred events)"),
    rate: float | None = typer.Option(None, min=0.001, help="Events per second (default: as fast as possible)"),
    token: str = typer.Option("test-token", help="The access token the Mastodon stand-in accepts"),
) -> None:
    """Serve a local stand-in of a platform's stream, fed with a recording, until Ctrl-C: try a source
    without the internet (`monitor source bluesky --url ws://127.0.0.1:6008/subscribe`)."""
    from monitor.sources.standin.jetstream import JetstreamStandin
    from monitor.sources.standin.mastodon import MastodonStandin
    from monitor.sources.standin.recording import JETSTREAM_FILE, MASTODON_FILE, load_recording

    if platform not in ("jetstream", "mastodon"):
        raise typer.BadParameter(f"expected jetstream or mastodon, got {platform!r}", param_hint="PLATFORM")
    recorded = load_recording(events or (JETSTREAM_FILE if platform == "jetstream" else MASTODON_FILE))
    server = (JetstreamStandin(recorded, port=port, rate=rate) if platform == "jetstream"
              else MastodonStandin(recorded, port=port, rate=rate, token=token))
    with server:
        where = server.ws_url if platform == "jetstream" else server.base_url
        console.print(f"{platform} stand-in at {where} with {len(recorded)} events; Ctrl-C stops")
        stopped = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopped.set())
        try:
            stopped.wait()
        except KeyboardInterrupt:
            pass
