"""How fast the console's pages answer over a large database: p50/p95 per page (not a test).

Seeds N posts with a live prediction and a signal each (10% explained), spread over 60 days and three
tasks, and an alert per task and day, with bulk inserts into a fresh SQLite file (and into PostgreSQL
when --postgres URL is given: the database is emptied and migrated). Then signs in and requests every
page through the application (routing, queries, templates; no network), and prints in ms the first
request (which pays for what the console keeps in memory: model health's ended days) and p50/p95.

    .venv/bin/python tests/benchmarks/bench_console.py --signals 1000000
    .venv/bin/python tests/benchmarks/bench_console.py --signals 200000 \
        --postgres postgresql+psycopg://monitor:monitor@127.0.0.1:55432/monitor_bench
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, insert, select

from monitor.config import DatabaseSettings, Settings
from monitor.storage import migrations
from monitor.storage.session import create_db_engine, make_sessionmaker, transaction
from monitor.storage.tables import Alert, Explanation, Post, Prediction, Signal

TASKS = ("druglib_adverse", "smm4h23_task4_sad_diagnosis", "cssrs_suicide_risk")
LABEL = {"druglib_adverse": "severe_adr", "smm4h23_task4_sad_diagnosis": "sad",
         "cssrs_suicide_risk": "attempt"}
NOW = datetime(2026, 3, 1, tzinfo=UTC)
DAYS = 60
WORDS = ("nausea", "rash", "dizzy", "headache", "anxiety", "panic", "insomnia", "hives", "fever", "tired")
PASSWORD = "benchmark password"


def seed(db: DatabaseSettings, n: int, chunk: int = 20_000) -> float:
    """Bulk-insert n posts, predictions and signals (and 10% explanations); return the seconds taken."""
    started = time.perf_counter()
    engine = create_db_engine(db)
    span = DAYS * 86400
    with engine.begin() as conn:
        for first in range(0, n, chunk):
            last = min(first + chunk, n)
            at = [NOW - timedelta(seconds=span * (1 - i / n)) for i in range(first, last)]
            conn.execute(insert(Post), [
                {"id": i + 1, "source": "bench", "source_id": str(i), "author": None, "lang": "en", "geo": None,
                 "text": f"post {i}: {WORDS[i % 10]} and {WORDS[(i * 7) % 10]} after the new dose, day {i % 97}",
                 "created_at": at[i - first], "ingested_at": at[i - first]} for i in range(first, last)])
            conn.execute(insert(Prediction), [
                {"post_id": i + 1, "task": TASKS[i % 3], "model_version": "bench-1", "run": "live",
                 "label": LABEL[TASKS[i % 3]], "probabilities": {LABEL[TASKS[i % 3]]: 0.8, "other": 0.2},
                 "confidence": 0.55 + (i % 45) / 100, "escalated": i % 10 == 0, "created_at": at[i - first]}
                for i in range(first, last)])
            conn.execute(insert(Signal), [
                {"post_id": i + 1, "task": TASKS[i % 3], "model_version": "bench-1", "run": "live",
                 "label": LABEL[TASKS[i % 3]], "confidence": 0.55 + (i % 45) / 100,
                 "decided_by": "llm" if i % 10 == 0 else "classifier", "post_created_at": at[i - first],
                 "flagged_at": at[i - first]} for i in range(first, last)])
            conn.execute(insert(Explanation), [
                {"post_id": i + 1, "task": TASKS[i % 3], "model_version": "bench-1", "run": "live",
                 "llm_model": "smollm2", "prompt_version": "1", "predicted_label": LABEL[TASKS[i % 3]],
                 "verdict": "confirm", "suggested_label": None, "final_label": LABEL[TASKS[i % 3]],
                 "rationale": "stated plainly", "evidence": WORDS[i % 10], "reason": None, "latency_s": 0.2,
                 "created_at": at[i - first]} for i in range(first, last, 10)])
        alerts = []
        for t, task in enumerate(TASKS):
            for day in range(DAYS):
                start = NOW - timedelta(days=DAYS - day)
                top = [{"post_id": 1 + ((day * n) // DAYS + t + 3 * k) % n} for k in range(5)]
                alerts.append({"task": task, "granularity": "day", "stratum": "all", "series": "count",
                               "method": ("C1", "C2", "C3")[day % 3], "bucket_start": start,
                               "bucket_end": start + timedelta(days=1), "observed": 50.0, "expected": 20.0, "sd": 5.0,
                               "score": 6.0, "threshold": 3.0, "posts": 50, "top_posts": top, "detected_at": NOW})
        conn.execute(insert(Alert), alerts)
    engine.dispose()
    return time.perf_counter() - started


def measure(db: DatabaseSettings, data_dir: Path, repeat: int) -> list[tuple[str, float, float, float]]:
    from fastapi.testclient import TestClient

    from monitor.console.app import create_app
    from monitor.console.auth import hash_password
    from monitor.storage.reviews import add_user, find_user

    engine = create_db_engine(db)
    with transaction(make_sessionmaker(engine)) as session:
        if find_user(session, "bench") is None:  # a reused database has it
            add_user(session, "bench", hash_password(PASSWORD), "reviewer")
        alert_id = session.scalar(select(Alert.id).order_by(Alert.bucket_start.desc()).limit(1))
    engine.dispose()
    settings = Settings(_env_file=None, database=db, data_dir=data_dir)
    client = TestClient(create_app(settings, clock=lambda: NOW), base_url="http://127.0.0.1")
    form = client.get("/login").text
    token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', form)[1]
    client.post("/login", data={"username": "bench", "password": PASSWORD, "csrf_token": token})

    first = client.get("/signals").text
    deep = "/signals"
    for _ in range(20):  # the 21st page, reached by following the keyset links
        found = re.search(r'rel="next" href="(\?[^"]+)"', client.get(deep).text)
        deep = "/signals" + found[1].replace("&amp;", "&")
    assert "No signals match" not in first
    pages = {
        "alerts (newest)": "/",
        "alerts (task + method)": f"/?task={TASKS[1]}&method=C2",
        "alert page (chart, 5 posts)": f"/alerts/{alert_id}",
        "evidence bundle JSON": f"/alerts/{alert_id}/evidence.json",
        "signals page 1": "/signals",
        "signals page 21 (keyset)": deep,
        "signals task + label + dates": f"/signals?task={TASKS[0]}&label=severe_adr&since=2026-01-15&until=2026-01-20",
        "signals text search": "/signals?q=hives+and+fever",
        "signals rare text, 1 week": "/signals?q=day+96&since=2026-02-01&until=2026-02-07",
        "model health (30 days)": "/health",
    }
    results = []
    for name, url in pages.items():
        timings = []
        for _ in range(repeat):
            started = time.perf_counter()
            response = client.get(url)
            timings.append((time.perf_counter() - started) * 1000)
            assert response.status_code == 200, (url, response.status_code)
        first = timings[0]  # the first request pays for what the console keeps (model health's ended days)
        timings.sort()
        results.append((name, first, statistics.median(timings), timings[max(0, int(round(0.95 * len(timings))) - 1)]))
    return results


def seeded(db: DatabaseSettings) -> int:
    """How many signals a database at head already holds (0 when it is not at head)."""
    if migrations.current_revision(db) != migrations.head_revision():
        return 0
    engine = create_db_engine(db)
    try:
        with transaction(make_sessionmaker(engine)) as session:
            return session.scalar(select(func.count()).select_from(Signal)) or 0
    finally:
        engine.dispose()


def run(label: str, db: DatabaseSettings, n: int, repeat: int, data_dir: Path) -> None:
    migrations.upgrade(db)
    seconds = seed(db, n)
    if db.url.startswith("postgresql"):
        # What autovacuum does within a minute of a bulk load; measuring before it would time plans made
        # without statistics, which a running database does not have.
        engine = create_db_engine(db)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")
        engine.dispose()
    print(f"\n{label}: seeded {n:,} posts + predictions + signals, {n // 10:,} explanations in {seconds:.0f}s")
    print_table(measure(db, data_dir, repeat))


def print_table(results: list[tuple[str, float, float, float]]) -> None:
    print(f"{'page':34} {'first ms':>8} {'p50 ms':>8} {'p95 ms':>8}")
    for name, first, p50, p95 in results:
        print(f"{name:34} {first:8.1f} {p50:8.1f} {p95:8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--signals", type=int, default=1_000_000, help="posts, each with a prediction and a signal")
    parser.add_argument("--repeat", type=int, default=20, help="requests per page")
    parser.add_argument("--postgres", help="also a PostgreSQL database URL (emptied and migrated)")
    parser.add_argument("--skip-sqlite", action="store_true", help="only PostgreSQL (with --postgres)")
    parser.add_argument("--reuse", action="store_true", help="measure a PostgreSQL database already seeded with "
                        "--signals N at head again, without emptying it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_sqlite:
            run("SQLite", DatabaseSettings(url=f"sqlite:///{tmp}/bench.db"), args.signals, args.repeat, Path(tmp))
        if args.postgres:
            db = DatabaseSettings(url=args.postgres)
            if args.reuse and seeded(db) == args.signals:
                print(f"\nPostgreSQL: reusing {args.signals:,} seeded signals")
                print_table(measure(db, Path(tmp), args.repeat))
            else:
                migrations.downgrade(db, "base")
                run("PostgreSQL", db, args.signals, args.repeat, Path(tmp))


if __name__ == "__main__":
    main()
