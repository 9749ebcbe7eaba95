"""The same migrations and idempotent writes on PostgreSQL and on the embedded SQLite default."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, inspect, select, text

from monitor.config import DatabaseSettings
from monitor.errors import StorageError
from monitor.privacy import pseudonymise
from monitor.records import Post, Prediction
from monitor.storage import migrations, repository
from monitor.storage.session import create_db_engine, make_sessionmaker, transaction
from monitor.storage.tables import Explanation, Signal
from monitor.storage.tables import Post as PostRow
from monitor.storage.tables import Prediction as PredictionRow

KEY = b"test-key"
TABLES = {"posts", "predictions", "explanations", "signals", "replay_runs", "alerts", "erasures", "console_users",
          "console_sessions", "reviews"}


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request, tmp_path) -> DatabaseSettings:
    if request.param == "sqlite":
        return DatabaseSettings(url=f"sqlite:///{tmp_path / 'monitor.db'}")
    return request.getfixturevalue("postgres_db")


def _tables(db: DatabaseSettings) -> set[str]:
    engine = create_db_engine(db)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_migrations_up_down_up(database: DatabaseSettings):
    migrations.downgrade(database, "base")  # the PostgreSQL database is shared by the session
    assert _tables(database) == set()
    assert migrations.current_revision(database) is None
    with pytest.raises(StorageError, match="monitor db upgrade"):
        migrations.require_head(database)

    migrations.upgrade(database)
    assert _tables(database) == TABLES
    assert migrations.current_revision(database) == migrations.head_revision()
    migrations.require_head(database)

    migrations.downgrade(database, "base")
    assert _tables(database) == set()
    migrations.upgrade(database)
    assert _tables(database) == TABLES


def test_a_withheld_verdict_goes_back_as_unverified_when_the_schema_is_downgraded(database: DatabaseSettings):
    migrations.downgrade(database, "base")  # a clean slate (the PostgreSQL database is shared by the session)
    migrations.upgrade(database)
    engine = create_db_engine(database)
    with transaction(make_sessionmaker(engine)) as session:
        ids = repository.upsert_posts(session, [_post("w")], author_key=KEY)
        repository.upsert_explanations(session, [{
            "post_id": ids[("test", "w")], "task": "adr", "model_version": "v1", "llm_model": "smollm2",
            "prompt_version": "adr-1", "predicted_label": "adverse", "verdict": "withheld",
            "final_label": "adverse", "rationale": "mentions nausea", "evidence": "nausea is awful",
            "label_scores": {"adverse": 0.4, "none": 0.6}, "unsupported": [],
        }])
    engine.dispose()
    migrations.downgrade(database, "0005")  # the old check constraint has no 'withheld'
    engine = create_db_engine(database)
    with engine.connect() as connection:
        verdict, reason = connection.execute(text("SELECT verdict, reason FROM explanations")).one()
    engine.dispose()
    assert verdict == "unverified" and "withheld" in reason
    migrations.upgrade(database)
    assert migrations.current_revision(database) == migrations.head_revision()
    migrations.downgrade(database, "base")  # leave the shared database empty, as the tests after this expect
    migrations.upgrade(database)


def _post(post_id: str, text: str = "day 3 on sertraline, nausea is awful") -> Post:
    return Post(id=post_id, text=text, created_at=datetime(2024, 5, 1, 12, tzinfo=UTC), source="test", lang="en",
                author="jane_doe_1987")


def test_redelivered_records_leave_one_row(database: DatabaseSettings):
    migrations.upgrade(database)
    factory = make_sessionmaker(create_db_engine(database))
    # A numeric-looking id stays a string: leading zeros and length are kept.
    posts = [_post("00012345678901234567890"), _post("b")]
    prediction = Prediction(
        post_id="00012345678901234567890", source="test", task="adr", model_version="v1",
        label="adverse", probabilities={"adverse": 0.9, "none": 0.1}, confidence=0.9, escalated=True,
    )
    for _ in range(2):  # the second pass is an at-least-once redelivery of the same batch
        with transaction(factory) as session:
            ids = repository.upsert_posts(session, posts + [posts[0]], author_key=KEY)
            repository.upsert_predictions(session, [prediction, prediction], ids)
            post_pk = ids[("test", "00012345678901234567890")]
            repository.upsert_explanations(session, [{
                "post_id": post_pk, "task": "adr", "model_version": "v1", "llm_model": "smollm2",
                "prompt_version": "adr-1", "predicted_label": "adverse", "verdict": "confirm",
                "final_label": "adverse", "rationale": "mentions nausea", "evidence": "nausea is awful",
                "latency_s": 0.3,
            }])
            repository.upsert_signals(session, [{
                "post_id": post_pk, "task": "adr", "model_version": "v1", "label": "adverse",
                "confidence": 0.9, "decided_by": "llm", "post_created_at": posts[0].created_at,
            }])
    with transaction(factory) as session:
        assert session.scalar(select(func.count()).select_from(PostRow)) == 2
        assert session.scalar(select(func.count()).select_from(PredictionRow)) == 1
        assert session.scalar(select(func.count()).select_from(Explanation)) == 1
        assert session.scalar(select(func.count()).select_from(Signal)) == 1
        stored = session.scalars(select(PostRow).where(PostRow.source_id == "00012345678901234567890")).one()
        assert stored.created_at == datetime(2024, 5, 1, 12, tzinfo=UTC)
        assert stored.created_at.tzinfo is not None
        assert stored.author == pseudonymise("jane_doe_1987", KEY) and "jane" not in stored.author
        row = session.scalars(select(PredictionRow)).one()
        assert row.probabilities == {"adverse": 0.9, "none": 0.1} and row.run == "live"

    # A replay run stores its own rows beside the live ones.
    with transaction(factory) as session:
        ids = repository.upsert_posts(session, posts, author_key=KEY)
        assert repository.upsert_predictions(session, [prediction], ids, run="replay-1") == 1
        assert repository.upsert_predictions(session, [prediction], ids, run="replay-1") == 0
    factory.kw["bind"].dispose()


def test_timestamps_keep_their_instant(database: DatabaseSettings):
    migrations.upgrade(database)
    factory = make_sessionmaker(create_db_engine(database))
    when = datetime(2024, 1, 1, 9, 30, tzinfo=timezone(timedelta(hours=-5)))
    with transaction(factory) as session:
        repository.upsert_posts(session, [Post(id="tz", text="x", created_at=when, source="tz")], author_key=KEY)
    with transaction(factory) as session:
        stored = session.scalars(select(PostRow.created_at).where(PostRow.source_id == "tz")).one()
    assert stored == when and stored.utcoffset() == timedelta(0)
    factory.kw["bind"].dispose()


def test_constraint_violation_is_a_storage_error(database: DatabaseSettings):
    migrations.upgrade(database)
    factory = make_sessionmaker(create_db_engine(database))
    with pytest.raises(StorageError, match="database error"):
        with transaction(factory) as session:
            ids = repository.upsert_posts(session, [_post("c")], author_key=KEY)
            repository.upsert_signals(session, [{
                "post_id": ids[("test", "c")], "task": "adr", "model_version": "v1", "label": "adverse",
                "confidence": 0.9, "decided_by": "somebody", "post_created_at": datetime.now(UTC),
            }])
    factory.kw["bind"].dispose()


def test_tables_and_migrations_agree(database: DatabaseSettings):
    """No change in tables.py goes without its migration: autogenerate finds nothing to do at head."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from monitor.storage.tables import Base

    migrations.upgrade(database)
    engine = create_db_engine(database)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    engine.dispose()
    assert diff == []
