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
