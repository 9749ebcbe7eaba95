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
