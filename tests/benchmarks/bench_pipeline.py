"""Benchmark (not a test): the streaming pipeline (Kafka -> classify -> persist -> rows) vs the model alone.

    .venv/bin/python tests/benchmarks/bench_pipeline.py --model MODEL_DIR --task druglib_adverse \\
        --data monitor/demo_data/druglib_sample.tsv [--posts 3000] [--database URL]

Needs the local services (``monitor services up``). In one run, on the same posts:
1. ``model alone``: each model folder's ``predict_proba`` (as ``runtime.load_classifier`` loads it: the encoder,
   or a folder serving its lexical model alone) over the posts in batches of the worker's batch size,
   in this process with nothing else running (the ceiling);
2. ``pipeline, saturated``: a classify and a persist worker process (the agents' real code) on fresh
   topics and a freshly migrated database; the posts are produced as fast as the producer goes, and
   throughput is posts / (last prediction row - first post sent);
3. ``pipeline, paced``: the same workers fed at ``--paced-share`` of the saturated rate; latency of
   each post = its prediction row's insert time - the time it was sent (``created_at``), p50/p99.

The explain role is left out of 2 and 3 on purpose: escalated posts get their prediction row at once
(their explanation follows), and the LLM has its own benchmark (bench_explainer.py). Prints the ratio
pipeline / model alone (the issue's goal: at most 10% below).

``--sustain-minutes M --rate R`` runs instead the sustained test: every role (classify, explain,
persist) with every ``--model`` (repeat it: one per task), posts produced at R posts/s for M minutes;
it samples the consumer lag of each stage every 10 s and reports post-tasks/s stored (prediction
rows per second over the run) and the lag's slope over the second half (flat = keeping up):

    .venv/bin/python tests/benchmarks/bench_pipeline.py --model A --model B --model C --task druglib_adverse \
        --data monitor/demo_data/druglib_sample.tsv --sustain-minutes 10 --rate 37 --database postgresql+psycopg://...
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np


def _workers(env: dict, log: Path, roles: tuple[str, ...]) -> list[subprocess.Popen]:
    with open(log, "ab") as out:
        return [subprocess.Popen([sys.executable, "-m", "stream_jobs", "--role", role], env=env,  # noqa: S603
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
                for role in roles]


def _stop(workers: list[subprocess.Popen]) -> None:
    from monitor.services import process

    for w in workers:
        process.stop_group(w, timeout_s=60)


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope (per second) of (time, value) points."""
    if len(points) < 2:
        return 0.0
    t, v = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    return float(np.polyfit(t - t[0], v, 1)[0])


def main() -> None:  # noqa: PLR0915 - a benchmark script reads best top to bottom
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from kafka import KafkaProducer
    from rich.console import Console
    from rich.table import Table
    from sqlalchemy import func, select

    from monitor.kafka import broker
    from monitor.runtime import load_classifier
    from monitor.config import DatabaseSettings, KafkaSettings, Settings, TopicSettings
    from monitor.feed import RateLimiter
    from monitor.records import Post, encode_post
    from monitor.storage import migrations
    from monitor.storage.session import create_db_engine, make_sessionmaker, transaction
    from monitor.storage.tables import Post as PostRow
    from monitor.storage.tables import Prediction
    from monitor.tasks import load_task
    from monitor.kafka.topology import topic_specs
    from monitor.corpus import load_examples

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, action="append", required=True, help="model folder (repeatable)")
    parser.add_argument("--task", required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--posts", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--paced-share", type=float, default=0.5, help="paced run at this share of the saturated rate")
    parser.add_argument("--database", default=None, help="database URL (default: the configured one)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-pipeline"))
    parser.add_argument("--sustain-minutes", type=float, default=None, help="run the sustained test instead")
    parser.add_argument("--rate", type=float, default=37.0, help="posts/s of the sustained test")
    args = parser.parse_args()
    console = Console()
    settings = Settings()
    kafka: KafkaSettings = settings.kafka
    database = DatabaseSettings(url=args.database) if args.database else settings.database

    texts = [e.text for e in load_examples(args.data, load_task(args.task), skip_bad_rows=True).examples]
    texts = [texts[i % len(texts)] for i in range(args.posts)]

    # 1. the models alone: post-tasks per second, every model on every post
    spent = 0.0
    for folder in args.model:
        classifier = load_classifier(folder, settings.classifier.model_copy(update={"batch_size": args.batch_size}))
        classifier.predict_proba(texts[: args.batch_size])
        started = time.perf_counter()
        for i in range(0, len(texts), args.batch_size):
            classifier.predict_proba(texts[i : i + args.batch_size])
        spent += time.perf_counter() - started
        device, dtype = classifier.device, classifier.dtype
        del classifier
    alone = len(texts) * len(args.model) / spent

    def start(tag: str, roles: tuple[str, ...]) -> tuple[TopicSettings, list[subprocess.Popen]]:
        topics = TopicSettings(**{role: f"bench{tag}.{role}" for role in TopicSettings().all()})
        broker.ensure_topics(kafka, topic_specs(kafka, topics))
        migrations.downgrade(database, "base")
        migrations.upgrade(database)
        args.workdir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MONITOR_DATABASE__URL": database.url, "MONITOR_DATA_DIR": str(args.workdir),
               "MONITOR_CLASSIFIER__MODELS": json.dumps([str(m) for m in args.model]),
               "MONITOR_CLASSIFIER__BATCH_SIZE": str(args.batch_size), "MONITOR_STREAM__APP_ID": f"bench-{tag}",
               "MONITOR_METRICS__PORT": "0", **{f"MONITOR_TOPICS__{r.upper()}": n for r, n in topics.all().items()}}
        return topics, _workers(env, args.workdir / "workers.log", roles)

    if args.sustain_minutes:
        sustain(args, kafka, database, texts, alone, start, console)
        return

    def run(rate: float | None, label: str) -> tuple[float, list[float]]:
        tag = uuid.uuid4().hex[:8]
        topics, workers = start(tag, ("classify", "persist"))
        factory = make_sessionmaker(create_db_engine(database))
        producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all", linger_ms=5)

        def rows() -> int:
            with transaction(factory) as session:
                return session.scalar(select(func.count()).select_from(Prediction))

        try:
            # Warm-up post: both workers joined their groups, loaded the model, touched the database.
            warm = Post(id=f"warm-{tag}", text=texts[0], created_at=datetime.now(UTC), source="bench")
            producer.send(topics.posts, key=warm.id.encode(), value=encode_post(warm)).get(timeout=30)
            deadline = time.monotonic() + 300
            while rows() < 1:
                if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
                    raise SystemExit(f"workers did not start: see {args.workdir / 'workers.log'}")
                time.sleep(0.2)
            limiter = RateLimiter(rate, burst=1) if rate else None
            started = time.time()
            for i, text in enumerate(texts):
                if limiter is not None:
                    time.sleep(limiter.reserve())
                post = Post(id=f"{label}-{i}", text=text, created_at=datetime.now(UTC), source="bench")
                producer.send(topics.posts, key=post.id.encode(), value=encode_post(post))
            producer.flush()
            while rows() < (len(texts) + 1) * len(args.model):
                if any(w.poll() is not None for w in workers):
                    raise SystemExit(f"a worker stopped: see {args.workdir / 'workers.log'}")
                time.sleep(0.2)
            with transaction(factory) as session:
                times = session.execute(
                    select(PostRow.created_at, Prediction.created_at).join(Prediction, Prediction.post_id == PostRow.id)
                    .where(PostRow.source_id != warm.id)).all()
        finally:
            producer.close()
            _stop(workers)
            factory.kw["bind"].dispose()
        last = max(row for _sent, row in times)
        latencies = [(row - sent).total_seconds() for sent, row in times]
        return len(texts) * len(args.model) / (last.timestamp() - started), latencies

    console.print(f"model alone: {alone:,.1f} posts/s ({device}, {dtype}, batch {args.batch_size}); "
                  "now the pipeline, saturated ...")
    saturated, sat_latency = run(None, "sat")
    paced_rate = saturated * args.paced_share
    console.print(f"saturated: {saturated:,.1f} posts/s; now paced at {paced_rate:,.1f} posts/s ...")
    paced, latency = run(paced_rate, "paced")

    table = Table("measure", "value")
    table.add_row("posts", f"{len(texts):,}")
    table.add_row("database", database.url.split("://")[0])
    table.add_row("models", str(len(args.model)))
    table.add_row("models alone (post-tasks/s)", f"{alone:,.1f}")
    table.add_row("pipeline saturated (post-tasks/s)", f"{saturated:,.1f}")
    table.add_row("pipeline / model alone", f"{saturated / alone:.2f}x")
    table.add_row(f"paced at {paced_rate:,.1f} posts/s: achieved", f"{paced:,.1f}")
    for name, values in (("paced", latency), ("saturated", sat_latency)):
        table.add_row(f"{name} latency p50 / p99 (s)",
                      f"{statistics.median(values):.3f} / {float(np.percentile(values, 99)):.3f}")
    console.print(table)


def sustain(args, kafka, database, texts, alone, start, console) -> None:  # noqa: ANN001, PLR0913
    """Every role, posts at ``--rate`` for ``--sustain-minutes``: post-tasks/s stored and the lag's trend."""
    from kafka import KafkaProducer
    from rich.table import Table
    from sqlalchemy import func, select

    from monitor.feed import RateLimiter
    from monitor.kafka import broker
    from monitor.records import Post, encode_post
    from monitor.storage.session import create_db_engine, make_sessionmaker, transaction
    from monitor.storage.tables import Explanation, Prediction

    tag = uuid.uuid4().hex[:8]
    topics, workers = start(tag, ("classify", "explain", "persist"))
    factory = make_sessionmaker(create_db_engine(database))
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all", linger_ms=5)
    stages = {"classify": [topics.posts], "explain": [topics.escalations],
              "persist": [topics.predictions, topics.explanations]}

    def count(table) -> int:  # noqa: ANN001
        with transaction(factory) as session:
            return session.scalar(select(func.count()).select_from(table))

    lag: dict[str, list[tuple[float, float]]] = {stage: [] for stage in stages}
    try:
        warm = Post(id=f"warm-{tag}", text=texts[0], created_at=datetime.now(UTC), source="bench")
        producer.send(topics.posts, key=warm.id.encode(), value=encode_post(warm)).get(timeout=30)
        deadline = time.monotonic() + 300
        while count(Prediction) < len(args.model):
            if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
                raise SystemExit(f"workers did not start: see {args.workdir / 'workers.log'}")
            time.sleep(0.5)
        base_rows, limiter = count(Prediction), RateLimiter(args.rate, burst=1)
        started = time.monotonic()
        end, i = started + args.sustain_minutes * 60, 0
        done = threading.Event()

        def sample() -> None:  # off the producing thread, so the rate holds
            while not done.wait(10):
                for stage, names in stages.items():
                    lag[stage].append((time.monotonic() - started,
                                       sum(broker.group_lag(kafka, f"bench-{tag}-{stage}", names).values())))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        console.print(f"sustained: {args.rate:g} posts/s x {len(args.model)} tasks for {args.sustain_minutes:g} min")
        while time.monotonic() < end:
            time.sleep(limiter.reserve())
            post = Post(id=f"s-{i}", text=texts[i % len(texts)], created_at=datetime.now(UTC), source="bench")
            producer.send(topics.posts, key=post.id.encode(), value=encode_post(post))
            i += 1
            if i % 500 == 0 and any(w.poll() is not None for w in workers):
                raise SystemExit(f"a worker stopped: see {args.workdir / 'workers.log'}")
        done.set()
        sampler.join()
        producer.flush()
        seconds = time.monotonic() - started
        stored = count(Prediction) - base_rows
        explained = count(Explanation)
    finally:
        producer.close()
        _stop(workers)
        factory.kw["bind"].dispose()
    offered = i * len(args.model) / seconds
    table = Table("measure", "value", title=f"sustained {args.sustain_minutes:g} min, {len(args.model)} tasks")
    table.add_row("offered (post-tasks/s)", f"{offered:,.1f} ({i:,} posts)")
    table.add_row("stored during the run (post-tasks/s)", f"{stored / seconds:,.1f}")
    table.add_row("models alone (post-tasks/s)", f"{alone:,.1f}")
    table.add_row("explanations stored", f"{explained:,}")
    for stage, points in lag.items():
        second_half = [p for p in points if p[0] >= seconds / 2]
        table.add_row(f"{stage} lag: last / max / slope 2nd half (records/s)",
                      f"{points[-1][1]:,.0f} / {max(v for _, v in points):,.0f} / {_slope(second_half):+.2f}"
                      if points else "-")
    console.print(table)


if __name__ == "__main__":
    main()
