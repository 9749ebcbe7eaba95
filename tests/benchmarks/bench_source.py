"""Benchmark (not a test): how many Jetstream events a source sustains, against Bluesky's whole post volume.

    .venv/bin/python tests/benchmarks/bench_source.py [--events 20000] [--outage]

The source process (``python -m monitor.sources``, as the worker's role runs it) reads a stand-in
Jetstream that sends ``--events`` post creates as fast as the source takes them (realistic texts from the
project's recording generator, 5 % of them with a task keyword), into the real local broker. Two filter
settings: every post kept (each one sent to the broker: the worst case) and the druglib_adverse task's
keywords with --language en (a real deployment). Printed per setting: events/s from the first connection
to the stored position of the last event (wall clock, the stand-in sharing the machine), events per
CPU-second of the source process (the machine-independent figure), its resident memory, and the headroom
over Jetstream's post volume (about 25 posts/s on average, 40/s at peak; goal >= 10x the peak).

``--outage`` also stops the broker for 30 s in the middle of a keep-all run and samples the source's
resident memory every second: with the broker away the source stops reading (back-pressure), so memory
stays flat, and it resumes without a gap when the broker returns.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[2]
PEAK, MEAN = 40.0, 25.0
console = Console(width=150)  # a wide table also when the output goes to a file


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def events(n: int, seed: int = 5) -> list[dict]:
    from monitor.sources.standin.phrasebook import compose

    rng = random.Random(seed)
    start = 1_798_000_000_000_000
    out = []
    for i in range(n):
        text = compose(rng, "en")
        if rng.random() < 0.05:
            text += " the side effects are rough"
        out.append({"did": f"did:plc:bench{i % 5000:05d}", "time_us": start + i * 1000, "kind": "commit",
                    "commit": {"rev": f"r{i}", "operation": "create", "collection": "app.bsky.feed.post",
                               "rkey": f"b{i:08d}", "cid": f"c{i}",
                               "record": {"$type": "app.bsky.feed.post", "text": text, "langs": ["en"],
                                          "createdAt": "2026-11-30T10:00:00.000Z"}}})
    return out


def run(kafka, stream: list[dict], extra_env: dict[str, str], *, outage: bool = False) -> dict:  # noqa: ANN001
    from monitor.config import Settings, TopicSettings
    from monitor.kafka import broker
    from monitor.kafka.topology import topic_specs
    from monitor.services import local
    from monitor.sources.positions import Position
    from monitor.sources.standin.jetstream import JetstreamStandin

    tag = uuid.uuid4().hex[:8]
    topics = TopicSettings(**{role: f"b{tag}.{role}" for role in TopicSettings().all()})
    broker.ensure_topics(kafka, topic_specs(kafka, topics))
    last = stream[-1]["time_us"]
    samples: list[float] = []
    with JetstreamStandin(stream) as server:
        env = {**os.environ, "MONITOR_METRICS__PORT": "0", "MONITOR_SOURCE__PLATFORM": "bluesky",
               "MONITOR_SOURCE__JETSTREAM_URLS": json.dumps([server.ws_url]), "MONITOR_LOG_LEVEL": "WARNING",
               **{f"MONITOR_TOPICS__{r.upper()}": n for r, n in topics.all().items()}, **extra_env}
        process = subprocess.Popen([sys.executable, "-m", "monitor.sources"], env=env, cwd=ROOT)
        try:
            while not server.connections:
                time.sleep(0.05)
            started, cpu0 = time.perf_counter(), cpu_seconds(process.pid)
            stopped_at = None
            while True:
                samples.append(rss_mb(process.pid))
                if outage and stopped_at is None and server.sent > len(stream) // 3:
                    local.down(Settings(), ["kafka"])
                    stopped_at = time.perf_counter()
                    outage_rss = []
                    while time.perf_counter() - stopped_at < 30:
                        outage_rss.append(rss_mb(process.pid))
                        time.sleep(1)
                    sent_during = server.sent
                    local.up(Settings(), ["kafka"])
                stored = broker.latest_by_key(kafka, topics.positions).get(b"bluesky")
                if stored is not None and (Position.from_bytes(stored).cursor or 0) >= last:
                    break
                assert process.poll() is None, "the source died"
                time.sleep(0.25)
            elapsed, cpu = time.perf_counter() - started, cpu_seconds(process.pid) - cpu0
        finally:
            process.terminate()
            process.wait(timeout=60)
        posts = sum(broker.end_offsets(kafka, topics.posts).values())
    result = {"events": len(stream), "posts_sent": posts, "seconds": elapsed, "cpu_s": cpu,
              "rss_mb": max(samples)}
    if outage:
        result.update(outage_rss_min=min(outage_rss), outage_rss_max=max(outage_rss),
                      read_during_outage=sent_during)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--outage", action="store_true", help="also a keep-all run with the broker away for 30 s")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from monitor.config import Settings
    from monitor.services import local

    settings = Settings()
    local.up(settings, ["kafka"])
    stream = events(args.events)
    settings_runs = {"keep every post": {},
                     "druglib_adverse keywords, en": {"MONITOR_SOURCE__KEYWORD_TASKS": '["druglib_adverse"]',
                                                      "MONITOR_SOURCE__LANGUAGES": '["en"]'}}
    table = Table("filter", "events", "posts sent", "events/s (wall)", "events per CPU-s", "headroom over 40/s peak",
                  "max RSS MB", title=f"Jetstream source on {cpu_model()} ({os.cpu_count()} logical CPUs)")
    for name, extra in settings_runs.items():
        r = run(settings.kafka, stream, extra)
        per_cpu = r["events"] / max(r["cpu_s"], 1e-9)
        table.add_row(name, str(r["events"]), str(r["posts_sent"]), f"{r['events'] / r['seconds']:,.0f}",
                      f"{per_cpu:,.0f}", f"{per_cpu / PEAK:,.0f}x (mean {MEAN:.0f}/s: {per_cpu / MEAN:,.0f}x)",
                      f"{r['rss_mb']:.0f}")
    console.print(table)
    if args.outage:
        r = run(settings.kafka, stream, {}, outage=True)
        console.print(f"broker away 30 s mid-run: source RSS {r['outage_rss_min']:.0f}-{r['outage_rss_max']:.0f} MB "
                      f"during the outage (max {r['rss_mb']:.0f} MB over the run); the stand-in had sent "
                      f"{r['read_during_outage']} of {r['events']} events when the broker returned; afterwards "
                      f"{r['posts_sent']} posts on the topic for {r['events']} events (no gap)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
