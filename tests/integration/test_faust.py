"""A Faust worker built by ``stream_jobs.app.create_app`` consumes and produces on the real broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer

from monitor import broker
from monitor.config import KafkaSettings
from monitor.topology import TopicSpec

ECHO = Path(__file__).with_name("faust_echo.py")


def test_faust_worker_round_trip(kafka: KafkaSettings, tmp_path: Path):
    tag = uuid.uuid4().hex[:10]
    topic_in, topic_out = f"test.{tag}.in", f"test.{tag}.out"
    broker.ensure_topics(kafka, [TopicSpec(topic_in, 2, 1), TopicSpec(topic_out, 2, 1)])

    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    for i in range(25):  # before the worker starts: read from the earliest offset
        producer.send(topic_in, key=f"k{i}".encode(), value=f"v{i}".encode())
    producer.flush()

    env = {**os.environ, "ECHO_APP_ID": f"echo-{tag}", "ECHO_IN": topic_in, "ECHO_OUT": topic_out,
           "MONITOR_DATA_DIR": str(tmp_path)}
    log = open(tmp_path / "worker.log", "wb")
    worker = subprocess.Popen([sys.executable, str(ECHO), "worker", "-l", "warn"], env=env, stdout=log,
                              stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        for i in range(25, 50):  # while it runs
            producer.send(topic_in, key=f"k{i}".encode(), value=f"v{i}".encode())
        producer.flush()
        producer.close()

        consumer = KafkaConsumer(topic_out, bootstrap_servers=kafka.bootstrap_servers,
                                 auto_offset_reset="earliest", group_id=None)
        received: dict[bytes, bytes] = {}
        deadline = time.monotonic() + 120
        while len(received) < 50 and time.monotonic() < deadline and worker.poll() is None:
            for records in consumer.poll(timeout_ms=500).values():
                received.update((r.key, r.value) for r in records)
        consumer.close()
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-2000:]
        assert received == {f"k{i}".encode(): f"echo:v{i}".encode() for i in range(50)}
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()
