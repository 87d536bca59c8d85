"""deploy/: the Grafana dashboard and Prometheus alert rules load, and every metric they
query is one a real bridge exposes (so a renamed metric cannot silently blind an alert)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.test_metrics import metrics_bridge, scrape  # noqa: F401  (fixture)

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
METRIC = re.compile(r"\blighthouse_[a-z0-9_]+\b")
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created", ""),
    "gauge": ("",),
}
RUNSHEET_ALERTS = {
    "LighthouseElicitationErrorRateHigh": "0.05",
    "LighthouseElicitationP99High": "> 1",
    "LighthouseAuthFailureSpike": "lighthouse_auth_rejections_total",
    "LighthouseReplayAttempt": 'reason="replayed_nonce"',
    "LighthouseRateLimitViolations": "lighthouse_rate_limited_total",
    "LighthouseFallbackRateHigh": "lighthouse_fallbacks_total",
    "LighthouseStoreAppendP99High": "lighthouse_store_append_seconds_bucket",
    "LighthouseStoreDegraded": "lighthouse_store_degraded",
    "LighthouseStoreWalCheckpointFailing": 'component="wal_checkpoint"',
}


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((DEPLOY / "prometheus-alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    return json.loads((DEPLOY / "grafana-dashboard.json").read_text())


def dashboard_exprs(dash: dict[str, Any]) -> list[str]:
    exprs = [a["expr"] for a in dash.get("annotations", {}).get("list", []) if "expr" in a]
    for panel in dash["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            exprs += [t["expr"] for t in inner.get("targets", [])]
    return exprs


def test_alert_rules_are_well_formed() -> None:
    doc = yaml.safe_load((DEPLOY / "prometheus-alerts.yml").read_text())
    assert isinstance(doc["groups"], list) and doc["groups"]
    names = set()
    for group in doc["groups"]:
        assert isinstance(group["name"], str) and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
            assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", rule["alert"])
            assert isinstance(rule["expr"], str) and METRIC.search(rule["expr"])
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["for"]
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}
            assert {"summary", "description", "runbook"} <= set(rule["annotations"])
            assert rule["expr"].count("(") == rule["expr"].count(")")
            names.add(rule["alert"])
    assert len(names) == sum(len(g["rules"]) for g in doc["groups"])  # unique


@pytest.mark.parametrize(("alert", "needle"), sorted(RUNSHEET_ALERTS.items()))
def test_runsheet_thresholds_have_alerts(alert: str, needle: str) -> None:
    by_name = {r["alert"]: r for r in rules()}
    assert needle in by_name[alert]["expr"]


def test_dashboard_is_valid_grafana_json() -> None:
    dash = dashboard()
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 30
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        assert {"type", "title", "gridPos"} <= set(panel)
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for target in panel.get("targets", []):
            assert target["expr"].count("(") == target["expr"].count(")")
    text = "\n".join(dashboard_exprs(dash))
    for q in ("0.5", "0.95", "0.99", "0.999"):  # p50 / p95 / p99 / p99.9 of ask by path
        assert f"histogram_quantile({q}, sum by (le, path)" in text


def exposed_names(metrics_text: str) -> set[str]:
    """Every sample name the families in `/metrics` can have, samples or not yet."""
    names: set[str] = set()
    for family in text_string_to_metric_families(metrics_text):
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
        names.update(s.name for s in family.samples)
    return names


def test_every_referenced_metric_exists_in_a_real_bridge(metrics_bridge) -> None:  # noqa: F811
    exposed = exposed_names(scrape(metrics_bridge))
    referenced = {
        name
        for expr in [r["expr"] for r in rules()] + dashboard_exprs(dashboard())
        for name in METRIC.findall(expr)
    }
    assert referenced, "no lighthouse metric referenced"
    assert sorted(referenced - exposed) == []
