"""A source assembled from settings: its platform streams, its filter, its positions and its sink; and
``watch``, which runs it until stopped (``monitor source`` and the worker's source role both call it)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from pathlib import Path

from monitor.config import KafkaSettings, SourceSettings, TopicSettings
from monitor.errors import ConfigError
from monitor.sources import mastodon
from monitor.sources.filters import PostFilter, build_filter
from monitor.sources.stream import Health, JetstreamStream, MastodonStream, Platform, SourceRun, run_source


def keywords_for(source: SourceSettings, tasks: Sequence[str] = ()) -> tuple[str, ...]:
    """The configured keywords plus each task's watch terms (a task name or a TOML path)."""
    from monitor.tasks import load_task

    terms = list(source.keywords)
    for name in (*source.keyword_tasks, *tasks):
        task = load_task(Path(name) if name.endswith(".toml") else name)
        if not task.watch.terms():
            raise ConfigError(f"task {task.name} has no [watch] keywords or hashtags to filter by")
        terms += task.watch.terms()
    return tuple(dict.fromkeys(terms))


def post_filter(source: SourceSettings, tasks: Sequence[str] = ()) -> PostFilter:
    try:
        return build_filter(source.languages, keywords_for(source, tasks), source.sample_rate)
    except ValueError as exc:
        raise ConfigError(f"source filter: {exc}") from exc


def platforms(source: SourceSettings) -> list[Platform]:
    """The streams of the configured platform: one Jetstream subscription (with its failover hosts), or
    one per Mastodon instance and timeline (a hashtag timeline: one per hashtag among the keywords)."""
    if source.platform == "bluesky":
        return [JetstreamStream(source.jetstream_urls, source.wanted_dids, source.rewind_s,
                                name=source.name or "bluesky")]
    if source.platform == "mastodon":
        if not source.mastodon_instances:
            raise ConfigError("no Mastodon instance to watch: set MONITOR_SOURCE__MASTODON_INSTANCES "
                              "(or --instance)")
        token = (source.mastodon_token.get_secret_value() if source.mastodon_token else "") or None
        tags: list[str | None] = [None]
        if source.mastodon_timeline == "hashtag":
            tags = [k.lstrip("#") for k in keywords_for(source) if k.startswith("#")]
            if not tags:
                raise ConfigError("the hashtag timeline needs #hashtags among the keywords (or a task's hashtags)")
        prefix = f"{source.name}:" if source.name else ""
        streams: list[Platform] = []
        for instance in source.mastodon_instances:
            for tag in tags:
                timeline = mastodon.Timeline(instance.rstrip("/"), source.mastodon_timeline, tag)
                streams.append(MastodonStream(timeline, token, name=f"{prefix}{mastodon.SOURCE}:{timeline.name}"))
        return streams
    raise ConfigError("no platform to watch: set MONITOR_SOURCE__PLATFORM to bluesky or mastodon")


async def watch(source: SourceSettings, kafka: KafkaSettings, topics: TopicSettings, *, stop: asyncio.Event,
                tasks: Sequence[str] = (), health: Health | None = None,
                on_start: Callable[[SourceRun], None] = lambda _run: None) -> SourceRun:
    """Run the configured source until ``stop`` is set; positions are stored as it goes and at the end."""
    from monitor.sources.positions import load_positions
    from monitor.sources.sink import BrokerSink

    streams, keep = platforms(source), post_filter(source, tasks)
    stored = await asyncio.to_thread(load_positions, kafka, topics.positions)
    sink = await asyncio.to_thread(BrokerSink, kafka, topics)
    try:
        return await run_source(streams, sink, source, keep, stored, stop=stop, health=health, on_start=on_start)
    finally:
        await asyncio.to_thread(sink.close)
