from typer.testing import CliRunner

from monitor.cli import app


def test_help_lists_the_command_groups():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("db", "services", "config"):
        assert command in result.output


def test_config_reference_prints_every_variable():
    result = CliRunner().invoke(app, ["config", "reference"])
    assert result.exit_code == 0
    assert "MONITOR_DATABASE__URL" in result.output and "MONITOR_KAFKA__BOOTSTRAP_SERVERS" in result.output


def test_a_usage_error_is_a_short_message_not_a_traceback():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "monitor.cli", "replay", "--topic", "t", "--from", "junk"],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "Missing option" in result.stderr


def test_the_worker_supervisor_gives_up_on_a_configuration_error_instead_of_restarting_forever(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    env.update({"MONITOR_DATA_DIR": str(tmp_path), "MONITOR_METRICS__PORT": "0"})  # and no model configured
    result = subprocess.run([sys.executable, "-m", "monitor.cli", "worker", "--role", "persist"], env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 78  # EX_CONFIG, passed on from the role process
    assert "no trained model configured" in result.stderr
    assert "cannot start with this configuration" in result.stdout


def _monitor(args: list[str], tmp_path):  # noqa: ANN001, ANN202
    """``monitor ARGS`` through its console entry point, with no MONITOR_* setting but a data folder and database."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}
    env.update({"MONITOR_DATA_DIR": str(tmp_path), "MONITOR_DATABASE__URL": f"sqlite:///{tmp_path / 'm.db'}"})
    return subprocess.run([sys.executable, "-m", "monitor.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def _one_error_line(result) -> str:  # noqa: ANN001
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_replaying_into_the_live_run_is_one_line_before_any_model_loads(tmp_path):
    result = _monitor(["replay", "--from", "2030-01-01T00:00:00Z", "--to", "2030-01-02T00:00:00Z", "--run", "live"],
                      tmp_path)
    assert "'live' is the live pipeline's run name" in _one_error_line(result)


def test_an_unknown_ablation_variant_is_one_line(tmp_path):
    import pytest

    from monitor.training.wordnet import DEFAULT_PATH

    if not DEFAULT_PATH.is_dir():
        pytest.skip(f"WordNet is not installed in {DEFAULT_PATH} (the ablation builds its synonym source first)")
    data = tmp_path / "data.tsv"
    data.write_text("text\tlabel\n")
    result = _monitor(["evaluate", "druglib_adverse", str(data), "--ablation", "--variants", "tfidf_lr,bogus",
                       "--encoder", str(tmp_path), "--out", str(tmp_path / "out")], tmp_path)
    line = _one_error_line(result)
    assert "unknown ablation variants: ['bogus']" in line and "tfidf_lr" in line
    assert not (tmp_path / "out").exists()


def test_privacy_erase_removes_an_authors_posts_through_the_keyed_hash(tmp_path):
    """The CLI on a real SQLite database: the author is found by the same keyed hash the pipeline stored."""
    from datetime import UTC, datetime

    from sqlalchemy import select

    from monitor.config import DatabaseSettings
    from monitor.privacy import load_author_key
    from monitor.records import Post
    from monitor.storage import migrations, repository
    from monitor.storage.session import create_db_engine, make_sessionmaker, transaction
    from monitor.storage.tables import Post as PostRow

    database = DatabaseSettings(url=f"sqlite:///{tmp_path / 'm.db'}")
    migrations.upgrade(database)
    factory = make_sessionmaker(create_db_engine(database))
    key = load_author_key(None, tmp_path / "author.key")  # the key the CLI will load from the data folder
    at = datetime(2026, 1, 1, tzinfo=UTC)
    with transaction(factory) as session:
        repository.upsert_posts(session, [Post(id=f"p{i}", text="t", created_at=at, source="bluesky",
                                               author="did:plc:alice" if i < 2 else "did:plc:bob") for i in range(3)],
                                author_key=key)
    result = _monitor(["privacy", "erase", "--source", "bluesky", "--author", "did:plc:alice"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2 posts removed" in " ".join(result.stdout.split())
    with transaction(factory) as session:
        assert session.execute(select(PostRow.source_id)).scalars().all() == ["p2"]
    assert "give either --author or --post" in _one_error_line(_monitor(["privacy", "erase", "--source", "x"],
                                                                        tmp_path))
