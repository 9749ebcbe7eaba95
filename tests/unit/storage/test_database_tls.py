"""PostgreSQL TLS and password settings reach libpq; they are refused where they would be ignored."""

import pytest
from pydantic import ValidationError

from monitor.config import DatabaseSettings
from monitor.storage.session import create_db_engine, libpq_tls_args

URL = "postgresql+psycopg://monitor@db.example:5432/monitor"


def _connect_params(settings: DatabaseSettings) -> dict:
    """What psycopg would be called with (no connection is made)."""
    engine = create_db_engine(settings)
    _, params = engine.dialect.create_connect_args(engine.url)
    return params


def test_password_from_its_own_setting_replaces_the_urls():
    params = _connect_params(DatabaseSettings(url=URL.replace("monitor@", "monitor:old@"), password="from-secret"))
    assert params["password"] == "from-secret"


def test_tls_settings_become_libpq_parameters(tmp_path):
    ca, cert, key = (tmp_path / name for name in ("ca.pem", "client.pem", "client.key"))
    for path in (ca, cert, key):
        path.write_text("pem\n")
    settings = DatabaseSettings(url=URL, sslmode="verify-full", sslrootcert=str(ca), sslcert=cert, sslkey=key)
    assert libpq_tls_args(settings) == {"sslmode": "verify-full", "sslrootcert": str(ca), "sslcert": str(cert),
                                        "sslkey": str(key)}
    engine = create_db_engine(settings)
    assert engine.dialect.create_connect_args(engine.url)  # the URL itself is untouched by TLS settings
    assert libpq_tls_args(DatabaseSettings(url=URL)) == {}


def test_system_trust_store_is_allowed_and_a_missing_ca_is_not(tmp_path):
    assert DatabaseSettings(url=URL, sslmode="verify-full", sslrootcert="system").sslrootcert == "system"
    with pytest.raises(ValidationError, match="not a file"):
        DatabaseSettings(url=URL, sslrootcert=str(tmp_path / "missing.pem"))


@pytest.mark.parametrize("fields", [{"password": "x"}, {"sslmode": "require"}])
def test_postgres_only_settings_are_refused_for_sqlite(tmp_path, fields):
    with pytest.raises(ValidationError, match="PostgreSQL only"):
        DatabaseSettings(url=f"sqlite:///{tmp_path / 'm.db'}", **fields)


def test_client_certificate_needs_its_key(tmp_path):
    cert = tmp_path / "client.pem"
    cert.write_text("pem\n")
    with pytest.raises(ValidationError, match="go together"):
        DatabaseSettings(url=URL, sslcert=cert)


def test_unknown_sslmode_is_refused():
    with pytest.raises(ValidationError):
        DatabaseSettings(url=URL, sslmode="on")


def test_printed_settings_hide_the_urls_password():
    settings = DatabaseSettings(url="postgresql+psycopg://monitor:hunter2@db.example:5432/monitor")
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert "hunter2" not in text and "monitor:***@db.example" in text
    assert settings.url.endswith("hunter2@db.example:5432/monitor")  # connecting still uses it
