"""A single-node Apache Kafka (KRaft broker+controller) on 127.0.0.1, from jars resolved with mvn.

The jars go to a cache folder outside the repository and are re-used; the log directory is
persistent, so topics and committed offsets survive a restart. Broker auto-creation of topics is
off: the project creates its own topics with explicit partitions and retention.
"""

from __future__ import annotations

import base64
import shutil
import tempfile
import uuid
from pathlib import Path

from monitor.config import KafkaSettings, ServicesSettings, parse_bootstrap
from monitor.errors import ServiceError
from monitor.services import process

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}

# slf4j 1.7 (what Kafka 4.1 logs through) needs a binding, or the broker writes no log at all.
_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.health-monitor</groupId>
  <artifactId>kafka-broker-jars</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_{scala}</artifactId>
      <version>{version}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>2.24.3</version>
    </dependency>
  </dependencies>
</project>
"""

_LOG4J = """status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = out
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.controller.name = kafka.controller
logger.controller.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
"""


def kafka_uuid() -> str:
    """A cluster id in Kafka's format: 16 random bytes, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


def server_properties(*, host: str, port: int, controller_port: int, log_dir: Path) -> str:
    """The broker+controller configuration of a one-node KRaft cluster."""
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@{host}:{controller_port}",
            f"listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}",
            f"advertised.listeners=PLAINTEXT://{host}:{port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={log_dir}",
            "auto.create.topics.enable=false",
            "num.partitions=1",
            "default.replication.factor=1",
            "offsets.topic.replication.factor=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            # A single consumer should not wait 3 s for peers that will never come.
            "group.initial.rebalance.delay.ms=0",
            "log.retention.check.interval.ms=300000",
            "",
        ]
    )


class LocalKafka:
    """Resolve, format, start, stop and report on the local broker."""

    def __init__(self, services: ServicesSettings, kafka: KafkaSettings, *, data_dir: Path, cache_dir: Path):
        self.services = services
        (self.host, self.port), *rest = parse_bootstrap(kafka.bootstrap_servers)
        if rest or self.host not in _LOOPBACK:
            raise ServiceError(
                f"kafka.bootstrap_servers is {kafka.bootstrap_servers}, not one address on this machine: "
                "to use that broker as it is, set MONITOR_SERVICES__MANAGE_KAFKA=false"
            )
        self.host = "127.0.0.1" if self.host == "localhost" else self.host
        self.state_dir = data_dir / "services" / "kafka"
        self.log_dir = self.state_dir / "data"
        self.properties = self.state_dir / "server.properties"
        self.log4j = self.state_dir / "log4j2.properties"
        self.pid_file = self.state_dir / "kafka.pid"
        self.log_file = self.state_dir / "kafka.log"
        self.cache_dir = cache_dir / "kafka" / f"kafka_{services.scala_version}-{services.kafka_version}"

    # -- the jars ---------------------------------------------------------------------------

    def libs(self) -> Path:
        """The folder of broker jars: an unpacked distribution if configured, else the mvn cache."""
        if self.services.kafka_home is not None:
            libs = self.services.kafka_home / "libs"
            if not any(libs.glob("kafka_*.jar")):
                raise ServiceError(f"MONITOR_SERVICES__KAFKA_HOME={self.services.kafka_home} has no libs/kafka_*.jar")
            return libs
        libs = self.cache_dir / "libs"
        if not any(libs.glob("kafka_*.jar")):
            self._resolve_with_maven(libs)
        return libs

    def _resolve_with_maven(self, libs: Path) -> None:
        mvn = shutil.which("mvn")
        if mvn is None:
            process.apt_install(
                ["maven"],
                "Maven is needed to resolve the Kafka broker jars from Maven Central "
                "(or set MONITOR_SERVICES__KAFKA_HOME to an unpacked Apache Kafka distribution)",
            )
            mvn = shutil.which("mvn") or "mvn"
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.cache_dir) as tmp:
            pom = Path(tmp) / "pom.xml"
            pom.write_text(_POM.format(scala=self.services.scala_version, version=self.services.kafka_version))
            staging = Path(tmp) / "libs"
            process.run(
                [mvn, "-B", "-q", "-f", str(pom), "dependency:copy-dependencies",
                 f"-DoutputDirectory={staging}", "-DincludeScope=runtime"],
                what=f"resolving Apache Kafka {self.services.kafka_version} jars with mvn",
                timeout_s=900,
            )
            if libs.exists():
                shutil.rmtree(libs)
            staging.rename(libs)  # atomic: a half-resolved folder is never taken for a good one

    # -- the process ------------------------------------------------------------------------

    def _java(self) -> str:
        java = shutil.which("java")
        if java is None:
            process.apt_install(["openjdk-17-jre-headless"], "Java 17+ is needed to run the Kafka broker")
            java = shutil.which("java") or "java"
        return java

    def _classpath(self) -> str:
        return f"{self.libs()}/*"

    def _format_once(self, java: str) -> None:
        if (self.log_dir / "meta.properties").exists():
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        process.run(
            [java, "-cp", self._classpath(), f"-Dlog4j2.configurationFile={self.log4j}",
             "kafka.tools.StorageTool", "format", "-t", kafka_uuid(), "-c", str(self.properties)],
            what="formatting the Kafka log directory",
            timeout_s=120,
        )

    def pid(self) -> int | None:
        pid = process.read_pid(self.pid_file)
        return pid if pid is not None and process.is_alive(pid, str(self.properties)) else None

    def start(self) -> str:
        """Start the broker unless ours already runs; return what was done."""
        if (pid := self.pid()) is not None:
            return f"already running (pid {pid})"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        java = self._java()
        self.properties.write_text(
            server_properties(host=self.host, port=self.port,
                              controller_port=self.services.kafka_controller_port, log_dir=self.log_dir)
        )
        self.log4j.write_text(_LOG4J)
        self._format_once(java)
        cmd = [
            java, f"-Xmx{self.services.kafka_heap}", f"-Xms{self.services.kafka_heap}",
            "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.log4j}",
            "-cp", self._classpath(), "kafka.Kafka", str(self.properties),
        ]
        pid = process.spawn(cmd, self.log_file, self.pid_file)
        return f"started (pid {pid}), log {self.log_file}"

    def ensure_started(self, probe) -> str:  # noqa: ANN001 - a no-argument callable that raises until healthy
        """Start (if needed) and wait until ``probe`` succeeds, failing early if the JVM dies."""
        message = self.start()

        def healthy() -> bool:
            if self.pid() is None:
                tail = self.log_file.read_text(errors="replace").strip().splitlines()[-5:] if self.log_file.exists() else []
                raise ServiceError(f"the Kafka broker exited; last log lines: {' | '.join(tail)}")
            probe()
            return True

        process.wait_until(healthy, self.services.start_timeout_s, f"Kafka at {self.host}:{self.port}")
        return message

    def stop(self) -> str:
        pid = process.read_pid(self.pid_file)
        if pid is None or not process.is_alive(pid, str(self.properties)):
            self.pid_file.unlink(missing_ok=True)
            return "not running"
        process.terminate(pid, str(self.properties), timeout_s=60)
        self.pid_file.unlink(missing_ok=True)
        return f"stopped (pid {pid})"

    def status(self) -> process.Status:
        pid = self.pid()
        where = f"{self.host}:{self.port}, log dir {self.log_dir}"
        return process.Status("kafka", pid is not None, pid, where)
