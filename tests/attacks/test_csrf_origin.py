"""Cross-site requests and DNS rebinding against a bridge on loopback.

A page in the user's browser can send requests to 127.0.0.1 (with an `Origin` header), and
with DNS rebinding even same-origin ones (with its own name in `Host`). Both must be
refused before anything else runs, on `/mcp` and on the admin routes, even when the
request carries valid credentials (a browser extension or a confused local proxy might
add them).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import BridgeProcess

from .conftest import (
    RawClient,
    assert_refused,
    events_after,
    mark,
    messages_with,
    one_event,
    side_effects,
    start_bridge,
    tool_call_body,
    tool_result,
)


@pytest.fixture(scope="module")
def alice_session(raw: RawClient) -> str:
    return raw.open_session("alice")


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "https://evil.example",
        "null",
        "http://127.0.0.1.evil.example",
        "http://localhost:1",
    ],
)
def test_foreign_origin_on_mcp_is_refused(
    bridge: BridgeProcess, raw: RawClient, alice_session: str, origin: str
) -> None:
    content = f"csrf from {origin}"
    request = raw.build(
        "alice",
        tool_call_body("send_message", {"to": "bob", "content": content}),
        session=alice_session,
    )
    start = mark(bridge)
    response = raw.send(request, Origin=origin)
    assert_refused(response, 403, "forbidden_origin")
    event = one_event(bridge, start, "AuthRejected")
    assert (event.data["reason"], event.data["status"]) == ("forbidden_origin", 403)
    assert messages_with(bridge, content, start) == []


def test_own_origin_on_mcp_is_accepted(
    bridge: BridgeProcess, raw: RawClient, alice_session: str
) -> None:
    """Control: the check is an allow-list, not a blanket refusal of `Origin`."""
    request = raw.build(
        "alice",
        tool_call_body("send_message", {"to": "bob", "content": "same origin"}),
        session=alice_session,
    )
    start = mark(bridge)
    tool_result(raw.send(request, Origin=f"http://127.0.0.1:{bridge.port}"))
    assert len(messages_with(bridge, "same origin", start)) == 1


@pytest.mark.parametrize(
    "host", ["evil.example:{port}", "evil.example", "127.0.0.1:1", "localhost.evil.example:{port}"]
)
def test_rebound_host_on_mcp_is_refused(
    bridge: BridgeProcess, raw: RawClient, alice_session: str, host: str
) -> None:
    content = f"rebinding via {host}"
    request = raw.build(
        "alice",
        tool_call_body("send_message", {"to": "bob", "content": content}),
        session=alice_session,
    )
    start = mark(bridge)
    response = raw.send(request, Host=host.format(port=bridge.port))
    assert_refused(response, 403, "forbidden_host")
    event = one_event(bridge, start, "AuthRejected")
    assert (event.data["reason"], event.data["status"]) == ("forbidden_host", 403)
    assert messages_with(bridge, content, start) == []


def test_localhost_spelling_of_host_is_accepted(
    bridge: BridgeProcess, raw: RawClient, alice_session: str
) -> None:
    request = raw.build(
        "alice",
        tool_call_body("send_message", {"to": "bob", "content": "via localhost"}),
        session=alice_session,
    )
    tool_result(raw.send(request, Host=f"localhost:{bridge.port}"))


# -- admin routes: valid admin token, hostile browser context ------------------------------


@pytest.fixture(scope="module")
def admin_headers(bridge: BridgeProcess) -> dict[str, str]:
    return {"Authorization": f"Bearer {bridge.admin_token}"}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/feature_flags", {"elicitation_enabled": False, "force": True}),
        ("POST", "/admin/agents", {"name": "mallory", "roles": ["expert"]}),
        ("POST", "/admin/agents/alice/revoke", {}),
        ("GET", "/feature_flags", None),
    ],
)
def test_foreign_origin_on_admin_routes_is_refused(
    bridge: BridgeProcess,
    raw: RawClient,
    admin_headers: dict[str, str],
    method: str,
    path: str,
    body: object,
) -> None:
    start = mark(bridge)
    response = raw.http.request(
        method, path, json=body, headers={**admin_headers, "Origin": "http://evil.example"}
    )
    assert_refused(response, 403, "forbidden_origin")
    assert side_effects(bridge, start) == []


def test_rebound_host_on_admin_routes_is_refused(
    bridge: BridgeProcess, raw: RawClient, admin_headers: dict[str, str]
) -> None:
    start = mark(bridge)
    response = raw.http.post(
        "/feature_flags",
        json={"elicitation_enabled": False, "force": True},
        headers={**admin_headers, "Host": f"evil.example:{bridge.port}"},
    )
    assert_refused(response, 403, "forbidden_host")
    assert side_effects(bridge, start) == []
    # Control: the same token from a non-browser client (no Origin, right Host) works.
    status, flags = bridge.admin("GET", "/feature_flags")
    assert status == 200 and flags["elicitation_enabled"] is True


@pytest.fixture
def own_bridge(tmp_path: Path) -> Iterator[BridgeProcess]:
    b = start_bridge(tmp_path)
    try:
        yield b
    finally:
        b.stop()


def test_admin_origin_refusal_is_recorded(own_bridge: BridgeProcess) -> None:
    bridge = own_bridge
    raw = RawClient(bridge)
    try:
        start = mark(bridge)
        response = raw.http.post(
            "/feature_flags",
            json={"elicitation_enabled": False},
            headers={
                "Authorization": f"Bearer {bridge.admin_token}",
                "Origin": "http://evil.example",
            },
        )
        assert_refused(response, 403, "forbidden_origin")
        recorded = events_after(bridge, start, ["AdminAuthFailed", "AuthRejected"])
        assert [(r.stream, r.data.get("reason"), r.data.get("path")) for r in recorded] == [
            ("security", "forbidden_origin", "/feature_flags")
        ]
    finally:
        raw.close()
