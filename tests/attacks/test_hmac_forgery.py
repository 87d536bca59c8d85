"""HMAC forgery: requests whose MAC was not made with the key's secret over this request."""

from __future__ import annotations

import base64
import secrets

import httpx2
import pytest

from security import decode_secret
from tests.harness import BridgeProcess

from .conftest import (
    RawClient,
    Signed,
    assert_refused,
    custom_signature,
    mark,
    messages_with,
    one_event,
    side_effects,
    tool_call_body,
)


@pytest.fixture(scope="module")
def alice_session(raw: RawClient) -> str:
    return raw.open_session("alice")


def _attack(raw: RawClient, session: str, content: str) -> Signed:
    """A correctly signed tool call (alice, her session) to tamper with."""
    body = tool_call_body("send_message", {"to": "bob", "content": content})
    return raw.build("alice", body, session=session)


def _mac(request: Signed) -> bytes:
    return base64.b64decode(request.headers["Signature"].removeprefix("lh=:").rstrip(":"))


def _with_mac(request: Signed, mac: bytes) -> dict[str, str]:
    return {"Signature": f"lh=:{base64.b64encode(mac).decode()}:"}


def _assert_forgery_refused(
    bridge: BridgeProcess,
    start: int,
    response: httpx2.Response,
    reason: str,
    content: str,
    *,
    agent: str | None = "alice",
) -> None:
    assert_refused(response, 401, reason)
    event = one_event(bridge, start, "AuthRejected")
    assert (event.data["reason"], event.data["status"], event.data["agent"]) == (reason, 401, agent)
    assert messages_with(bridge, content, start) == []
    assert side_effects(bridge, start) == []


def test_wrong_secret(bridge: BridgeProcess, raw: RawClient, alice_session: str) -> None:
    body = tool_call_body("send_message", {"to": "bob", "content": "wrong secret"})
    request = raw.build("alice", body, session=alice_session, secret=secrets.token_bytes(32))
    start = mark(bridge)
    _assert_forgery_refused(bridge, start, raw.send(request), "invalid_signature", "wrong secret")


def test_another_agents_secret(bridge: BridgeProcess, raw: RawClient, alice_session: str) -> None:
    body = tool_call_body("send_message", {"to": "bob", "content": "carol's secret"})
    request = raw.build(
        "alice", body, session=alice_session, secret=decode_secret(raw.agent("carol").secret)
    )
    start = mark(bridge)
    _assert_forgery_refused(bridge, start, raw.send(request), "invalid_signature", "carol's secret")


@pytest.mark.parametrize("keep", [31, 16, 1, 0])
def test_truncated_signature(
    bridge: BridgeProcess, raw: RawClient, alice_session: str, keep: int
) -> None:
    content = f"truncated to {keep}"
    request = _attack(raw, alice_session, content)
    start = mark(bridge)
    response = raw.send(request, **_with_mac(request, _mac(request)[:keep]))
    _assert_forgery_refused(bridge, start, response, "invalid_signature", content)


def test_one_bit_flipped(bridge: BridgeProcess, raw: RawClient, alice_session: str) -> None:
    request = _attack(raw, alice_session, "bit flip")
    mac = bytearray(_mac(request))
    mac[-1] ^= 1
    start = mark(bridge)
    response = raw.send(request, **_with_mac(request, bytes(mac)))
    _assert_forgery_refused(bridge, start, response, "invalid_signature", "bit flip")


def test_signature_made_for_another_method(
    bridge: BridgeProcess, raw: RawClient, alice_session: str
) -> None:
    body = tool_call_body("send_message", {"to": "bob", "content": "was a PUT"})
    request = raw.build("alice", body, method="PUT", session=alice_session)
    start = mark(bridge)
    response = raw.http.post("/mcp", content=body, headers=request.headers)
    _assert_forgery_refused(bridge, start, response, "invalid_signature", "was a PUT")


@pytest.mark.parametrize("path", ["/feature_flags", "/mcp/", "/MCP", "/other/mcp"])
def test_signature_made_for_another_path(
    bridge: BridgeProcess, raw: RawClient, alice_session: str, path: str
) -> None:
    content = f"signed for {path}"
    body = tool_call_body("send_message", {"to": "bob", "content": content})
    request = raw.build("alice", body, path=path, session=alice_session)
    start = mark(bridge)
    response = raw.http.post("/mcp", content=body, headers=request.headers)
    _assert_forgery_refused(bridge, start, response, "invalid_signature", content)


def test_signature_made_for_another_query(
    bridge: BridgeProcess, raw: RawClient, alice_session: str
) -> None:
    body = tool_call_body("send_message", {"to": "bob", "content": "query swap"})
    request = raw.build("alice", body, query="a=1", session=alice_session)
    start = mark(bridge)
    response = raw.http.post("/mcp?a=2", content=body, headers=request.headers)
    _assert_forgery_refused(bridge, start, response, "invalid_signature", "query swap")


@pytest.mark.parametrize("alg", ["hmac-sha1", "none", "rsa-pss-sha512", "HMAC-SHA256"])
def test_algorithm_substitution(
    bridge: BridgeProcess, raw: RawClient, alice_session: str, alg: str
) -> None:
    """The algorithm is fixed server-side; a signature claiming another one is refused
    even when its MAC is a valid HMAC-SHA256 over the claimed parameters."""
    content = f"alg {alg}"
    body = tool_call_body("send_message", {"to": "bob", "content": content})
    honest = raw.build("alice", body, session=alice_session)
    alice = raw.agent("alice")
    components = [
        ("@method", "POST"),
        ("@path", "/mcp"),
        ("content-digest", honest.headers["Content-Digest"]),
        ("mcp-session-id", alice_session),
    ]
    forged = custom_signature(decode_secret(alice.secret), alice.key_id, components, alg=alg)
    start = mark(bridge)
    response = raw.send(honest, **forged)
    assert_refused(response, 401, "unsupported_algorithm")
    event = one_event(bridge, start, "AuthRejected")
    assert event.data["reason"] == "unsupported_algorithm"
    assert messages_with(bridge, content, start) == []


def test_unsigned_request(bridge: BridgeProcess, raw: RawClient, alice_session: str) -> None:
    body = tool_call_body("send_message", {"to": "bob", "content": "unsigned"})
    start = mark(bridge)
    response = raw.http.post(
        "/mcp",
        content=body,
        headers={
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            "Mcp-Session-Id": alice_session,
        },
    )
    _assert_forgery_refused(bridge, start, response, "missing_signature", "unsigned", agent=None)


def test_signature_under_another_label(
    bridge: BridgeProcess, raw: RawClient, alice_session: str
) -> None:
    request = _attack(raw, alice_session, "label sig1")
    start = mark(bridge)
    response = raw.send(
        request,
        **{
            "Signature-Input": request.headers["Signature-Input"].replace("lh=", "sig1=", 1),
            "Signature": request.headers["Signature"].replace("lh=", "sig1=", 1),
        },
    )
    _assert_forgery_refused(bridge, start, response, "missing_signature", "label sig1", agent=None)


@pytest.mark.parametrize(
    ("garbage", "reason"),
    [
        ("lh=:not base64!:", "malformed_signature"),
        ("lh=", "malformed_signature"),
        ("lh=?1", "malformed_signature"),
        ('lh="text"', "malformed_signature"),
        ("lh=:AAAA:;extra", "invalid_signature"),  # well-formed, but not the MAC
    ],
)
def test_garbage_signature_value(
    bridge: BridgeProcess, raw: RawClient, alice_session: str, garbage: str, reason: str
) -> None:
    content = f"garbage {garbage}"
    request = _attack(raw, alice_session, content)
    start = mark(bridge)
    response = raw.send(request, Signature=garbage)
    agent = "alice" if reason == "invalid_signature" else None
    _assert_forgery_refused(bridge, start, response, reason, content, agent=agent)
