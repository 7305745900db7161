"""Prometheus config, recording and alerting rules (promtool), and the dashboard's queries."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.refs import DASHBOARDS, PROMETHEUS, RULE_FILES, tool

ALERTS = PROMETHEUS / "rules" / "alerts.yml"
UNIT_TESTS = PROMETHEUS / "tests" / "alerts.test.yml"


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    binary = tool("promtool")
    if binary is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    return subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, check=False)


def alert_rules() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def test_config_is_valid() -> None:
    done = promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_rules_are_valid() -> None:
    done = promtool("check", "rules", *map(str, RULE_FILES))
    assert done.returncode == 0, done.stdout + done.stderr


def test_unit_tests_pass() -> None:
    done = promtool("test", "rules", str(UNIT_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr


def test_every_alert_fires_in_a_unit_test() -> None:
    fired = {
        case["alertname"]
        for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert set(alert_rules()) <= fired


def test_the_required_alerts_watch_the_right_signals() -> None:
    rules = alert_rules()
    recording = "\n".join(path.read_text() for path in RULE_FILES)

    def expr_of(alert: str) -> str:
        """The alert's expression with recording rules expanded one level."""
        expr = str(rules[alert]["expr"])
        for name in re.findall(r"fusionserve:[a-z0-9_:]+", expr):
            block = recording.split(f"record: {name}\n", 1)[1].split("- record:", 1)[0]
            expr += "\n" + block
        return expr

    assert 'outcome="error"' in expr_of("FusionserveHighErrorRate")
    assert "fusionserve_queue_depth" in expr_of("FusionserveQueueSaturated")
    p99 = expr_of("FusionserveHighLatencyP99")
    assert "histogram_quantile(0.99" in p99 and "fusionserve_request_duration_seconds_bucket" in p99
    assert "fusionserve_model_ready == 0" in expr_of("FusionserveModelNotReady")
    for rule in rules.values():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_unit_tests_fail_when_an_alert_no_longer_fires(tmp_path: Path) -> None:
    """Raise the error-rate threshold out of reach: promtool's unit tests must notice."""
    shutil.copytree(PROMETHEUS, tmp_path / "prometheus")
    alerts = tmp_path / "prometheus" / "rules" / "alerts.yml"
    text = alerts.read_text()
    assert "fusionserve:request_errors:ratio_rate5m > 0.05" in text
    alerts.write_text(
        text.replace(
            "fusionserve:request_errors:ratio_rate5m > 0.05", "fusionserve:request_errors:ratio_rate5m > 0.5"
        )
    )
    done = promtool("test", "rules", str(tmp_path / "prometheus" / "tests" / "alerts.test.yml"))
    assert done.returncode != 0
    assert "FusionserveHighErrorRate" in done.stdout + done.stderr


def dashboard_queries(path: Path) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel."""
    dashboard = json.loads(path.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def test_dashboard_queries_are_valid_promql(dashboard: Path, tmp_path: Path) -> None:
    """promtool parses each query, written as a recording rule with Grafana's variables filled in."""
    rules = []
    for i, (_title, expr) in enumerate(dashboard_queries(dashboard)):
        concrete = expr.replace("$__rate_interval", "1m").replace("$model", ".*")
        assert "$" not in concrete, expr
        rules.append({"record": f"dashboard:query_{i}", "expr": concrete})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("dashboard", DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def test_dashboard_has_the_panels_operators_need(dashboard: Path) -> None:
    spec = json.loads(dashboard.read_text())
    titles = " | ".join(p["title"].lower() for p in spec["panels"])
    for wanted in (
        "request rate by model and outcome",
        "latency percentiles",
        "queue depth",
        "batch size distribution",
        "decode time per modality",
        "padding ratio",
        "instance utilisation",
        "gpu utilisation",
        "gpu memory",
    ):
        assert wanted in titles, wanted
    ids = [p["id"] for p in spec["panels"]]
    assert len(ids) == len(set(ids))
    datasource = yaml.safe_load(
        (PROMETHEUS.parent / "grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    uids = {d["uid"] for d in datasource["datasources"]}
    (variable,) = [v for v in spec["templating"]["list"] if v["type"] == "datasource"]
    assert variable["current"]["value"] in uids
    for panel in spec["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
