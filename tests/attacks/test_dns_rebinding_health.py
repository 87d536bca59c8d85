"""`/health` and `/metrics` behind the Host check, `/metrics` private (issue 16.9).

A DNS-rebinding page makes the browser send `Host: evil.example` (its own name, now
pointing at 127.0.0.1): every route refuses it, not only `/mcp` and the admin API.
`/metrics` answers loopback clients only, unless a metrics token is configured, then only
its bearer; `/health` no longer shows per-agent overrides or who changed the flags.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.harness import BridgeProcess

from .conftest import RawClient, assert_refused, events_after, initialize_body, mark, start_bridge


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeProcess]:
    """Behind a (simulated) reverse proxy on loopback: X-Forwarded-For names the client."""
    b = start_bridge(tmp_path_factory.mktemp("rebinding"), "--trusted-proxy", "127.0.0.1")
    try:
        yield b
    finally:
        b.stop()


@pytest.mark.parametrize("path", ["/health", "/metrics", "/no-such-route"])
def test_rebound_host_is_refused_on_every_route(proxied: BridgeProcess, path: str) -> None:
    start = mark(proxied)
    response = httpx2.get(proxied.url + path, headers={"Host": "evil.example"})
    assert_refused(response, 403, "forbidden_host")
    assert "store" not in response.text and "lighthouse_" not in response.text
    [event] = events_after(proxied, start, ["AuthRejected"])
    assert (event.data["reason"], event.data["path"]) == ("forbidden_host", path)
    cross = httpx2.get(proxied.url + path, headers={"Origin": "http://evil.example"})
    assert_refused(cross, 403, "forbidden_origin")


def test_metrics_are_refused_to_non_loopback_clients(proxied: BridgeProcess) -> None:
    remote = httpx2.get(proxied.url + "/metrics", headers={"X-Forwarded-For": "203.0.113.5"})
    assert_refused(remote, 403, "not_loopback")
    local = httpx2.get(proxied.url + "/metrics")
    assert local.status_code == 200 and "lighthouse_auth_rejections" in local.text


def test_health_hides_overrides_and_actors(proxied: BridgeProcess) -> None:
    status, _ = proxied.admin(
        "POST",
        "/feature_flags",
        {"overrides": {"alice": False}, "reason": "probe"},
        headers={"X-Lighthouse-Operator": "oncall-jane"},
    )
    assert status == 200
    health = httpx2.get(proxied.url + "/health")
    assert health.status_code == 200
    assert "alice" not in health.text and "oncall-jane" not in health.text
    assert set(health.json()["flags"]) == {"elicitation_enabled", "rollout_percent", "version"}
    _, flags = proxied.admin("GET", "/feature_flags")
    assert flags["overrides"] == {"alice": False} and flags["changed_by"] == "oncall-jane"
    # The service works for agents as before.
    raw = RawClient(proxied)
    try:
        assert raw.post("alice", initialize_body()).status_code == 200
    finally:
        raw.close()


def test_metrics_token_is_required_from_anywhere_once_set(tmp_path: Path) -> None:
    token = secrets.token_urlsafe(32)
    token_file = tmp_path / "metrics.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    b = BridgeProcess(tmp_path, extra_args=("--metrics-token-file", str(token_file))).start()
    try:
        assert_refused(httpx2.get(b.url + "/metrics"), 401, "missing_token")
        wrong = httpx2.get(b.url + "/metrics", headers={"Authorization": "Bearer nope"})
        assert_refused(wrong, 401, "invalid_token")
        right = httpx2.get(b.url + "/metrics", headers={"Authorization": f"Bearer {token}"})
        assert right.status_code == 200 and "lighthouse_" in right.text
        assert token not in b.log_path.read_text()
    finally:
        b.stop()
