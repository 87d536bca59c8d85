"""Signature edge cases: time window, body integrity, required components, key lifecycle,
and size limits. Each refusal is checked for status, public reason, the recorded event
(with the precise internal reason) and that the tool call it carried never ran."""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2
import pytest
from aiohttp import web

from bridge.app import BRIDGE, create_app
from bridge.config import Settings
from security import content_digest, decode_secret, sign_request
from tests.harness import BridgeProcess, read_events

from .conftest import (
    ACCEPT,
    PROTOCOL,
    RawClient,
    assert_no_secret_leak,
    assert_refused,
    custom_signature,
    events_after,
    initialize_body,
    mark,
    messages_with,
    one_event,
    side_effects,
    start_bridge,
    tool_call_body,
    tool_result,
)


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeProcess]:
    b = start_bridge(tmp_path_factory.mktemp("edge"), more_agents=("revokee", "rotatee"))
    try:
        yield b
    finally:
        if b.proc is not None:
            b.stop()


@pytest.fixture(scope="module")
def alice_session(raw: RawClient) -> str:
    return raw.open_session("alice")


def _call(content: str) -> bytes:
    return tool_call_body("send_message", {"to": "bob", "content": content})


def _refused(
    bridge: BridgeProcess,
    start: int,
    response: httpx2.Response,
    public: str,
    recorded: str | None = None,
    *,
    status: int = 401,
    agent: str | None = "alice",
) -> None:
    assert_refused(response, status, public)
    event = one_event(bridge, start, "AuthRejected")
    assert event.data["reason"] == (recorded or public)
    assert event.data["status"] == status
    assert event.data["agent"] == agent
    assert side_effects(bridge, start) == []


# -- time window -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "reason"),
    [
        (-301 - 60, "stale_signature"),
        (-3600 * 24, "stale_signature"),
        (301 + 60, "future_signature"),
        (3600 * 24 * 365, "future_signature"),
    ],
)
def test_created_outside_the_skew_window(
    bridge: BridgeProcess, raw: RawClient, alice_session: str, offset: int, reason: str
) -> None:
    content = f"created {offset:+d}"
    request = raw.build(
        "alice", _call(content), session=alice_session, created=int(time.time()) + offset
    )
    start = mark(bridge)
    _refused(bridge, start, raw.send(request), reason)
    assert messages_with(bridge, content, start) == []


@pytest.mark.parametrize("offset", [-200, 200])
def test_created_inside_the_skew_window_is_accepted(
    bridge: BridgeProcess, raw: RawClient, alice_session: str, offset: int
) -> None:
    """Control: the window is ±300 s (margins of 100 s keep this stable on slow runs)."""
    request = raw.build(
        "alice", _call(f"within {offset}"), session=alice_session, created=int(time.time()) + offset
    )
    tool_result(raw.send(request))


# -- body integrity ----------------------------------------------------------------------


def test_body_altered_after_signing(
    bridge: BridgeProcess, raw: RawClient, alice_session: str
) -> None:
    request = raw.build("alice", _call("pay 1"), session=alice_session)
    start = mark(bridge)
    altered = raw.http.post("/mcp", content=_call("pay 1000"), headers=request.headers)
    _refused(bridge, start, altered, "digest_mismatch")
    assert messages_with(bridge, "pay 1000", start) == []


def _signed_with_digest(raw: RawClient, session: str, body: bytes, digest: str) -> dict[str, str]:
    """Headers whose valid MAC covers *digest*, whatever it says about *body*."""
    alice = raw.agent("alice")
    components = [
        ("@method", "POST"),
        ("@path", "/mcp"),
        ("content-digest", digest),
        ("mcp-session-id", session),
    ]
    return {
        "Content-Type": "application/json",
        "Accept": ACCEPT,
        "Mcp-Session-Id": session,
        "Mcp-Protocol-Version": PROTOCOL,
        "Content-Digest": digest,
        **custom_signature(decode_secret(alice.secret), alice.key_id, components),
    }


@pytest.mark.parametrize(
    "kind", ["other-body", "malformed", "sha-512-only", "sha-512-wrong", "empty"]
)
def test_signed_digest_that_does_not_match_the_body(
    bridge: BridgeProcess, raw: RawClient, alice_session: str, kind: str
) -> None:
    content = f"digest {kind}"
    body = _call(content)
    right = content_digest(body)
    digest = {
        "other-body": content_digest(b"something else"),
        "malformed": "sha-256=:!!not-base64!!:",
        "sha-512-only": "sha-512=:" + "A" * 86 + "==:",
        "sha-512-wrong": right + ", sha-512=:" + "A" * 86 + "==:",
        "empty": "sha-256=::",
    }[kind]
    headers = _signed_with_digest(raw, alice_session, body, digest)
    start = mark(bridge)
    response = raw.http.post("/mcp", content=body, headers=headers)
    # A well-formed header without the sha-256 member the profile requires is named as
    # such (the client's body did not change; its algorithm is not accepted).
    _refused(
        bridge,
        start,
        response,
        "unsupported_digest" if kind == "sha-512-only" else "digest_mismatch",
    )
    assert messages_with(bridge, content, start) == []


# -- required components -----------------------------------------------------------------


def test_body_without_content_digest(
    bridge: BridgeProcess, raw: RawClient, alice_session: str
) -> None:
    """A MAC over method, path and session only would let anyone swap the body."""
    alice = raw.agent("alice")
    body = _call("no digest")
    components = [("@method", "POST"), ("@path", "/mcp"), ("mcp-session-id", alice_session)]
    headers = {
        "Content-Type": "application/json",
        "Accept": ACCEPT,
        "Mcp-Session-Id": alice_session,
        "Mcp-Protocol-Version": PROTOCOL,
        **custom_signature(decode_secret(alice.secret), alice.key_id, components),
    }
    start = mark(bridge)
    response = raw.http.post("/mcp", content=body, headers=headers)
    _refused(bridge, start, response, "missing_component")
    assert messages_with(bridge, "no digest", start) == []


def test_session_header_present_but_not_covered(
    bridge: BridgeProcess, raw: RawClient, alice_session: str
) -> None:
    """Signed without a session, then a session id attached: the signature would not bind
    the request to the session it acts in."""
    request = raw.build("alice", _call("unbound session"))  # signed with no session header
    start = mark(bridge)
    response = raw.send(
        request, **{"Mcp-Session-Id": alice_session, "Mcp-Protocol-Version": PROTOCOL}
    )
    _refused(bridge, start, response, "missing_component")
    assert messages_with(bridge, "unbound session", start) == []


def test_content_digest_sent_but_not_covered(
    bridge: BridgeProcess, raw: RawClient, alice_session: str
) -> None:
    request = raw.build("alice", method="GET", session=alice_session)
    start = mark(bridge)
    response = raw.send(request, **{"Content-Digest": content_digest(b"")})
    _refused(bridge, start, response, "missing_component", agent="alice")


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda s: s.replace(';alg="hmac-sha256"', ""), "unsupported_algorithm"),
        (lambda s: s.replace(";keyid=", ";kid="), "malformed_signature"),
        (lambda s: s + ";expires=9999999999", "malformed_signature"),
        (lambda s: s.replace(";created=", ";created=1.5;x="), "malformed_signature"),
        (lambda s: s.replace('("@method"', '("@method" "@method"'), "malformed_signature"),
        (lambda s: s.replace('("@method"', '("@authority" "@method"'), "malformed_signature"),
        (lambda s: s.replace('"@path"', '"@path";req'), "malformed_signature"),
    ],
)
def test_malformed_signature_input(
    bridge: BridgeProcess,
    raw: RawClient,
    alice_session: str,
    mutate: Callable[[str], str],
    reason: str,
) -> None:
    content = f"malformed {reason} {secrets.token_hex(4)}"
    request = raw.build("alice", _call(content), session=alice_session)
    mutated = mutate(request.headers["Signature-Input"])
    start = mark(bridge)
    response = raw.send(request, **{"Signature-Input": mutated})
    _refused(bridge, start, response, reason, agent=None)
    assert messages_with(bridge, content, start) == []


# -- key lifecycle -----------------------------------------------------------------------


def test_unknown_key(bridge: BridgeProcess, raw: RawClient) -> None:
    unknown = "k_" + secrets.token_hex(8)
    request = raw.build("alice", initialize_body(), key_id=unknown, secret=secrets.token_bytes(32))
    start = mark(bridge)
    response = raw.send(request)
    _refused(bridge, start, response, "invalid_signature", "unknown_key", agent=None)
    assert one_event(bridge, start, "AuthRejected").data["key_id"] == unknown
    assert "mcp-session-id" not in response.headers


def test_revoked_key(bridge: BridgeProcess, raw: RawClient) -> None:
    revokee = raw.agent("revokee")
    session = raw.open_session("revokee")
    tool_result(raw.post("revokee", _call("before revocation"), session=session))
    status, result = bridge.admin("POST", "/admin/agents/revokee/revoke", {})
    assert status == 200 and result["revoked"] is True

    start = mark(bridge)
    in_session = raw.post("revokee", _call("after revocation"), session=session)
    # Same public reason as an unknown key: a client cannot probe key state.
    _refused(bridge, start, in_session, "invalid_signature", "revoked_key", agent="revokee")
    event = one_event(bridge, start, "AuthRejected")
    assert event.data["key_id"] == revokee.key_id
    assert_no_secret_leak(event, revokee.secret)
    start = mark(bridge)
    _refused(
        bridge,
        start,
        raw.post("revokee", initialize_body()),
        "invalid_signature",
        "revoked_key",
        agent="revokee",
    )
    assert messages_with(bridge, "after revocation") == []


def test_rotated_key_is_accepted_during_grace(bridge: BridgeProcess, raw: RawClient) -> None:
    old = raw.agent("rotatee")
    status, rotated = bridge.admin("POST", "/admin/agents/rotatee/rotate", {})
    assert status == 200 and rotated["previous_key_ids"] == [old.key_id]
    # Default grace is 3600 s; expiry after `serve --key-grace` is tested below, and
    # in-process with Settings(key_grace_s=...).
    assert rotated["previous_valid_until"] > time.time() + 3000
    start = mark(bridge)
    session = raw.open_session("rotatee")  # old key, in grace
    tool_result(raw.post("rotatee", _call("old key in grace"), session=session))
    new_secret = decode_secret(rotated["secret"])
    tool_result(
        raw.post(
            "rotatee",
            _call("new key"),
            session=session,
            key_id=rotated["key_id"],
            secret=new_secret,
        )
    )
    sent = messages_with(bridge, "old key in grace", start) + messages_with(
        bridge, "new key", start
    )
    assert [m.actor for m in sent] == ["rotatee", "rotatee"]
    assert events_after(bridge, start, ["AuthRejected"]) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_rotated_key_after_grace_is_refused(tmp_path: Path) -> None:
    """In-process server (real HTTP on loopback) with a 1 s grace period."""
    port = _free_port()
    settings = Settings(host="127.0.0.1", port=port, db=tmp_path / "lighthouse.db", key_grace_s=1.0)
    app = create_app(settings)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        service = app[BRIDGE].agents
        added = await service.add("dora", [], [], "attack-suite")
        old_key, old_secret = added["key_id"], decode_secret(added["secret"])
        rotated = await service.rotate("dora", "attack-suite")
        while time.time() <= rotated["previous_valid_until"] + 0.2:
            await asyncio.sleep(0.1)
        body = initialize_body()
        url = f"http://127.0.0.1:{port}/mcp"
        async with httpx2.AsyncClient(timeout=30) as http:

            def headers(key_id: str, secret: bytes) -> dict[str, str]:
                base = {"Content-Type": "application/json", "Accept": ACCEPT}
                return {**base, **sign_request("POST", "/mcp", "", base, body, key_id, secret)}

            expired = await http.post(url, content=body, headers=headers(old_key, old_secret))
            fresh = await http.post(
                url,
                content=body,
                headers=headers(rotated["key_id"], decode_secret(rotated["secret"])),
            )
        assert_refused(expired, 401, "invalid_signature")
        assert "mcp-session-id" not in expired.headers
        assert fresh.status_code == 200
        rejected = await read_events(settings.db, types=["AuthRejected"])
        assert [(r.data["reason"], r.data["agent"], r.data["key_id"]) for r in rejected] == [
            ("expired_key", "dora", old_key)
        ]
    finally:
        await runner.cleanup()


@pytest.fixture
def short_grace_bridge(tmp_path: Path) -> Iterator[BridgeProcess]:
    b = BridgeProcess(tmp_path, extra_args=("--key-grace", "1"))
    b.add_agent("dora")
    try:
        yield b
    finally:
        if b.proc is not None:
            b.stop()


def test_serve_accepts_a_key_grace_flag(short_grace_bridge: BridgeProcess) -> None:
    bridge = short_grace_bridge
    bridge.start()
    status, rotated = bridge.admin("POST", "/admin/agents/dora/rotate", {})
    assert status == 200
    assert rotated["previous_valid_until"] < time.time() + 5
    while time.time() <= rotated["previous_valid_until"] + 0.2:
        time.sleep(0.1)
    raw = RawClient(bridge)
    try:
        start = mark(bridge)
        _refused(
            bridge,
            start,
            raw.post("dora", initialize_body()),
            "invalid_signature",
            "expired_key",
            agent="dora",
        )
    finally:
        raw.close()


# -- size limits -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header", ["Signature-Input", "Signature", "Content-Digest", "Mcp-Session-Id"]
)
def test_oversized_signature_header(
    bridge: BridgeProcess, raw: RawClient, alice_session: str, header: str
) -> None:
    content = f"big {header}"
    request = raw.build("alice", _call(content), session=alice_session)
    start = mark(bridge)
    response = raw.send(request, **{header: request.headers[header] + " " + "A" * 1100})
    _refused(bridge, start, response, "header_too_large", status=431, agent=None)
    assert messages_with(bridge, content, start) == []


def test_oversized_other_header_is_refused_before_anything_runs(
    bridge: BridgeProcess, raw: RawClient, alice_session: str
) -> None:
    """Beyond aiohttp's 8 KiB field limit the HTTP parser refuses the request itself
    (status 400 from aiohttp, before any middleware, so no JSON body and no event)."""
    request = raw.build("alice", _call("huge header"), session=alice_session)
    start = mark(bridge)
    response = raw.send(request, **{"X-Padding": "A" * 10_000})
    assert response.status_code in (400, 431)
    assert messages_with(bridge, "huge header", start) == []


def test_oversized_body(bridge: BridgeProcess, raw: RawClient, alice_session: str) -> None:
    body = _call("x" * (1 << 20))
    request = raw.build("alice", body, session=alice_session)
    start = mark(bridge)
    response = raw.send(request)
    _refused(bridge, start, response, "body_too_large", status=413, agent=None)


def test_oversized_chunked_body(bridge: BridgeProcess, raw: RawClient, alice_session: str) -> None:
    """No Content-Length to check up front: the limit applies while reading."""
    body = _call("y" * (1 << 20) + "z" * 4096)
    request = raw.build("alice", body, session=alice_session)

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    start = mark(bridge)
    response = raw.http.post("/mcp", content=chunks(), headers=request.headers)
    _refused(bridge, start, response, "body_too_large", status=413, agent=None)


AUTH_REJECTED_FIELDS = {"reason", "agent", "key_id", "remote", "method", "path", "status"}


def test_every_auth_rejected_event_has_the_same_fields(
    bridge: BridgeProcess, raw: RawClient
) -> None:
    start = mark(bridge)
    unsigned = {"Content-Type": "application/json", "Accept": ACCEPT}
    assert (
        raw.http.post(
            "/mcp", content=b"{}", headers={**unsigned, "Origin": "http://evil.example"}
        ).status_code
        == 403
    )
    assert (
        raw.http.post(
            "/mcp", content=b"{}", headers={**unsigned, "Host": "evil.example"}
        ).status_code
        == 403
    )
    assert raw.http.post("/mcp", content=b"x" * (2 << 20), headers=unsigned).status_code == 413
    assert raw.http.post("/mcp", content=b"{}", headers=unsigned).status_code == 401
    events = events_after(bridge, start, ["AuthRejected"])
    assert [e.data["reason"] for e in events] == [
        "forbidden_origin",
        "forbidden_host",
        "body_too_large",
        "missing_signature",
    ]
    for event in events:
        assert set(event.data) >= AUTH_REJECTED_FIELDS, (event.data["reason"], event.data)
