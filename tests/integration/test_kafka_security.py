"""Kafka over SASL_SSL with SCRAM-SHA-512: the CLI's kafka-python clients and a Faust worker, end to end.

A second, throw-away broker (the project's Kafka jars, KRaft, free loopback ports) listens with TLS
(a self-signed certificate for localhost, verified by the clients as their CA) and SCRAM
authentication; a wrong password or an untrusted certificate must fail the way a user sees it.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer

from monitor.kafka import broker
from monitor.config import KafkaSettings, Settings
from monitor.errors import BrokerError
from monitor.kafka.security import client_options
from monitor.services import local
from monitor.services.process import free_port
from monitor.kafka.topology import TopicSpec

pytestmark = pytest.mark.slow

USER, PASSWORD = "monitor", "scram-" + uuid.uuid4().hex[:12]


def _self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory, settings: Settings) -> Iterator[KafkaSettings]:
    if shutil.which("openssl") is None or shutil.which("java") is None:
        pytest.fail("openssl and java are needed for the secured broker (deploy/local/setup.sh installs java)")
    folder = tmp_path_factory.mktemp("secure-kafka")
    cert, key = _self_signed(folder, "broker")
    pkcs8 = subprocess.run(["openssl", "pkcs8", "-topk8", "-nocrypt", "-in", str(key)], check=True,
                           capture_output=True, text=True).stdout
    (folder / "keystore.pem").write_text(pkcs8 + cert.read_text())  # Kafka's PEM keystore: key, then chain
    port, controller, internal = free_port(), free_port(), free_port()
    properties = folder / "server.properties"
    properties.write_text("\n".join([
        "process.roles=broker,controller", "node.id=1", f"controller.quorum.voters=1@127.0.0.1:{controller}",
        f"listeners=SASL_SSL://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller},INTERNAL://127.0.0.1:{internal}",
        f"advertised.listeners=SASL_SSL://localhost:{port},INTERNAL://127.0.0.1:{internal}",
        "controller.listener.names=CONTROLLER", "inter.broker.listener.name=INTERNAL",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT,SASL_SSL:SASL_SSL",
        "sasl.enabled.mechanisms=SCRAM-SHA-512",
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config="
        "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        "ssl.keystore.type=PEM", f"ssl.keystore.location={folder / 'keystore.pem'}",
        f"log.dirs={folder / 'data'}", "auto.create.topics.enable=false", "offsets.topic.replication.factor=1",
        "transaction.state.log.replication.factor=1", "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1", "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0", "",
    ]))
    java = shutil.which("java")
    classpath = f"{local.local_kafka(settings).libs()}/*"
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
    subprocess.run([java, "-cp", classpath, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c",
                    str(properties), "--add-scram", f"SCRAM-SHA-512=[name={USER},password={PASSWORD}]"],
                   check=True, capture_output=True, timeout=120)
    log = open(folder / "broker.log", "wb")
    process = subprocess.Popen([java, "-Xmx512m", "-cp", classpath, "kafka.Kafka", str(properties)], stdout=log,
                               stderr=subprocess.STDOUT)
    secure = KafkaSettings(bootstrap_servers=f"localhost:{port}", security_protocol="SASL_SSL",
                           sasl_mechanism="SCRAM-SHA-512", sasl_username=USER, sasl_password=PASSWORD,
                           ssl_cafile=cert, request_timeout_s=5)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                broker.describe_cluster(secure)
                break
            except BrokerError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the SASL_SSL broker did not start:\n{(folder / 'broker.log').read_text()[-3000:]}")
                time.sleep(1)
        yield secure.model_copy(update={"request_timeout_s": 30.0})
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_cli_clients_create_topics_produce_and_read_over_sasl_ssl(secure_kafka: KafkaSettings):
    topic = f"secure.{uuid.uuid4().hex[:8]}"
    reports = broker.ensure_topics(secure_kafka, [TopicSpec(topic, 2, 1)])
    assert reports[0].created
    options = client_options(secure_kafka)
    producer = KafkaProducer(bootstrap_servers=secure_kafka.bootstrap_servers, acks="all", **options)
    for i in range(10):
        producer.send(topic, key=f"k{i}".encode(), value=f"v{i}".encode())
    producer.flush()
    producer.close()
    assert sum(broker.end_offsets(secure_kafka, topic).values()) == 10
    consumer = KafkaConsumer(topic, bootstrap_servers=secure_kafka.bootstrap_servers, group_id=None,
                             auto_offset_reset="earliest", **options)
    seen: set[bytes] = set()
    deadline = time.monotonic() + 60
    while len(seen) < 10 and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            seen.update(r.value for r in records)
    consumer.close()
    assert seen == {f"v{i}".encode() for i in range(10)}


def test_faust_worker_round_trip_over_sasl_ssl(secure_kafka: KafkaSettings, tmp_path: Path, echo_worker):
    tag = uuid.uuid4().hex[:8]
    topic_in, topic_out = f"secure.{tag}.in", f"secure.{tag}.out"
    broker.ensure_topics(secure_kafka, [TopicSpec(topic_in, 2, 1), TopicSpec(topic_out, 2, 1)])
    options = client_options(secure_kafka)
    producer = KafkaProducer(bootstrap_servers=secure_kafka.bootstrap_servers, acks="all", **options)
    for i in range(20):
        producer.send(topic_in, key=f"k{i}".encode(), value=f"v{i}".encode())
    producer.flush()
    producer.close()
    env = {**os.environ, "ECHO_APP_ID": f"echo-{tag}", "ECHO_IN": topic_in, "ECHO_OUT": topic_out,
           "MONITOR_DATA_DIR": str(tmp_path), "MONITOR_KAFKA__BOOTSTRAP_SERVERS": secure_kafka.bootstrap_servers,
           "MONITOR_KAFKA__SECURITY_PROTOCOL": "SASL_SSL", "MONITOR_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
           "MONITOR_KAFKA__SASL_USERNAME": USER, "MONITOR_KAFKA__SASL_PASSWORD": PASSWORD,
           "MONITOR_KAFKA__SSL_CAFILE": str(secure_kafka.ssl_cafile)}
    worker = echo_worker(env)
    received = worker.received(topic_out, 20, bootstrap=secure_kafka.bootstrap_servers, **options)
    assert received == {f"k{i}".encode(): f"echo:v{i}".encode() for i in range(20)}


def test_a_wrong_password_is_refused(secure_kafka: KafkaSettings):
    wrong = secure_kafka.model_copy(update={"sasl_password": type(secure_kafka.sasl_password)("wrong"),
                                            "request_timeout_s": 5.0})
    with pytest.raises(BrokerError, match="SCRAM-SHA-512 as monitor"):
        broker.describe_cluster(wrong)


def test_an_untrusted_broker_certificate_is_refused(secure_kafka: KafkaSettings, tmp_path: Path):
    other_ca, _ = _self_signed(tmp_path, "other")
    untrusted = secure_kafka.model_copy(update={"ssl_cafile": other_ca, "request_timeout_s": 5.0})
    with pytest.raises(BrokerError):
        broker.describe_cluster(untrusted)
