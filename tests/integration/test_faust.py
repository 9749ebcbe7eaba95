"""A Faust worker built by ``stream_jobs.app.create_app`` consumes and produces on the real broker."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from kafka import KafkaProducer

from monitor.kafka import broker
from monitor.config import KafkaSettings
from monitor.kafka.topology import TopicSpec



def test_faust_worker_round_trip(kafka: KafkaSettings, tmp_path: Path, echo_worker):
    tag = uuid.uuid4().hex[:10]
    topic_in, topic_out = f"test.{tag}.in", f"test.{tag}.out"
    broker.ensure_topics(kafka, [TopicSpec(topic_in, 2, 1), TopicSpec(topic_out, 2, 1)])

    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
    for i in range(25):  # before the worker starts: read from the earliest offset
        producer.send(topic_in, key=f"k{i}".encode(), value=f"v{i}".encode())
    producer.flush()

    env = {**os.environ, "ECHO_APP_ID": f"echo-{tag}", "ECHO_IN": topic_in, "ECHO_OUT": topic_out,
           "MONITOR_DATA_DIR": str(tmp_path)}
    worker = echo_worker(env)
    for i in range(25, 50):  # while it runs
        producer.send(topic_in, key=f"k{i}".encode(), value=f"v{i}".encode())
    producer.flush()
    producer.close()
    received = worker.received(topic_out, 50, bootstrap=kafka.bootstrap_servers)
    assert received == {f"k{i}".encode(): f"echo:v{i}".encode() for i in range(50)}
