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
