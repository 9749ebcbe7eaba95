"""Benchmark (not a test): the streaming pipeline (Kafka -> classify -> persist -> rows) vs the model alone.

    .venv/bin/python tests/benchmarks/bench_pipeline.py --model MODEL_DIR --task druglib_adverse \\
        --data monitor/demo_data/druglib_sample.tsv [--posts 3000] [--database URL]

Needs the local services (``monitor services up``). In one run, on the same posts:
1. ``model alone``: ``Classifier.predict_proba`` over the posts in batches of the worker's batch size,
   in this process with nothing else running (the ceiling);
2. ``pipeline, saturated``: a classify and a persist worker process (the agents' real code) on fresh
   topics and a freshly migrated database; the posts are produced as fast as the producer goes, and
   throughput is posts / (last prediction row - first post sent);
3. ``pipeline, paced``: the same workers fed at ``--paced-share`` of the saturated rate; latency of
   each post = its prediction row's insert time - the time it was sent (``created_at``), p50/p99.

The explain role is left out on purpose: escalated posts get their prediction row at once (their
explanation follows), and the LLM has its own benchmark (bench_explainer.py). Prints the ratio
pipeline / model alone (the issue's goal: at most 10% below).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np


def _workers(env: dict, log: Path) -> list[subprocess.Popen]:
    with open(log, "ab") as out:
        return [subprocess.Popen([sys.executable, "-m", "stream_jobs", "--role", role], env=env,  # noqa: S603
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
                for role in ("classify", "persist")]


def _stop(workers: list[subprocess.Popen]) -> None:
    from monitor.services import process

    for w in workers:
        process.stop_group(w, timeout_s=60)


def main() -> None:  # noqa: PLR0915 - a benchmark script reads best top to bottom
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from kafka import KafkaProducer
    from rich.console import Console
    from rich.table import Table
    from sqlalchemy import func, select

    from monitor import broker
    from monitor.classifier import Classifier
    from monitor.config import DatabaseSettings, KafkaSettings, Settings, TopicSettings
    from monitor.feed import RateLimiter
    from monitor.records import Post, encode_post
    from monitor.storage import migrations
    from monitor.storage.session import create_db_engine, make_sessionmaker, transaction
    from monitor.storage.tables import Post as PostRow
    from monitor.storage.tables import Prediction
    from monitor.tasks import load_task
    from monitor.topology import topic_specs
    from monitor.corpus import load_examples

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--task", required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--posts", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--paced-share", type=float, default=0.5, help="paced run at this share of the saturated rate")
    parser.add_argument("--database", default=None, help="database URL (default: the configured one)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-pipeline"))
    args = parser.parse_args()
    console = Console()
    settings = Settings()
    kafka: KafkaSettings = settings.kafka
    database = DatabaseSettings(url=args.database) if args.database else settings.database

    texts = [e.text for e in load_examples(args.data, load_task(args.task), skip_bad_rows=True).examples]
    texts = [texts[i % len(texts)] for i in range(args.posts)]

    # 1. the model alone
    classifier = Classifier.load(args.model, settings.classifier.model_copy(update={"batch_size": args.batch_size}))
    classifier.predict_proba(texts[: args.batch_size])
    started = time.perf_counter()
    for i in range(0, len(texts), args.batch_size):
        classifier.predict_proba(texts[i : i + args.batch_size])
    alone = len(texts) / (time.perf_counter() - started)
    device, dtype = classifier.device, classifier.dtype
    del classifier

    def run(rate: float | None, label: str) -> tuple[float, list[float]]:
        tag = uuid.uuid4().hex[:8]
        topics = TopicSettings(**{role: f"bench{tag}.{role}" for role in TopicSettings().all()})
        broker.ensure_topics(kafka, topic_specs(kafka, topics))
        migrations.downgrade(database, "base")
        migrations.upgrade(database)
        args.workdir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MONITOR_DATABASE__URL": database.url, "MONITOR_DATA_DIR": str(args.workdir),
               "MONITOR_CLASSIFIER__MODELS": json.dumps([str(args.model)]),
               "MONITOR_CLASSIFIER__BATCH_SIZE": str(args.batch_size), "MONITOR_STREAM__APP_ID": f"bench-{tag}",
               "MONITOR_METRICS__PORT": "0", **{f"MONITOR_TOPICS__{r.upper()}": n for r, n in topics.all().items()}}
        workers = _workers(env, args.workdir / "workers.log")
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
            while rows() < len(texts) + 1:
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
        return len(texts) / (last.timestamp() - started), latencies

    console.print(f"model alone: {alone:,.1f} posts/s ({device}, {dtype}, batch {args.batch_size}); "
                  "now the pipeline, saturated ...")
    saturated, sat_latency = run(None, "sat")
    paced_rate = saturated * args.paced_share
    console.print(f"saturated: {saturated:,.1f} posts/s; now paced at {paced_rate:,.1f} posts/s ...")
    paced, latency = run(paced_rate, "paced")

    table = Table("measure", "value")
    table.add_row("posts", f"{len(texts):,}")
    table.add_row("database", database.url.split("://")[0])
    table.add_row("model alone (posts/s)", f"{alone:,.1f}")
    table.add_row("pipeline saturated (posts/s)", f"{saturated:,.1f}")
    table.add_row("pipeline / model alone", f"{saturated / alone:.2f}x")
    table.add_row(f"paced at {paced_rate:,.1f} posts/s: achieved", f"{paced:,.1f}")
    for name, values in (("paced", latency), ("saturated", sat_latency)):
        table.add_row(f"{name} latency p50 / p99 (s)",
                      f"{statistics.median(values):.3f} / {float(np.percentile(values, 99)):.3f}")
    console.print(table)


if __name__ == "__main__":
    main()
