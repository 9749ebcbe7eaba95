"""The provisioned Grafana dashboards, checked without a Grafana server: structure (ids, grid,
datasource) and that every query reads a series the code exports or the shipped rules record."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from monitor.services.prometheus import promql_metric_names
from monitor.telemetry import METRIC_NAMES

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
GRAFANA = DEPLOY / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
PROMETHEUS_SERIES = frozenset({"up", "ALERTS", "ALERTS_FOR_STATE"})
GRID_COLUMNS = 24


def recording_rules() -> dict[str, set[str]]:
    """Recorded name -> the series its expression reads (all rules of that name)."""
    recorded: dict[str, set[str]] = {}
    for path in (DEPLOY / "prometheus" / "rules").glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "record" in rule:
                    recorded.setdefault(rule["record"], set()).update(promql_metric_names(rule["expr"]))
    return recorded


RECORDED = recording_rules()
ALLOWED = METRIC_NAMES | set(RECORDED) | PROMETHEUS_SERIES


def datasource_uid() -> str:
    (source,) = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus"
    return source["uid"]


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def all_panels(dashboard: dict) -> list[dict]:
    """Top-level panels and those inside (collapsed) rows."""
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target, template variable and annotation query."""
    found = []
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            found.append((f"panel {panel['id']} {panel['title']!r} target {target.get('refId')}", target["expr"]))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            # Grafana's label_values(metric, label): the metric is PromQL, the label is not.
            if match := re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query):
                query = match.group(1)
            found.append((f"variable ${variable['name']}", query))
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if annotation.get("expr"):
            found.append((f"annotation {annotation['name']!r}", annotation["expr"]))
    return found


def base_metrics(names: set[str]) -> set[str]:
    """Recorded names replaced by the exported series they are computed from."""
    out: set[str] = set()
    for name in names:
        out |= base_metrics(RECORDED[name]) if name in RECORDED else {name}
    return out


def test_both_dashboards_ship():
    assert {p.name for p in DASHBOARDS} >= {"pipeline.json", "surveillance.json"}


def test_dashboard_uids_and_titles_are_unique():
    dashboards = [load(p) for p in DASHBOARDS]
    assert len({d["uid"] for d in dashboards}) == len(dashboards)
    assert len({d["title"] for d in dashboards}) == len(dashboards)
    for d in dashboards:
        assert d["uid"] and len(d["uid"]) <= 40  # Grafana's limit
        assert isinstance(d["schemaVersion"], int)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_panels_have_unique_ids_and_a_grid_position_that_fits(path):
    panels = all_panels(load(path))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids {sorted(i for i in ids if ids.count(i) > 1)}"
    boxes = []
    for panel in panels:
        grid = panel.get("gridPos")
        assert grid, f"panel {panel['id']} has no gridPos"
        assert all(isinstance(grid.get(k), int) for k in ("h", "w", "x", "y")), panel["id"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["y"] >= 0
        assert grid["x"] + grid["w"] <= GRID_COLUMNS, f"panel {panel['id']} is wider than the grid"
        boxes.append((panel["id"], grid))
    for i, (a, ga) in enumerate(boxes):
        for b, gb in boxes[i + 1:]:
            overlap = (ga["x"] < gb["x"] + gb["w"] and gb["x"] < ga["x"] + ga["w"]
                       and ga["y"] < gb["y"] + gb["h"] and gb["y"] < ga["y"] + ga["h"])
            assert not overlap, f"panels {a} and {b} overlap"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_query_uses_the_provisioned_datasource(path):
    uid = datasource_uid()
    dashboard = load(path)
    for panel in all_panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, f"panel {panel['id']}"
        assert panel["targets"], f"panel {panel['id']} {panel['title']!r} has no query"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), f"panel {panel['id']}: duplicate refId"
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"])["uid"] == uid
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"]["uid"] == uid
    for annotation in dashboard["annotations"]["list"]:
        if not annotation.get("builtIn"):
            assert annotation["datasource"]["uid"] == uid


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_query_reads_only_exported_or_recorded_series(path):
    for where, expr in queries(load(path)):
        names = promql_metric_names(expr)
        assert names, f"{path.name} {where}: no series in {expr!r}"
        assert names <= ALLOWED, (
            f"{path.name} {where} reads {sorted(names - ALLOWED)}: not in monitor.telemetry.METRIC_NAMES "
            "nor recorded by deploy/prometheus/rules"
        )


def test_pipeline_dashboard_covers_throughput_latency_lag_escalations_flips_dead_letters():
    read = base_metrics({n for _, e in queries(load(GRAFANA / "dashboards" / "pipeline.json"))
                         for n in promql_metric_names(e)})
    assert {
        "monitor_posts_consumed_total", "monitor_pipeline_latency_seconds_bucket",
        "monitor_end_to_end_latency_seconds_bucket", "monitor_consumer_lag_records", "monitor_escalations_total",
        "monitor_flips_total", "monitor_dead_letters_total", "monitor_errors_total",
    } <= read


def test_pipeline_latency_is_shown_at_p50_p95_and_p99():
    quantiles = set()
    for path in (DEPLOY / "prometheus" / "rules").glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if rule.get("record") == "monitor:pipeline_latency_seconds:quantile_rate5m":
                    quantiles.add(rule["labels"]["quantile"])
    assert quantiles == {"0.5", "0.95", "0.99"}
    exprs = [e for _, e in queries(load(GRAFANA / "dashboards" / "pipeline.json"))]
    assert "monitor:pipeline_latency_seconds:quantile_rate5m" in exprs


def test_surveillance_dashboard_covers_signals_alerts_and_label_mix():
    read = base_metrics({n for _, e in queries(load(GRAFANA / "dashboards" / "surveillance.json"))
                         for n in promql_metric_names(e)})
    assert {
        "monitor_signals_total", "monitor_signal_alert", "monitor_signal_observed", "monitor_signal_expected",
        "monitor_label_share_ratio", "monitor_label_share_expected_ratio", "monitor_mean_confidence_ratio",
    } <= read


def test_dashboard_provider_points_at_a_folder_and_the_datasource_is_default():
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "health-monitor.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
    (source,) = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["isDefault"] is True


# -- the PromQL reader the checks above rely on ------------------------------------------------------

@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("monitor_errors_total", {"monitor_errors_total"}),
        ('sum by (stage, kind) (rate(monitor_errors_total{kind!="x", stage=~"a|b"}[5m]))', {"monitor_errors_total"}),
        ("sum(rate(monitor_errors_total[5m])) without (instance)", {"monitor_errors_total"}),
        ("histogram_quantile(0.99, sum by (le) (rate(monitor_db_write_seconds_bucket[$__rate_interval])))",
         {"monitor_db_write_seconds_bucket"}),
        ('a_total / on (task) group_left (label) b_ratio', {"a_total", "b_ratio"}),
        ("x_total / ignoring(role) group_right() y_total", {"x_total", "y_total"}),
        ("avg_over_time(m[1d] offset 1h) and bool m2 > 5e3", {"m", "m2"}),
        ("max_over_time(rate(c_total[5m])[1h:1m])", {"c_total"}),
        ('{__name__="monitor_flips_total", task="t"}', {"monitor_flips_total"}),
        ('task:monitor_predictions:rate5m{task=~"$task"}', {"task:monitor_predictions:rate5m"}),
        ('label_replace(up, "dst", "$1", "instance", "(.*):by")', {"up"}),
        ("count(m == 1) or vector(0)", {"m"}),
        ('sum(increase(s_total{task=~"${task:regex}"}[1h])) by (task)', {"s_total"}),
        ("topk(5, sum without (instance) (q))", {"q"}),
        ("time() - 60", set()),
    ],
)
def test_promql_metric_names(expr, names):
    assert promql_metric_names(expr) == names
