"""Admin lockout (issue 16.1): a guesser or a cross-site page sharing the operator's address
must not lock the operator out of the kill switch.

Five wrong tokens throttle wrong tokens from that address; the right one is still accepted
(`flags set --disable --force` works during the incident), and requests without any token —
what a cross-site `<img src=…/admin/x>` sends — are refused without counting at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import BridgeProcess, lighthouse

from .conftest import RawClient, assert_refused, events_after, mark, metric, start_bridge


@pytest.fixture
def lockout_bridge(tmp_path: Path) -> Iterator[BridgeProcess]:
    b = start_bridge(tmp_path)
    try:
        yield b
    finally:
        b.stop()


def test_right_token_works_from_a_throttled_address(lockout_bridge: BridgeProcess) -> None:
    bridge = lockout_bridge
    raw = RawClient(bridge)
    try:
        for i in range(6):
            raw.http.get("/feature_flags", headers={"Authorization": f"Bearer guess-{i}"})
        guess = raw.http.get("/feature_flags", headers={"Authorization": "Bearer guess-x"})
        assert_refused(guess, 429, "throttled")
        start = mark(bridge)
        # The kill switch, as an operator pulls it, from the same (throttled) address.
        result = lighthouse(
            "flags",
            "set",
            "--disable",
            "--force",
            "--reason",
            "incident",
            cwd=bridge.workdir,
            env=bridge.env,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        changes = events_after(bridge, start, ["FlagChanged"])
        assert len(changes) == 1 and changes[0].data["new"]["elicitation_enabled"] is False
        # The throttle still holds for guesses.
        assert_refused(
            raw.http.get("/feature_flags", headers={"Authorization": "Bearer guess-y"}),
            429,
            "throttled",
        )
        # And the service is healthy for agents.
        assert (
            raw.post(
                "alice",
                b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":'
                b'{"protocolVersion":"2025-11-25","capabilities":{},'
                b'"clientInfo":{"name":"x","version":"1"}}}',
            ).status_code
            == 200
        )
    finally:
        raw.close()


def test_tokenless_requests_do_not_count(lockout_bridge: BridgeProcess) -> None:
    """A page the operator visits can make their browser fire `<img>` requests at the
    admin API (no Origin, no token) as often as it likes: none of them counts."""
    bridge = lockout_bridge
    raw = RawClient(bridge)
    try:
        before = metric(bridge, "lighthouse_admin_auth_failures_total")
        for _ in range(30):
            assert_refused(raw.http.get("/admin/agents"), 401, "missing_token")
        assert metric(bridge, "lighthouse_admin_auth_failures_total") - before == 30  # exact
        # No throttle was triggered: a wrong token is refused as wrong, not as throttled.
        wrong = raw.http.get("/feature_flags", headers={"Authorization": "Bearer nope"})
        assert_refused(wrong, 401, "invalid_token")
        status, flags = bridge.admin("GET", "/feature_flags")
        assert status == 200 and "elicitation_enabled" in flags
    finally:
        raw.close()
