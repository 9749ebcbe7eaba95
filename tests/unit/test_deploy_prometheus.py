"""The shipped Prometheus and Alertmanager configuration: promtool/amtool checks, the rules' unit
tests, and that every alert is one of two kinds and reads only series the code exports.

promtool and amtool come from Debian's prometheus and prometheus-alertmanager packages, which
deploy/local/setup.sh installs: a missing binary fails these tests, it does not skip them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from monitor.errors import ServiceError
from monitor.services.prometheus import prometheus_config, promql_metric_names, start_prometheus
from monitor.telemetry import METRIC_NAMES

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULE_FILES = sorted((DEPLOY / "rules").glob("*.yml"))
RULE_TESTS = sorted((DEPLOY / "tests").glob("*_test.yml"))
# Series Prometheus itself writes, which rules and dashboards may read besides the exported ones.
PROMETHEUS_SERIES = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE"})
KINDS = {"system", "health_signal"}
SEVERITIES = {"critical", "warning", "info"}


def tool(name: str) -> str:
    found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").is_file() else None)
    if found is None:
        package = "prometheus-alertmanager" if name == "amtool" else "prometheus"
        pytest.fail(f"{name} not found: install Debian's {package} package (bash deploy/local/setup.sh does)")
    return found


def run_tool(*args: str, cwd: Path = DEPLOY) -> str:
    done = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(args)} failed (exit {done.returncode}):\n{output}"
    return output


def rule_groups() -> list[dict]:
    return [group for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]]


def alert_rules() -> list[dict]:
    return [rule for group in rule_groups() for rule in group["rules"] if "alert" in rule]


def recorded_names() -> set[str]:
    return {rule["record"] for group in rule_groups() for rule in group["rules"] if "record" in rule}


# -- promtool / amtool ------------------------------------------------------------------------------

def test_prometheus_config_and_its_rules_pass_promtool_check_config():
    out = run_tool(tool("promtool"), "check", "config", "prometheus.yml")
    assert "SUCCESS: 3 rule files found" in out


def test_multi_machine_targets_example_passes_promtool(tmp_path):
    copy = tmp_path / "prometheus"
    shutil.copytree(DEPLOY, copy)
    (copy / "targets" / "local.yml").unlink()
    shutil.copy(copy / "targets" / "roles.yml.example", copy / "targets" / "roles.yml")
    run_tool(tool("promtool"), "check", "config", "prometheus.yml", cwd=copy)


def test_promtool_check_config_reads_the_target_files(tmp_path):
    copy = tmp_path / "prometheus"
    shutil.copytree(DEPLOY, copy)
    (copy / "targets" / "bad.yml").write_text('- targets: ["w:9108"]\n  labels: {"not a label": x}\n')
    done = subprocess.run([tool("promtool"), "check", "config", "prometheus.yml"], cwd=copy,
                          capture_output=True, text=True, check=False)
    assert done.returncode != 0, "a broken file_sd target file must fail the check this suite relies on"


def test_rule_files_pass_promtool_check_rules():
    out = run_tool(tool("promtool"), "check", "rules", *(str(p.relative_to(DEPLOY)) for p in RULE_FILES))
    assert out.count("SUCCESS") == len(RULE_FILES)


def test_rule_unit_tests_pass_promtool_test_rules():
    out = run_tool(tool("promtool"), "test", "rules", *(str(p.relative_to(DEPLOY)) for p in RULE_TESTS))
    assert out.count("SUCCESS") == len(RULE_TESTS)


def test_alertmanager_config_passes_amtool_check_config():
    out = run_tool(tool("amtool"), "check-config", "alertmanager.yml")
    assert "SUCCESS" in out


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=HealthSignalSpike", "kind=health_signal", "severity=warning", "task=druglib_adverse"],
         "public-health"),
        (["alertname=MonitorWorkerDown", "kind=system", "severity=critical", "role=explain"], "on-call"),
        (["alertname=MonitorConsumerLagGrowing", "kind=system", "severity=warning"], "on-call"),
        # A system alert that mentions a task still goes to on-call, never to public health.
        (["alertname=MonitorLabelShareDrift", "kind=system", "severity=warning", "task=druglib_adverse"], "on-call"),
        (["alertname=SomethingWithoutKind"], "on-call"),
    ],
)
def test_alertmanager_routes_each_kind_to_its_own_receiver(labels, receiver):
    out = run_tool(tool("amtool"), "config", "routes", "test", "--config.file=alertmanager.yml",
                   f"--verify.receivers={receiver}", *labels)
    assert out.split("\n", 1)[0].strip() == receiver


# -- what the rules say ------------------------------------------------------------------------------

def test_the_spec_alerts_exist():
    names = {rule["alert"] for rule in alert_rules()}
    assert {
        "MonitorWorkerDown", "MonitorTargetsMissing", "MonitorConsumerLagGrowing", "MonitorDeadLettersHigh",
        "MonitorErrorRateHigh", "MonitorExplainerOverBudget", "MonitorLabelShareDrift",
        "MonitorConfidenceDropping", "HealthSignalSpike",
    } <= names
    assert len(names) == len(alert_rules()), "alert names must be unique"


def test_every_alert_has_a_kind_a_severity_and_a_runbook():
    for rule in alert_rules():
        labels, annotations = rule.get("labels", {}), rule.get("annotations", {})
        assert labels.get("kind") in KINDS, f"{rule['alert']}: kind must be one of {KINDS}"
        assert labels.get("severity") in SEVERITIES, f"{rule['alert']}: severity must be one of {SEVERITIES}"
        for key in ("summary", "description", "runbook"):
            assert annotations.get(key), f"{rule['alert']}: no {key} annotation"


def test_only_the_spike_rule_is_a_health_signal_and_it_lives_in_its_own_file():
    by_kind = {rule["alert"]: rule["labels"]["kind"] for rule in alert_rules()}
    assert [a for a, k in by_kind.items() if k == "health_signal"] == ["HealthSignalSpike"]
    spike_file = yaml.safe_load((DEPLOY / "rules" / "health_signals.yml").read_text())
    assert all(rule["labels"]["kind"] == "health_signal" for g in spike_file["groups"] for rule in g["rules"])
    system_file = yaml.safe_load((DEPLOY / "rules" / "system.yml").read_text())
    assert all(rule["labels"]["kind"] == "system" for g in system_file["groups"] for rule in g["rules"])


def test_the_spike_alert_carries_task_bucket_observed_expected_and_the_evidence_command():
    (spike,) = [rule for rule in alert_rules() if rule["alert"] == "HealthSignalSpike"]
    annotations = spike["annotations"]
    for key in ("task", "bucket", "observed", "expected", "evidence"):
        assert key in annotations, key
    assert annotations["evidence"].startswith("monitor signals --task {{ $labels.task }}")
    assert "monitor_signal_observed" in annotations["observed"]
    assert "monitor_signal_expected" in annotations["expected"]


def test_the_evidence_command_uses_options_monitor_signals_has():
    import typer

    from monitor.cli import app

    (spike,) = [rule for rule in alert_rules() if rule["alert"] == "HealthSignalSpike"]
    words = re.sub(r"\{\{[^}]*\}\}", "VALUE", spike["annotations"]["evidence"]).split()
    assert words[:2] == ["monitor", "signals"]
    signals = typer.main.get_command(app).commands["signals"]
    options = {opt for param in signals.params for opt in (*param.opts, *param.secondary_opts)}
    assert {w for w in words if w.startswith("-")} <= options, f"monitor signals has no {set(words) - options}"


def test_alert_labels_do_not_clobber_labels_of_the_series_they_read():
    """A rule label overwrites a series label of the same name (monitor_errors_total has `kind`)."""
    for rule in alert_rules():
        kept = set(re.findall(r"\$labels\.(\w+)", " ".join(rule["annotations"].values())))
        for label in set(rule["labels"]) & kept:
            pytest.fail(f"{rule['alert']}: annotation reads $labels.{label}, which the rule's own label replaces")


def test_every_alert_has_a_firing_and_a_quiet_case_in_the_unit_tests():
    fired, quiet = set(), set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fired == set(), "alerts never shown firing in deploy/prometheus/tests"
    assert names - quiet == set(), "alerts never shown quiet in deploy/prometheus/tests"


def test_rule_tests_load_the_shipped_rule_files():
    for path in RULE_TESTS:
        for rule_file in yaml.safe_load(path.read_text())["rule_files"]:
            assert (path.parent / rule_file).resolve().parent == DEPLOY / "rules", rule_file


def test_rules_read_only_series_the_code_exports():
    allowed = METRIC_NAMES | recorded_names() | PROMETHEUS_SERIES
    for group in rule_groups():
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            read = promql_metric_names(rule["expr"])
            assert read, f"{name}: reads no series"
            assert read <= allowed, f"{name} reads {sorted(read - allowed)}, which monitor/telemetry.py does not export"
            for text in rule.get("annotations", {}).values():  # `query` templates
                queried = set(re.findall(r"\bmonitor_\w+", text))
                assert queried <= METRIC_NAMES, f"{name}: annotation queries {sorted(queried - METRIC_NAMES)}"


def test_alerts_read_no_recorded_series():
    """Rule groups are evaluated concurrently: an alert reading a recorded series could see the value
    of the previous evaluation (and promtool's unit tests would be flaky)."""
    recorded = recorded_names()
    for rule in alert_rules():
        assert not promql_metric_names(rule["expr"]) & recorded, f"{rule['alert']} reads a recorded series"


def test_recording_rules_follow_the_level_metric_operations_convention():
    for name in recorded_names():
        assert re.fullmatch(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", name), name


def test_counters_are_read_through_rate_or_increase():
    counters = {n for n in METRIC_NAMES if n.endswith("_total") or n.endswith("_bucket")}
    for group in rule_groups():
        for rule in group["rules"]:
            expr = " ".join(rule["expr"].split())
            for name in promql_metric_names(expr) & counters:
                assert re.search(rf"\b(rate|increase)\(\s*{name}\b", expr), f"{name} read without rate(): {expr}"


# -- monitor.services.prometheus, the parts that start nothing ----------------------------------------

def test_prometheus_config_is_a_valid_config(tmp_path):
    text = prometheus_config({"monitor": ["127.0.0.1:9108"]}, interval_s=1, alertmanagers=["127.0.0.1:9093"],
                             labels={"role": "all"})
    (tmp_path / "p.yml").write_text(text)
    run_tool(tool("promtool"), "check", "config", str(tmp_path / "p.yml"))
    config = yaml.safe_load(text)
    assert config["global"]["scrape_interval"] == "1s"
    assert config["scrape_configs"][0]["static_configs"][0]["labels"] == {"role": "all"}


def test_start_prometheus_refuses_rule_files_given_twice(tmp_path):
    rules = DEPLOY / "rules" / "health_signals.yml"
    with pytest.raises(ServiceError, match="own rule_files"):
        start_prometheus("global: {}\nrule_files: [x.yml]\n", [rules], tmp_path, binary="/bin/false")
    with pytest.raises(ServiceError, match="not found"):
        start_prometheus("global: {}\n", [tmp_path / "none.yml"], tmp_path, binary="/bin/false")
