"""Admin bearer token: missing or wrong tokens are refused and recorded, and guessing is
throttled per address (5 wrong tokens within 60 s block wrong tokens from that address for
300 s; the right token is never blocked, see test_admin_lockout.py).

The module bridge sees at most 4 failures (missing, wrong, wrong scheme, token in query);
the throttle test has a bridge of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import BridgeProcess

from .conftest import RawClient, assert_refused, events_after, mark, side_effects, start_bridge

KILL_SWITCH = {"elicitation_enabled": False, "force": True}


def _failure(bridge: BridgeProcess, start: int) -> dict[str, object]:
    failures = events_after(bridge, start, ["AdminAuthFailed"])
    assert len(failures) == 1, [f.data for f in failures]
    assert failures[0].stream == "security"
    assert failures[0].actor == "anonymous"
    data: dict[str, object] = failures[0].data
    assert data["remote"] == "127.0.0.1"
    return data


def test_missing_token_is_refused_and_recorded(bridge: BridgeProcess, raw: RawClient) -> None:
    start = mark(bridge)
    response = raw.http.post("/feature_flags", json=KILL_SWITCH)
    assert_refused(response, 401, "missing_token")
    data = _failure(bridge, start)
    assert (data["reason"], data["path"]) == ("missing_token", "/feature_flags")
    assert side_effects(bridge, start) == []


def test_wrong_token_is_refused_and_recorded(bridge: BridgeProcess, raw: RawClient) -> None:
    wrong = "lh_admin_" + "A" * 43
    start = mark(bridge)
    response = raw.http.post(
        "/admin/agents/alice/revoke", json={}, headers={"Authorization": f"Bearer {wrong}"}
    )
    assert_refused(response, 401, "invalid_token")
    data = _failure(bridge, start)
    assert (data["reason"], data["path"]) == ("invalid_token", "/admin/agents/alice/revoke")
    assert wrong not in str(data)  # the guessed token is not logged
    assert side_effects(bridge, start) == []


def test_token_in_wrong_place_is_refused(bridge: BridgeProcess, raw: RawClient) -> None:
    """The right token, but not as `Authorization: Bearer` (Basic scheme, query string)."""
    token = bridge.admin_token
    start = mark(bridge)
    basic = raw.http.post(
        "/admin/agents", json={"name": "mallory"}, headers={"Authorization": f"Basic {token}"}
    )
    assert_refused(basic, 401, "missing_token")
    query = raw.http.post(
        f"/admin/agents?token={token}&access_token={token}", json={"name": "mallory"}
    )
    assert_refused(query, 401, "missing_token")
    failures = events_after(bridge, start, ["AdminAuthFailed"])
    assert [f.data["reason"] for f in failures] == ["missing_token", "missing_token"]
    assert side_effects(bridge, start) == []


def test_right_token_works(bridge: BridgeProcess) -> None:
    """Control (and proof the failures above did not lock the operator out yet)."""
    start = mark(bridge)
    status, flags = bridge.admin(
        "POST", "/feature_flags", {"rollout_percent": 50, "reason": "attack-suite control"}
    )
    assert status == 200 and flags["rollout_percent"] == 50
    changes = events_after(bridge, start, ["FlagChanged"])
    assert len(changes) == 1 and changes[0].data["new"]["rollout_percent"] == 50


@pytest.fixture
def throttled_bridge(tmp_path: Path) -> Iterator[BridgeProcess]:
    b = start_bridge(tmp_path)
    try:
        yield b
    finally:
        b.stop()


def test_repeated_failures_are_throttled(throttled_bridge: BridgeProcess) -> None:
    bridge = throttled_bridge
    raw = RawClient(bridge)
    try:
        start = mark(bridge)
        statuses = []
        for i in range(5):
            response = raw.http.get(
                "/feature_flags", headers={"Authorization": f"Bearer guess-{i}"}
            )
            statuses.append(response.status_code)
        assert statuses == [401] * 5
        # The 6th attempt is throttled, whatever it carries.
        blocked = raw.http.post(
            "/feature_flags", json=KILL_SWITCH, headers={"Authorization": "Bearer guess-6"}
        )
        assert_refused(blocked, 429, "throttled")
        retry_after = int(blocked.headers["Retry-After"])
        assert 1 <= retry_after <= 301
        # The right token still works from the blocked address (test_admin_lockout.py).
        # A forged X-Forwarded-For does not buy a fresh address (no trusted proxies).
        spoofed = raw.http.get(
            "/feature_flags",
            headers={"Authorization": "Bearer guess-7", "X-Forwarded-For": "203.0.113.9"},
        )
        assert_refused(spoofed, 429, "throttled")

        failures = events_after(bridge, start, ["AdminAuthFailed"])
        # This bridge records every refusal individually (conftest.INDIVIDUAL); the write
        # budget for floods is test_log_flood.py's.
        assert [f.data["reason"] for f in failures] == ["invalid_token"] * 5 + ["throttled"] * 2
        assert side_effects(bridge, start) == []
        # /mcp is a separate surface: the admin throttle does not lock agents out.
        assert (
            raw.send(
                raw.build(
                    "alice",
                    b'{"jsonrpc":"2.0","id":1,"method":"initialize",'
                    b'"params":{"protocolVersion":"2025-11-25",'
                    b'"capabilities":{},"clientInfo":'
                    b'{"name":"x","version":"1"}}}',
                )
            ).status_code
            == 200
        )
    finally:
        raw.close()
