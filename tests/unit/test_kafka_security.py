"""Kafka TLS/SASL settings -> kafka-python options and Faust credentials; secrets stay out of dumps."""

import shutil
import ssl
import subprocess

import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from pydantic import ValidationError

from monitor.config import describe_validation_error
from monitor.config import KafkaSettings, Settings
from monitor.errors import ConfigError
from monitor.kafka.security import client_options, describe
from stream_jobs.app import create_app
from stream_jobs.security import broker_credentials, ssl_context

PASSWORD = "s3cret-Sasl-pw"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A self-signed certificate and its key (PEM), standing in for a CA and a client certificate."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make a test certificate (Debian: apt-get install openssl)")
    folder = tmp_path_factory.mktemp("pki")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=kafka.test",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def test_plaintext_is_the_default_and_adds_nothing():
    settings = KafkaSettings()
    assert client_options(settings) == {"security_protocol": "PLAINTEXT"}
    assert broker_credentials(settings) is None
    assert describe(settings) == "PLAINTEXT"


def test_sasl_ssl_scram_maps_to_kafka_python_options(pki):
    cert, key = pki
    settings = KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512", sasl_username="monitor",
                             sasl_password=PASSWORD, ssl_cafile=cert, ssl_certfile=cert, ssl_keyfile=key)
    assert client_options(settings) == {
        "security_protocol": "SASL_SSL",
        "ssl_check_hostname": True,
        "ssl_cafile": str(cert),
        "ssl_certfile": str(cert),
        "ssl_keyfile": str(key),
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "monitor",
        "sasl_plain_password": PASSWORD,
    }
    assert PASSWORD not in describe(settings) and "SCRAM-SHA-512 as monitor" in describe(settings)


@pytest.mark.parametrize("client", [KafkaProducer, KafkaConsumer, KafkaAdminClient])
def test_every_option_is_one_each_kafka_python_client_takes(client, pki):
    cert, key = pki
    settings = KafkaSettings(security_protocol="SASL_SSL", sasl_username="u", sasl_password="p", ssl_cafile=cert,
                             ssl_certfile=cert, ssl_keyfile=key, ssl_key_password="k")
    assert set(client_options(settings)) <= set(client.DEFAULT_CONFIG)


def test_ssl_without_sasl(pki):
    cert, _ = pki
    settings = KafkaSettings(security_protocol="SSL", ssl_cafile=cert, ssl_check_hostname=False)
    options = client_options(settings)
    assert options == {"security_protocol": "SSL", "ssl_check_hostname": False, "ssl_cafile": str(cert)}
    credentials = broker_credentials(settings)
    auth = credentials_to_aiokafka_auth(credentials)
    assert auth["security_protocol"] == "SSL"
    assert auth["ssl_context"].check_hostname is False
    assert auth["ssl_context"].verify_mode == ssl.CERT_REQUIRED


def test_faust_gets_sasl_ssl_with_a_verifying_context(pki):
    cert, key = pki
    settings = KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-256", sasl_username="monitor",
                             sasl_password=PASSWORD, ssl_cafile=cert, ssl_certfile=cert, ssl_keyfile=key)
    auth = credentials_to_aiokafka_auth(broker_credentials(settings))
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == "SCRAM-SHA-256"
    assert (auth["sasl_plain_username"], auth["sasl_plain_password"]) == ("monitor", PASSWORD)
    context = auth["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert PASSWORD not in repr(broker_credentials(settings))


def test_faust_sasl_without_tls_is_sasl_plaintext():
    settings = KafkaSettings(security_protocol="SASL_PLAINTEXT", sasl_username="u", sasl_password=PASSWORD)
    auth = credentials_to_aiokafka_auth(broker_credentials(settings))
    assert auth["security_protocol"] == "SASL_PLAINTEXT"
    assert auth["sasl_mechanism"] == "PLAIN"
    assert auth["ssl_context"] is None


def test_no_cafile_means_the_system_trust_store():
    context = ssl_context(KafkaSettings(security_protocol="SSL"))
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.cert_store_stats()["x509_ca"] > 0, "the system CA certificates were not loaded"


def test_an_unreadable_certificate_is_a_config_error(tmp_path):
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="MONITOR_KAFKA__SSL_CAFILE"):
        ssl_context(KafkaSettings(security_protocol="SSL", ssl_cafile=bad))


def test_the_app_is_built_with_the_credentials(tmp_path, monkeypatch):
    monkeypatch.setenv("MONITOR_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MONITOR_KAFKA__SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("MONITOR_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("MONITOR_KAFKA__SASL_USERNAME", "monitor")
    monkeypatch.setenv("MONITOR_KAFKA__SASL_PASSWORD", PASSWORD)
    app = create_app(Settings(_env_file=None))
    assert app.conf.broker_credentials.mechanism.value == "SCRAM-SHA-512"
    assert app.conf.broker_credentials.username == "monitor"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"security_protocol": "SASL_SSL", "sasl_username": "u"}, "needs sasl_username and sasl_password"),
        ({"security_protocol": "SASL_SSL", "sasl_username": "u", "sasl_password": ""}, "needs sasl_username"),
        ({"sasl_username": "u", "sasl_password": "p"}, "security_protocol is PLAINTEXT"),
        ({"security_protocol": "SASL_PLAINTEXT", "sasl_username": "u", "sasl_password": "p", "ssl_check_hostname": True,
          "ssl_key_password": "k"}, "use SSL or SASL_SSL"),
        ({"security_protocol": "SASL_SSL", "sasl_mechanism": "GSSAPI", "sasl_username": "u", "sasl_password": "p"},
         "PLAIN"),
        ({"security_protocol": "TLS"}, "PLAINTEXT"),
    ],
)
def test_settings_that_would_be_ignored_are_refused(fields, message):
    with pytest.raises(ValidationError, match=message):
        KafkaSettings(**fields)


def test_tls_files_must_exist_and_go_together(tmp_path, pki):
    cert, _ = pki
    with pytest.raises(ValidationError, match="ssl_cafile"):
        KafkaSettings(security_protocol="SSL", ssl_cafile=tmp_path / "missing.pem")
    with pytest.raises(ValidationError, match="go together"):
        KafkaSettings(security_protocol="SSL", ssl_certfile=cert)
    with pytest.raises(ValidationError, match="use SSL or SASL_SSL"):
        KafkaSettings(ssl_cafile=cert)


def test_a_bad_security_setting_names_its_variable(monkeypatch):
    monkeypatch.setenv("MONITOR_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None)
    assert describe_validation_error(info.value).startswith("invalid setting MONITOR_KAFKA")


def test_secrets_never_print(monkeypatch):
    monkeypatch.setenv("MONITOR_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("MONITOR_KAFKA__SASL_USERNAME", "monitor")
    monkeypatch.setenv("MONITOR_KAFKA__SASL_PASSWORD", PASSWORD)
    monkeypatch.setenv("MONITOR_DATABASE__URL", "postgresql+psycopg://monitor:url-pw-123@db.example:5432/monitor")
    monkeypatch.setenv("MONITOR_DATABASE__PASSWORD", "db-pw-456")
    monkeypatch.setenv("MONITOR_PRIVACY__AUTHOR_KEY", "author-key-789")
    settings = Settings(_env_file=None)
    for text in (str(settings.model_dump(mode="json")), settings.model_dump_json(), repr(settings), str(settings)):
        for secret in (PASSWORD, "url-pw-123", "db-pw-456", "author-key-789"):
            assert secret not in text
    masked = settings.model_dump(mode="json")["database"]["url"]
    assert masked == "postgresql+psycopg://monitor:***@db.example:5432/monitor"
