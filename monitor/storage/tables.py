"""SQLAlchemy tables: posts, predictions, explanations, signals, replay runs, alerts, erasures, and the
console's users, sessions and reviews.

Every table that a stream writes has a natural unique key, so an at-least-once redelivery of the
same record inserts nothing new (see ``repository``). The same schema runs on PostgreSQL and on
the embedded SQLite default; Alembic migrations under ``alembic/`` are generated from here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

#: The run name of the live pipeline; a replay stores its results under its own run name.
LIVE_RUN = "live"

VERDICTS = ("confirm", "reject", "withheld", "unverified", "over_budget")
DECIDERS = ("classifier", "llm")
RUN_STATUSES = ("running", "done", "failed")

# Deterministic constraint names, so migrations read the same on every dialect.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always returned timezone-aware (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware timestamp")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


Id = BigInteger().with_variant(Integer, "sqlite")  # SQLite auto-increments INTEGER PRIMARY KEY only
Json = JSON().with_variant(JSONB(), "postgresql")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Post(Base):
    """A post as ingested: keyed by its source and the source's own id (a string, never a number)."""

    __tablename__ = "posts"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    source: Mapped[str] = mapped_column(String(64))
    source_id: Mapped[str] = mapped_column(String(128))
    author: Mapped[str | None] = mapped_column(String(64), comment="keyed hash of the author, never the name")
    text: Mapped[str] = mapped_column(Text)
    lang: Mapped[str | None] = mapped_column(String(16))
    geo: Mapped[dict[str, Any] | None] = mapped_column(Json)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    ingested_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        UniqueConstraint("source", "source_id"),
        Index(None, "created_at"),
        Index(None, "author"),  # erasure by author
    )


class Prediction(Base):
    """One classifier output: a post, a task, a model version, within a run (``live`` or a replay)."""

    __tablename__ = "predictions"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    post_id: Mapped[int] = mapped_column(ForeignKey("posts.id", ondelete="CASCADE"))
    task: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(128))
    run: Mapped[str] = mapped_column(String(128), default=LIVE_RUN)
    label: Mapped[str] = mapped_column(String(64))
    probabilities: Mapped[dict[str, float]] = mapped_column(Json)
    confidence: Mapped[float] = mapped_column(Float)
    escalated: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        UniqueConstraint("post_id", "task", "model_version", "run"),
        Index(None, "task", "run", "created_at"),
        # The console's model health: per label and day, read from the index alone (storage/console.py).
        Index("ix_predictions_health", "task", "run", "label", "created_at", "model_version", "confidence",
              "escalated"),
        CheckConstraint("confidence >= 0 AND confidence <= 1", name="confidence_range"),
    )


class Explanation(Base):
    """The LLM explainer's verdict on a classifier label, with the prompt version that produced it."""

    __tablename__ = "explanations"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    post_id: Mapped[int] = mapped_column(ForeignKey("posts.id", ondelete="CASCADE"))
    task: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(128), comment="classifier version whose label was checked")
    run: Mapped[str] = mapped_column(String(128), default=LIVE_RUN)
    llm_model: Mapped[str] = mapped_column(String(256))
    prompt_version: Mapped[str] = mapped_column(String(64))
    predicted_label: Mapped[str] = mapped_column(String(64))
    verdict: Mapped[str] = mapped_column(String(16))
    suggested_label: Mapped[str | None] = mapped_column(String(64), comment="the label the LLM said is right")
    final_label: Mapped[str] = mapped_column(String(64))
    rationale: Mapped[str | None] = mapped_column(Text)
    evidence: Mapped[str | None] = mapped_column(Text, comment="a quote that occurs in the post")
    evidence_line: Mapped[int | None] = mapped_column(Integer, comment="the evidence's line of the numbered post")
    evidence_scores: Mapped[list[float] | None] = mapped_column(
        Json, comment="per line, the drop of the predicted class's probability without it (occlusion)")
    label_scores: Mapped[dict[str, float] | None] = mapped_column(
        Json, comment="the LLM's calibrated probability of each label; the predicted one's is P(confirm)")
    unsupported: Mapped[list[str] | None] = mapped_column(
        Json, comment="rationale terms (drug, symptom, number) the post does not contain")
    reason: Mapped[str | None] = mapped_column(Text, comment="why the output is unverified or was not produced")
    latency_s: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        UniqueConstraint("post_id", "task", "model_version", "run", "llm_model", "prompt_version"),
        # The console's flip and verdict rates per day, read from the index alone.
        Index("ix_explanations_health", "task", "run", "created_at", "verdict", "predicted_label", "final_label"),
        CheckConstraint(_one_of("verdict", VERDICTS), name="verdict"),
    )


class Signal(Base):
    """A flagged health signal: a post whose final label is one of its task's signal labels."""

    __tablename__ = "signals"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    post_id: Mapped[int] = mapped_column(ForeignKey("posts.id", ondelete="CASCADE"))
    task: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(128))
    run: Mapped[str] = mapped_column(String(128), default=LIVE_RUN)
    label: Mapped[str] = mapped_column(String(64))
    confidence: Mapped[float] = mapped_column(Float)
    decided_by: Mapped[str] = mapped_column(String(16))
    post_created_at: Mapped[datetime] = mapped_column(UTCDateTime(), comment="the post's own time, for bucketing")
    flagged_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        UniqueConstraint("post_id", "task", "model_version", "run"),
        # Detection's series, and the console's per-bucket counts read from the index alone (confidence for
        # the weighted series, model_version to see a model change inside a bucket).
        Index(None, "task", "run", "post_created_at", "confidence", "model_version"),
        # The console's signal list over every task: newest first, keyset-paginated on (time, id).
        Index(None, "run", "post_created_at", "id"),
        CheckConstraint(_one_of("decided_by", DECIDERS), name="decided_by"),
        CheckConstraint("confidence >= 0 AND confidence <= 1", name="confidence_range"),
    )


class ReplayRun(Base):
    """A replay of a topic's time range with a given model and policy, and its report."""

    __tablename__ = "replay_runs"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    topic: Mapped[str] = mapped_column(String(249))
    from_ts: Mapped[datetime] = mapped_column(UTCDateTime())
    to_ts: Mapped[datetime] = mapped_column(UTCDateTime())
    model_path: Mapped[str | None] = mapped_column(Text)
    model_version: Mapped[str | None] = mapped_column(String(128))
    policy: Mapped[dict[str, Any] | None] = mapped_column(Json)
    status: Mapped[str] = mapped_column(String(16), default="running")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    report: Mapped[dict[str, Any] | None] = mapped_column(Json)

    __table_args__ = (CheckConstraint(_one_of("status", RUN_STATUSES), name="status"),)


GRANULARITIES = ("hour", "day")
SERIES_KINDS = ("count", "weighted")
EARS_METHODS = ("C1", "C2", "C3")


class Alert(Base):
    """An EARS detection: one bucket of one signal series that scored over its method's threshold.

    The natural key is the series (task, granularity, stratum, kind), the method and the bucket, so a
    detection re-run over the same buckets inserts nothing; the first detection of a bucket is kept.
    """

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    task: Mapped[str] = mapped_column(String(64))
    granularity: Mapped[str] = mapped_column(String(8))
    stratum: Mapped[str] = mapped_column(String(320), comment="all, source:NAME or region:COUNTRY/REGION")
    series: Mapped[str] = mapped_column(String(16), comment="count of flagged posts or weighted by confidence")
    method: Mapped[str] = mapped_column(String(8))
    bucket_start: Mapped[datetime] = mapped_column(UTCDateTime())
    bucket_end: Mapped[datetime] = mapped_column(UTCDateTime())
    observed: Mapped[float] = mapped_column(Float)
    expected: Mapped[float] = mapped_column(Float, comment="baseline mean")
    sd: Mapped[float] = mapped_column(Float, comment="baseline sd after the floor: score = (observed - expected) / sd")
    score: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    posts: Mapped[int] = mapped_column(Integer, comment="flagged posts in the bucket")
    top_posts: Mapped[list[dict[str, Any]]] = mapped_column(Json, comment="highest-confidence posts, explanations")
    detected_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        UniqueConstraint("task", "granularity", "stratum", "series", "method", "bucket_start"),
        Index(None, "bucket_start"),
        CheckConstraint(_one_of("granularity", GRANULARITIES), name="granularity"),
        CheckConstraint(_one_of("series", SERIES_KINDS), name="series"),
        CheckConstraint(_one_of("method", EARS_METHODS), name="method"),
    )


ERASURE_KINDS = ("post", "author")
ERASURE_ORIGINS = ("platform", "request")


class Erasure(Base):
    """A deletion honoured, kept as a tombstone: the rows are gone, and a post that arrives later (a
    redelivery, a replay, a lagging stage) under an erased (source, id) or author is not stored again."""

    __tablename__ = "erasures"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    source: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(8), comment="post: one post; author: every post of an author")
    target: Mapped[str] = mapped_column(String(128), comment="the post's source id, or the author's keyed hash")
    origin: Mapped[str] = mapped_column(String(16), comment="platform (a delete event) or request (monitor privacy)")
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime())
    erased_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    posts_removed: Mapped[int] = mapped_column(Integer, default=0, comment="posts deleted when it was first applied")

    __table_args__ = (
        UniqueConstraint("source", "kind", "target"),
        CheckConstraint(_one_of("kind", ERASURE_KINDS), name="kind"),
        CheckConstraint(_one_of("origin", ERASURE_ORIGINS), name="origin"),
    )


CONSOLE_ROLES = ("viewer", "reviewer", "admin")
REVIEW_KINDS = ("label", "alert")
ALERT_DECISIONS = ("event", "false_alarm")


class ConsoleUser(Base):
    """Someone who may sign in to the analyst's console, with an argon2 hash of the password (never the password)."""

    __tablename__ = "console_users"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(256))
    role: Mapped[str] = mapped_column(String(16), comment="viewer (reads), reviewer (also reviews), admin (also users)")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (CheckConstraint(_one_of("role", CONSOLE_ROLES), name="role"),)


class ConsoleSession(Base):
    """A signed-in browser: the keyed hash of its cookie token (a leaked table gives no usable cookie)."""

    __tablename__ = "console_sessions"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("console_users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (Index(None, "expires_at"),)


class Review(Base):
    """A reviewer's decision, appended and never updated: a post's label for a task (confirmed or
    corrected), or whether an alert was a real event. The latest row of a post and task, or of an
    alert, is the current one; the earlier rows are its history."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(Id, primary_key=True)
    kind: Mapped[str] = mapped_column(String(8), comment="label: a post's label; alert: event or false alarm")
    task: Mapped[str] = mapped_column(String(64))
    # A post erased for privacy takes its reviews with it; an alert's reviews go with the alert.
    post_id: Mapped[int | None] = mapped_column(ForeignKey("posts.id", ondelete="CASCADE"))
    alert_id: Mapped[int | None] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"))
    label: Mapped[str | None] = mapped_column(String(64), comment="the label the reviewer says is right")
    shown_label: Mapped[str | None] = mapped_column(String(64), comment="the monitor's label when it was reviewed")
    decision: Mapped[str | None] = mapped_column(String(16), comment="event or false_alarm")
    note: Mapped[str | None] = mapped_column(Text)
    reviewer: Mapped[str] = mapped_column(String(64), comment="username; kept if the account is later disabled")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    __table_args__ = (
        Index(None, "post_id", "task", "id"),
        Index(None, "alert_id", "id"),
        Index(None, "kind", "task", "id"),
        CheckConstraint(_one_of("kind", REVIEW_KINDS), name="kind"),
        CheckConstraint(
            "(kind = 'label' AND post_id IS NOT NULL AND label IS NOT NULL AND alert_id IS NULL AND decision IS NULL)"
            " OR (kind = 'alert' AND alert_id IS NOT NULL AND decision IN ('event', 'false_alarm')"
            " AND post_id IS NULL AND label IS NULL)",
            name="what"),
    )
