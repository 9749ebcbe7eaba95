"""Settings: defaults, env overrides, validation errors a person can read."""

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from monitor.config import describe_validation_error
from monitor.config import Settings, check_database_url, parse_bootstrap, settings_reference, settings_table_markdown

README = Path(__file__).resolve().parents[2] / "README.md"


def test_defaults_are_a_working_one_machine_setup():
    s = Settings(_env_file=None)
    assert s.database.url.startswith("sqlite:///")
    assert s.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert s.services.manage_kafka and s.services.manage_postgres
    assert len(set(s.topics.all().values())) == 8  # six stages, erasures, source positions


def test_nested_env_overrides(monkeypatch):
    monkeypatch.setenv("MONITOR_KAFKA__PARTITIONS", "12")
    monkeypatch.setenv("MONITOR_DATABASE__URL", "postgresql+psycopg://u:p@db.example:5432/m")
    monkeypatch.setenv("MONITOR_TOPICS__POSTS", "tweets.incoming")
    monkeypatch.setenv("MONITOR_EXPLAINER__CONFIDENCE_THRESHOLD", "0.55")
    s = Settings(_env_file=None)
    assert s.kafka.partitions == 12
    assert s.database.url.endswith("/m")
    assert s.topics.posts == "tweets.incoming"
    assert s.explainer.confidence_threshold == 0.55


def test_dotenv_file_is_read(tmp_path, monkeypatch):
    env = tmp_path / ".env"
    env.write_text("MONITOR_METRICS__PORT=9999\n")
    assert Settings(_env_file=env).metrics.port == 9999


def test_settings_are_frozen():
    s = Settings(_env_file=None)
    with pytest.raises(ValidationError):
        s.kafka.partitions = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    "url",
    ["nope", "mysql://u@h/db", "postgresql+psycopg://u:p@h:99999/db", "postgresql+psycopg://u:p@h:5432", "sqlite://x.db"],
)
def test_bad_database_urls_are_refused(url):
    with pytest.raises(ValueError):
        check_database_url(url)


@pytest.mark.parametrize("url", ["sqlite:///x.db", "sqlite:////abs/x.db", "postgresql+psycopg://u:p@127.0.0.1:5432/db"])
def test_good_database_urls_pass(url):
    assert check_database_url(url) == url


def test_bootstrap_parsing():
    assert parse_bootstrap("a:1, b.example:9092") == [("a", 1), ("b.example", 9092)]
    for bad in ("nohost", "a:0", "a:70000", "a:1,,b:2"):
        with pytest.raises(ValueError):
            parse_bootstrap(bad)


def test_validation_error_names_the_env_var(monkeypatch):
    monkeypatch.setenv("MONITOR_DATABASE__URL", "nope")
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None)
    message = describe_validation_error(info.value)
    assert message.startswith("invalid setting MONITOR_DATABASE__URL:")
    assert "\n" not in message


def test_postgres_url_role_must_be_an_identifier(monkeypatch):
    monkeypatch.setenv("MONITOR_SERVICES__POSTGRES_URL", 'postgresql+psycopg://x";drop:p@127.0.0.1:5432/db')
    with pytest.raises(ValidationError):
        Settings(_env_file=None)


def test_cli_bad_url_is_one_clear_line_not_a_traceback(tmp_path):
    env = {"MONITOR_DATABASE__URL": "postgres//broken", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "monitor.cli", "db", "current"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "MONITOR_DATABASE__URL" in lines[0]


def test_every_setting_is_documented_and_readme_table_is_current():
    rows = settings_reference()
    assert all(desc for _, _, desc in rows), [var for var, _, desc in rows if not desc]
    assert settings_table_markdown() in README.read_text(), "README's settings table is stale: run `monitor config reference`"


def test_secrets_are_masked_in_dumps():
    dumped = Settings(_env_file=None).model_dump(mode="json")
    assert "monitor:monitor@" not in str(dumped)


def test_sqlite_default_follows_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MONITOR_DATA_DIR", str(tmp_path))
    assert Settings(_env_file=None).database.url == f"sqlite:///{tmp_path / 'monitor.db'}"
    monkeypatch.setenv("MONITOR_DATABASE__ECHO", "true")
    s = Settings(_env_file=None)
    assert s.database.echo and s.database.url.endswith("monitor.db")
