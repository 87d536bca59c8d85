"""Flag evaluation: order, sticky rollout, validation (pure, no server)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.domain import FLAG_CHANGED, Fact
from bridge.flags import FlagError, Flags, FlagState, bucket, parse_change

agent_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=40)


def _flags(**state: object) -> Flags:
    flags = Flags()
    flags.apply(
        Fact(1, "flags", FLAG_CHANGED, {"old": {}, "new": FlagState(**state).to_dict()}, "ops", 0.0)
    )
    return flags


@given(agent_names, st.integers(0, 100), st.integers(0, 100))
def test_raising_the_percentage_only_adds_agents(agent: str, low: int, high: int) -> None:
    low, high = sorted((low, high))
    if _flags(rollout_percent=low).elicitation_for(agent):
        assert _flags(rollout_percent=high).elicitation_for(agent)


@given(agent_names)
def test_bucket_is_stable_and_in_range(agent: str) -> None:
    assert 0 <= bucket(agent) < 100
    assert bucket(agent) == bucket(agent)


def test_known_bucket_values_are_fixed_across_releases() -> None:
    # murmur3_32(seed 0) of "elicitation:<agent>" mod 100, pinned: a change would flip
    # agents between paths on upgrade, and bridges of two versions would disagree.
    assert [bucket(a) for a in ("alice", "bob", "carol")] == [97, 53, 23]


@settings(max_examples=20)
@given(st.integers(5, 95))
def test_rollout_spreads_agents_evenly(percent: int) -> None:
    flags = _flags(rollout_percent=percent)
    agents = [f"agent-{i}" for i in range(5000)]
    share = sum(flags.elicitation_for(a) for a in agents) / len(agents)
    assert abs(share - percent / 100) < 0.04


def test_kill_switch_beats_overrides_and_override_beats_rollout() -> None:
    assert not _flags(elicitation_enabled=False, overrides={"a": True}).elicitation_for("a")
    assert _flags(rollout_percent=0, overrides={"a": True}).elicitation_for("a")
    assert not _flags(rollout_percent=100, overrides={"a": False}).elicitation_for("a")


def test_evaluation_error_means_legacy() -> None:
    flags = _flags()
    flags.state = None  # type: ignore[assignment]  # a corrupted projection
    assert flags.elicitation_for("a") is False


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body"),
        ({"rollout_percent": -1}, "rollout_percent"),
        ({"rollout_percent": True}, "rollout_percent"),
        ({"force": 1}, "force"),
        ({"overrides": []}, "overrides"),
        ({"overrides": {"": True}}, "overrides"),
        ({"nope": 1}, "nope"),
        ({"reason": 5}, "reason"),
    ],
)
def test_bad_changes_name_the_field(body: object, field: str) -> None:
    with pytest.raises(FlagError) as info:
        parse_change(body, FlagState())
    assert info.value.field == field


def test_override_null_removes_it() -> None:
    state = parse_change({"overrides": {"a": True, "b": False}}, FlagState())
    assert parse_change({"overrides": {"a": None}}, state).overrides == {"b": False}


def test_force_applies_to_one_change_only() -> None:
    forced = parse_change({"elicitation_enabled": False, "force": True}, FlagState())
    assert forced.force is True
    assert parse_change({"elicitation_enabled": True}, forced).force is False
