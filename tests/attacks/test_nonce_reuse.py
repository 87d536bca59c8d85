"""Nonce reuse: a nonce already used by a key is refused for any other request too, and
forged requests cannot burn an honest client's nonces."""

from __future__ import annotations

import secrets
import time

import pytest

from tests.harness import BridgeProcess

from .conftest import (
    RawClient,
    assert_refused,
    events_after,
    initialize_body,
    mark,
    messages_with,
    one_event,
    tool_call_body,
    tool_result,
)


@pytest.fixture(scope="module")
def alice_session(raw: RawClient) -> str:
    return raw.open_session("alice")


def _send(
    raw: RawClient,
    session: str,
    content: str,
    nonce: str,
    *,
    created: int | None = None,
    secret: bytes | None = None,
) -> int:
    body = tool_call_body("send_message", {"to": "bob", "content": content})
    request = raw.build("alice", body, session=session, nonce=nonce, created=created, secret=secret)
    return raw.send(request).status_code


def test_same_nonce_on_a_different_body_is_refused(
    bridge: BridgeProcess, raw: RawClient, alice_session: str
) -> None:
    nonce = secrets.token_urlsafe(16)
    start = mark(bridge)
    assert _send(raw, alice_session, "first use", nonce) == 200
    second = raw.build(
        "alice",
        tool_call_body("send_message", {"to": "bob", "content": "second use"}),
        session=alice_session,
        nonce=nonce,
    )
    assert_refused(raw.send(second), 401, "replayed_nonce")
    event = one_event(bridge, start, "AuthRejected")
    assert (event.data["reason"], event.data["agent"]) == ("replayed_nonce", "alice")
    assert len(messages_with(bridge, "first use", start)) == 1
    assert messages_with(bridge, "second use", start) == []


def test_same_nonce_on_another_method_or_shape_is_refused(
    bridge: BridgeProcess, raw: RawClient, alice_session: str
) -> None:
    nonce = secrets.token_urlsafe(16)
    assert _send(raw, alice_session, "nonce owner", nonce) == 200
    start = mark(bridge)
    as_get = raw.build("alice", method="GET", session=alice_session, nonce=nonce)
    assert_refused(raw.send(as_get), 401, "replayed_nonce")
    as_init = raw.build("alice", initialize_body(), nonce=nonce)  # no session, other body
    refused = raw.send(as_init)
    assert_refused(refused, 401, "replayed_nonce")
    assert "mcp-session-id" not in refused.headers
    reasons = [r.data["reason"] for r in events_after(bridge, start, ["AuthRejected"])]
    assert reasons == ["replayed_nonce", "replayed_nonce"]


def test_same_nonce_with_a_later_created_is_refused(
    bridge: BridgeProcess, raw: RawClient, alice_session: str
) -> None:
    """Re-signing with a new `created` does not refresh a nonce (it is keyed on key id and
    nonce only)."""
    nonce = secrets.token_urlsafe(16)
    now = int(time.time())
    assert _send(raw, alice_session, "created earlier", nonce, created=now - 60) == 200
    start = mark(bridge)
    assert _send(raw, alice_session, "created later", nonce, created=now) == 401
    assert one_event(bridge, start, "AuthRejected").data["reason"] == "replayed_nonce"
    assert messages_with(bridge, "created later", start) == []


def test_forged_request_does_not_burn_a_nonce(
    bridge: BridgeProcess, raw: RawClient, alice_session: str
) -> None:
    """An attacker who predicts alice's next nonce and sends it with a bad MAC must not
    make her real request a "replay": nonces are claimed only after the MAC verified."""
    nonce = secrets.token_urlsafe(16)
    start = mark(bridge)
    forged = _send(raw, alice_session, "forged first", nonce, secret=secrets.token_bytes(32))
    assert forged == 401
    assert _send(raw, alice_session, "honest second", nonce) == 200
    rejected = events_after(bridge, start, ["AuthRejected"])
    assert [r.data["reason"] for r in rejected] == ["invalid_signature"]
    assert messages_with(bridge, "forged first", start) == []
    assert len(messages_with(bridge, "honest second", start)) == 1


def test_nonces_are_per_key(bridge: BridgeProcess, raw: RawClient, alice_session: str) -> None:
    """bob reusing a nonce alice used is not a replay of anything (and an attacker cannot
    squat nonces in another key's namespace)."""
    nonce = secrets.token_urlsafe(16)
    assert _send(raw, alice_session, "alice nonce", nonce) == 200
    start = mark(bridge)
    bob_session = raw.open_session("bob")
    body = tool_call_body("send_message", {"to": "carol", "content": "bob same nonce"})
    tool_result(raw.send(raw.build("bob", body, session=bob_session, nonce=nonce)))
    assert events_after(bridge, start, ["AuthRejected"]) == []


@pytest.mark.parametrize("nonce", ["", "n" * 129])
def test_empty_or_oversized_nonce_is_refused(
    bridge: BridgeProcess, raw: RawClient, alice_session: str, nonce: str
) -> None:
    start = mark(bridge)
    body = tool_call_body("send_message", {"to": "bob", "content": f"nonce len {len(nonce)}"})
    request = raw.build("alice", body, session=alice_session, nonce=nonce or "x")
    if not nonce:
        request.headers["Signature-Input"] = request.headers["Signature-Input"].replace(
            'nonce="x"', 'nonce=""'
        )
    assert_refused(raw.send(request), 401, "malformed_signature")
    assert one_event(bridge, start, "AuthRejected").data["reason"] == "malformed_signature"
    assert messages_with(bridge, f"nonce len {len(nonce)}", start) == []
