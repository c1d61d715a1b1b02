"""deploy/prometheus/alerts.yml and deploy/grafana/drpanel.json use only metric names ``/metrics`` exposes."""

import json
import re
import shutil
import subprocess

import pytest
import yaml

from drpanel import metrics
from tests.support import ROOT

NAME = re.compile(r"\bdrpanel_[a-z_]+\b")
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "drpanel.json"


@pytest.fixture
def exposed(db) -> set[str]:
    """Every family the collector can write (with or without samples right now)."""
    return {family.name for family in metrics.collect()}


def test_the_alert_rules_use_the_panels_metric_names(exposed):
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    assert rules and all({"alert", "expr", "annotations"} <= set(rule) for rule in rules)
    used = {name for rule in rules for name in NAME.findall(str(rule["expr"]))}
    assert used and used <= exposed, used - exposed
    for needed in ("drpanel_cron_schedulers", "drpanel_rpo_seconds", "drpanel_pool_workers_alive",
                   "drpanel_system_last_rto_seconds"):
        assert needed in used


def test_the_dashboard_uses_the_panels_metric_names(exposed):
    dashboard = json.loads(DASHBOARD.read_text())
    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in NAME.findall(target["expr"])}
    used |= set(NAME.findall(json.dumps(dashboard["templating"])))
    assert used and used <= exposed, used - exposed
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian's prometheus) is not installed")
def test_promtool_accepts_the_rules():
    result = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
