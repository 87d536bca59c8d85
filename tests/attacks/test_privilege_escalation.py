"""Privilege escalation: an agent tries to do what only an operator may.

Agent keys never grant the admin API (`/feature_flags`, `/admin/…`), however well signed,
and nothing an agent sends over MCP can change its own roles, capabilities or keys.

The admin failure throttle blocks an address after 5 failures, and every test here comes
from 127.0.0.1, so each admin-facing test gets a fresh bridge (function scope).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from bridge.app import create_app
from bridge.config import Settings
from tests.harness import BridgeProcess

from .conftest import (
    RawClient,
    assert_refused,
    events_after,
    jsonrpc_payload,
    mark,
    messages_with,
    rpc,
    side_effects,
    start_bridge,
    tool_call_body,
    tool_result,
)

ESCALATIONS: list[tuple[str, str, bytes]] = [
    ("POST", "/feature_flags", b'{"elicitation_enabled": false, "force": true}'),
    ("POST", "/admin/agents", b'{"name": "alice2", "roles": ["expert"]}'),
    ("POST", "/admin/agents/alice/rotate", b"{}"),
    ("POST", "/admin/agents/bob/revoke", b"{}"),
]


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[tuple[BridgeProcess, RawClient]]:
    bridge = start_bridge(tmp_path)
    raw = RawClient(bridge)
    try:
        yield bridge, raw
    finally:
        raw.close()
        bridge.stop()


def test_agent_signature_does_not_open_the_admin_api(
    fresh: tuple[BridgeProcess, RawClient],
) -> None:
    bridge, raw = fresh
    start = mark(bridge)
    for method, path, body in ESCALATIONS:  # 4 failures: under the throttle's 5
        signed = raw.build("alice", body, method=method, path=path)
        response = raw.send(signed)
        assert_refused(response, 401, "missing_token")
    failures = events_after(bridge, start, ["AdminAuthFailed"])
    assert [(f.data["path"], f.data["reason"]) for f in failures] == [
        (path, "missing_token") for _, path, _ in ESCALATIONS
    ]
    assert all(f.stream == "security" and f.data["remote"] == "127.0.0.1" for f in failures)
    assert side_effects(bridge, start) == []
    # Control: the operator's token still works after agent attempts (4 < 5 failures).
    status, flags = bridge.admin("GET", "/feature_flags")
    assert status == 200 and flags["elicitation_enabled"] is True and flags["version"] == 0


def test_agent_secret_or_signature_as_bearer_token_is_refused(
    fresh: tuple[BridgeProcess, RawClient],
) -> None:
    bridge, raw = fresh
    alice = raw.agent("alice")
    start = mark(bridge)
    signed = raw.build("alice", b"", method="GET", path="/feature_flags")
    attempts = [
        f"Bearer {alice.secret}",
        f"Bearer {alice.key_id}",
        "Bearer " + signed.headers["Signature"].removeprefix("lh=").strip(":"),
    ]
    for authorization in attempts:
        response = raw.http.get(
            "/feature_flags", headers={**signed.headers, "Authorization": authorization}
        )
        assert_refused(response, 401, "invalid_token")
        assert "elicitation_enabled" not in response.text
    failures = events_after(bridge, start, ["AdminAuthFailed"])
    assert [f.data["reason"] for f in failures] == ["invalid_token"] * 3
    for failure in failures:  # the attempted token is never logged
        assert alice.secret not in str(failure.data)


def test_no_route_except_health_metrics_and_mcp_is_open(
    fresh: tuple[BridgeProcess, RawClient], tmp_path: Path
) -> None:
    """Every route the app registers (extensions included) refuses an agent-signed
    request without the admin token. New routes are picked up automatically."""
    bridge, raw = fresh
    app = create_app(Settings(db=tmp_path / "routes-only.db"))  # not started: routes only
    routes = [
        (route.method, resource.canonical.replace("{name}", "alice"))
        for resource in app.router.resources()
        for route in resource
        if route.method != "HEAD"
    ]
    assert ("POST", "/feature_flags") in routes
    start = mark(bridge)
    for method, path in routes:
        if path in ("/health", "/metrics", "/mcp"):
            continue
        body = b"{}" if method == "POST" else b""
        response = raw.send(raw.build("alice", body, method=method, path=path))
        if path.startswith("/console") and not path.startswith("/console/session"):
            # The console's page and assets are public by design (a sign-in form, no
            # data); everything they show comes from the admin API, refused below.
            assert response.status_code in (200, 302, 404), (method, path)
            continue
        if path.startswith("/console/session"):
            # Sign-in needs the admin token in its body; whoami/sign-out need a session.
            assert response.status_code in (400, 401, 403, 429), (method, path)
            continue
        # 401 until the throttle trips, 429 after: a refusal either way, never a 2xx.
        assert response.status_code in (401, 429), (method, path, response.status_code)
        assert response.json()["reason"] in ("missing_token", "throttled"), (method, path)
    assert side_effects(bridge, start) == []
    assert events_after(bridge, start, ["DrainStarted", "RepairCompleted"]) == []


@pytest.mark.parametrize(
    "path",
    [
        "/feature_flags/",
        "//feature_flags",
        "/Feature_Flags",
        "/admin",
        "//admin/agents",
        "/admin/agents/",
        "/%66eature_flags",
        "/admin/./agents",
    ],
)
def test_path_spellings_do_not_bypass_admin_auth(
    bridge: BridgeProcess, raw: RawClient, path: str
) -> None:
    """An unauthenticated GET on any spelling of an admin path either is refused by the
    admin middleware or matches no route; it never returns admin data."""
    url = httpx2.URL(bridge.url).copy_with(raw_path=path.encode())
    response = raw.http.get(url)
    assert response.status_code in (401, 404, 429), (path, response.status_code)
    assert "elicitation_enabled" not in response.text and "active_key_ids" not in response.text


def test_mcp_messages_cannot_change_roles_or_capabilities(
    bridge: BridgeProcess, raw: RawClient
) -> None:
    start = mark(bridge)
    init = rpc(
        "initialize",
        {
            "protocolVersion": "2025-11-25",
            "capabilities": {
                "experimental": {"roles": ["expert", "admin"], "capabilities": ["review"]}
            },
            "clientInfo": {"name": "alice", "version": "1", "roles": ["expert"]},
            "_meta": {"roles": ["expert"], "admin": True},
        },
    )
    response = raw.post("alice", init)
    assert response.status_code == 200
    session = response.headers["mcp-session-id"]
    assert (
        raw.post(
            "alice", rpc("notifications/initialized", notification=True), session=session
        ).status_code
        == 202
    )
    for name, arguments in [
        ("set_role", {"role": "expert"}),
        ("register_agent", {"name": "alice", "roles": ["expert"]}),
        ("rotate_key", {"agent": "bob"}),
        ("feature_flags", {"elicitation_enabled": False}),
    ]:
        reply = jsonrpc_payload(raw.post("alice", tool_call_body(name, arguments), session=session))
        assert "error" in reply or reply["result"].get("isError") is True, (name, reply)
    listed = tool_result(
        raw.post(
            "alice",
            tool_call_body("list_agents", {"roles": ["expert"], "capabilities": ["review"]}),
            session=session,
        )
    )
    alice = next(a for a in listed["agents"] if a["name"] == "alice")
    assert (alice["roles"], alice["capabilities"]) == ([], [])
    # Routing by role still ignores alice: a message to role:expert reaches bob only.
    sent = tool_result(
        raw.post(
            "alice",
            tool_call_body("send_message", {"to": "role:expert", "content": "who is expert"}),
            session=session,
        )
    )
    assert [d["agent"] for d in sent["delivered_to"]] == ["bob"]
    # one MessageSent per broadcast, naming its recipients (the content stored once)
    sent_events = messages_with(bridge, "who is expert", start)
    assert [m.data["recipients"] for m in sent_events] == [["bob"]]
    assert (
        events_after(
            bridge,
            start,
            ["AgentRegistered", "AgentKeyIssued", "AgentKeyRotated", "AgentRevoked", "FlagChanged"],
        )
        == []
    )
