import base64
import re

import pytest

from monitor.config import KafkaSettings, ServicesSettings
from monitor.errors import ServiceError
from monitor.services.kafka import LocalKafka, kafka_uuid, server_properties
from monitor.services.postgres import LocalPostgres, sql_literal


def test_cluster_id_is_kafka_format():
    cid = kafka_uuid()
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cid)
    assert len(base64.urlsafe_b64decode(cid + "==")) == 16


def test_server_properties_single_node_kraft_without_auto_create(tmp_path):
    props = dict(
        line.split("=", 1)
        for line in server_properties(host="127.0.0.1", port=9092, controller_port=9093, log_dir=tmp_path).splitlines()
        if line
    )
    assert props["process.roles"] == "broker,controller"
    assert props["auto.create.topics.enable"] == "false"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9093"
    assert props["log.dirs"] == str(tmp_path)
    assert props["offsets.topic.replication.factor"] == "1"


def test_managed_kafka_must_be_local(tmp_path):
    with pytest.raises(ServiceError, match="MANAGE_KAFKA=false"):
        LocalKafka(ServicesSettings(), KafkaSettings(bootstrap_servers="kafka.example:9092"),
                   data_dir=tmp_path, cache_dir=tmp_path)


def test_kafka_home_without_jars_is_a_clear_error(tmp_path):
    kafka = LocalKafka(ServicesSettings(kafka_home=tmp_path), KafkaSettings(), data_dir=tmp_path, cache_dir=tmp_path)
    with pytest.raises(ServiceError, match="no libs/kafka_"):
        kafka.libs()


def test_managed_postgres_must_be_local(tmp_path):
    services = ServicesSettings(postgres_url="postgresql+psycopg://m:p@db.example:5432/m")
    with pytest.raises(ServiceError, match="MANAGE_POSTGRES=false"):
        LocalPostgres(services, data_dir=tmp_path)


def test_sql_literal_escapes_quotes():
    assert sql_literal("it's") == "'it''s'"
    with pytest.raises(ServiceError):
        sql_literal("a\0b")
