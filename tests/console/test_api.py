"""The console's own endpoints' logic: a flag change's preview and the metrics snapshot."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from bridge.console.api import flag_preview, metrics_snapshot
from bridge.flags import FlagError, Flags, bucket
from bridge.metrics import Metrics


def _bridge(agents: list[str], in_flight: int = 0) -> Any:
    return SimpleNamespace(
        flags=Flags(),
        registry=SimpleNamespace(agents={a: object() for a in agents}),
        router=SimpleNamespace(in_flight=lambda: [object()] * in_flight),
    )


def test_preview_names_the_agents_a_rollout_change_moves() -> None:
    agents = [f"agent{i}" for i in range(40)]
    preview = flag_preview(_bridge(agents), {"rollout_percent": 30})
    staying = sorted(a for a in agents if bucket(a) < 30)
    assert preview["changes"] == [{"field": "rollout_percent", "old": 100, "new": 30}]
    assert preview["to_legacy"] == sorted(set(agents) - set(staying))
    assert preview["elicitation_before"] == 40 and preview["elicitation_after"] == len(staying)
    assert preview["to_elicitation"] == [] and preview["version"] == 0


def test_preview_of_a_forced_kill_switch_needs_a_reason_and_counts_what_it_stops() -> None:
    bridge = _bridge(["alice", "bob"], in_flight=3)
    with pytest.raises(FlagError) as refused:
        flag_preview(bridge, {"elicitation_enabled": False, "force": True, "reason": "  "})
    assert refused.value.field == "reason"
    preview = flag_preview(bridge, {"elicitation_enabled": False, "force": True, "reason": "INC"})
    assert preview["to_legacy"] == ["alice", "bob"]
    assert any("3 elicitation(s) in flight are moved" in e for e in preview["effects"])


def test_preview_refuses_what_the_flags_endpoint_refuses_and_says_when_nothing_changes() -> None:
    with pytest.raises(FlagError) as refused:
        flag_preview(_bridge([]), {"rollout_percent": 101})
    assert refused.value.field == "rollout_percent"
    same = flag_preview(_bridge(["a"]), {"rollout_percent": 100})
    assert same["changes"] == [] and same["effects"][0].startswith("Nothing changes")


def test_metrics_snapshot_sums_by_chart_label_and_keeps_histograms_json_safe() -> None:
    m = Metrics()
    m.asks.labels("elicitation", "accepted").inc(3)
    m.asks.labels("elicitation", "declined").inc()
    m.asks.labels("legacy", "accepted").inc(2)
    m.fallbacks.labels("flag_off").inc()
    m.ask_latency.labels("legacy").observe(0.004)
    snap = metrics_snapshot(m.registry)
    assert snap["asks"] == {"elicitation": 4.0, "legacy": 2.0}
    assert snap["fallbacks"] == {"flag_off": 1.0}
    legacy = snap["latency"]["legacy"]
    assert legacy["le"][-1] is None and None not in legacy["le"][:-1]  # +Inf -> null
    assert legacy["count"] == 1.0 and legacy["counts"][legacy["le"].index(0.005)] == 1.0
