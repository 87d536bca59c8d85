"""Shared tooling for the attack suite: a real bridge per module and a raw signed client.

Every attack is made with hand-built HTTP requests (``httpx2``, no SDK) so the test
controls each header and byte; ``RawClient`` signs them with the same profile code the
legitimate client uses (`security.sign_request`). Assertions read the event store beside
the running bridge (read-only), starting after a position mark taken before the attack, so
tests sharing one bridge process do not see each other's events.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import secrets
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest

from events import Record
from security import decode_secret, sign_request
from security.signatures import hmac_sha256, serialize_signature_params, signature_base
from tests.harness import Agent, BridgeProcess, read_events

PROTOCOL = "2025-11-25"
ACCEPT = "application/json, text/event-stream"
SIDE_EFFECT_TYPES = [
    "MessageSent",
    "RequestCreated",
    "FlagChanged",
    "AgentRegistered",
    "AgentKeyRotated",
    "AgentKeyIssued",
    "AgentRevoked",
]

_ids = itertools.count(1)
INDIVIDUAL = "1000000"


def start_bridge(
    workdir: Path, *extra_args: str, more_agents: tuple[str, ...] = ()
) -> BridgeProcess:
    """A running bridge with agents alice, bob (role expert, capability review), carol
    and *more_agents* (no role). Agents are registered through the admin API once the
    bridge runs: one HTTP call each instead of one CLI process (about 1 s) each.

    These modules assert the event of each refusal they provoke, so their bridge records
    every refusal individually (`--refusal-burst` of `INDIVIDUAL`); the write budget that
    aggregates repeated refusals (default 5 per source and reason per minute) is attacked
    with its defaults in `test_log_flood.py`. *extra_args* come later and win."""
    bridge = BridgeProcess(workdir, extra_args=("--refusal-burst", INDIVIDUAL, *extra_args)).start()
    specs = [("alice", [], []), ("bob", ["expert"], ["review"]), ("carol", [], [])]
    specs += [(name, [], []) for name in more_agents]
    for name, roles, capabilities in specs:
        status, created = bridge.admin(
            "POST", "/admin/agents", {"name": name, "roles": roles, "capabilities": capabilities}
        )
        assert status == 201, (status, created)
        bridge.agents[name] = Agent(created["agent"], created["key_id"], created["secret"])
    return bridge


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeProcess]:
    """One bridge process per test module (starting one costs about a second)."""
    b = start_bridge(tmp_path_factory.mktemp("bridge"))
    try:
        yield b
    finally:
        if b.proc is not None:
            b.stop()


def rpc(
    method: str, params: Mapping[str, Any] | None = None, *, notification: bool = False
) -> bytes:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if not notification:
        message["id"] = next(_ids)
    if params is not None:
        message["params"] = dict(params)
    return json.dumps(message).encode()


def initialize_body() -> bytes:
    return rpc(
        "initialize",
        {
            "protocolVersion": PROTOCOL,
            "capabilities": {},
            "clientInfo": {"name": "attack-suite", "version": "1"},
        },
    )


def tool_call_body(name: str, arguments: Mapping[str, Any]) -> bytes:
    return rpc("tools/call", {"name": name, "arguments": dict(arguments)})


def jsonrpc_payload(response: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC message of a response, whether sent as JSON or as one SSE event."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        for line in response.text.splitlines():
            if line.startswith("data:") and line[5:].strip():
                message: dict[str, Any] = json.loads(line[5:])
                if "result" in message or "error" in message:
                    return message
        raise AssertionError(f"no JSON-RPC response in stream: {response.text!r}")
    payload: dict[str, Any] = response.json()
    return payload


def tool_result(response: httpx2.Response) -> dict[str, Any]:
    """The structured result of a successful tools/call."""
    assert response.status_code == 200, (response.status_code, response.text)
    message = jsonrpc_payload(response)
    assert "result" in message, message
    result: dict[str, Any] = message["result"]
    assert not result.get("isError"), result
    structured: dict[str, Any] = result["structuredContent"]
    return structured


@dataclass(frozen=True)
class Signed:
    """A fully built request: replay it byte for byte with `RawClient.send`."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class RawClient:
    """Hand-built signed requests against a running bridge."""

    def __init__(self, bridge: BridgeProcess) -> None:
        self.bridge = bridge
        self.http = httpx2.Client(base_url=bridge.url, timeout=30.0)

    def close(self) -> None:
        self.http.close()

    def agent(self, name: str) -> Agent:
        return self.bridge.agents[name]

    def build(
        self,
        name: str,
        body: bytes = b"",
        *,
        method: str = "POST",
        path: str = "/mcp",
        query: str = "",
        session: str | None = None,
        key_id: str | None = None,
        secret: bytes | None = None,
        nonce: str | None = None,
        created: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Signed:
        """A request signed as agent *name* (or with the *key_id* / *secret* overrides)."""
        agent = self.agent(name)
        base: dict[str, str] = {"Accept": ACCEPT}
        if body:
            base["Content-Type"] = "application/json"
        if session is not None:
            base["Mcp-Session-Id"] = session
            base["Mcp-Protocol-Version"] = PROTOCOL
        base.update(headers or {})
        signature = sign_request(
            method,
            path,
            query,
            base,
            body,
            key_id or agent.key_id,
            secret if secret is not None else decode_secret(agent.secret),
            nonce=nonce,
            created=created,
        )
        full_path = path + ("?" + query if query else "")
        return Signed(method, full_path, {**base, **signature}, body)

    def send(self, request: Signed, **overrides: str) -> httpx2.Response:
        """Send *request*; keyword overrides replace headers (``None``-free by design)."""
        headers = {**request.headers, **overrides}
        return self.http.request(
            request.method, request.path, content=request.body, headers=headers
        )

    def post(self, name: str, body: bytes, **kwargs: Any) -> httpx2.Response:
        return self.send(self.build(name, body, **kwargs))

    def open_session(self, name: str) -> str:
        """initialize + notifications/initialized as *name*; returns the session id."""
        response = self.post(name, initialize_body())
        assert response.status_code == 200, (response.status_code, response.text)
        session = response.headers["mcp-session-id"]
        ack = self.post(name, rpc("notifications/initialized", notification=True), session=session)
        assert ack.status_code == 202, (ack.status_code, ack.text)
        return session

    def send_message(
        self, name: str, session: str, to: str, content: str, **kwargs: Any
    ) -> httpx2.Response:
        body = tool_call_body("send_message", {"to": to, "content": content})
        return self.post(name, body, session=session, **kwargs)


@pytest.fixture(scope="module")
def raw(bridge: BridgeProcess) -> Iterator[RawClient]:
    client = RawClient(bridge)
    try:
        yield client
    finally:
        client.close()


def custom_signature(
    secret: bytes,
    key_id: str,
    components: list[tuple[str, str]],
    *,
    created: int | None = None,
    nonce: str | None = None,
    alg: str = "hmac-sha256",
    label: str = "lh",
) -> dict[str, str]:
    """A correctly MAC'd signature over exactly *components* (name, value): lets a test
    sign what a buggy or hostile client would, e.g. leave out a required component."""
    params: list[tuple[str, int | str]] = [
        ("created", int(time.time()) if created is None else created),
        ("nonce", secrets.token_urlsafe(16) if nonce is None else nonce),
        ("keyid", key_id),
        ("alg", alg),
    ]
    signature_params = serialize_signature_params([c for c, _ in components], params)
    mac = hmac_sha256(secret, signature_base(components, signature_params))
    return {
        "Signature-Input": f"{label}={signature_params}",
        "Signature": f"{label}=:{base64.b64encode(mac).decode()}:",
    }


def metric(bridge: BridgeProcess, name: str, label: str = "") -> float:
    """The sum of a Prometheus metric's samples whose line contains *label* (from loopback,
    where `/metrics` is served without a token)."""
    text = httpx2.get(bridge.url + "/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and label in line
    )


# -- reading the store ---------------------------------------------------------------------


def mark(bridge: BridgeProcess) -> int:
    """The store's head position now: events after it belong to what the test does next."""
    position: int = bridge.health()["store"]["position"]
    return position


def events_after(
    bridge: BridgeProcess, position: int, types: list[str] | None = None
) -> list[Record]:
    # In a thread of its own, so sync and async tests can both call it.
    with ThreadPoolExecutor(1) as pool:
        records = pool.submit(asyncio.run, read_events(bridge.db, types=types)).result()
    return [r for r in records if r.position > position]


def side_effects(bridge: BridgeProcess, position: int) -> list[Record]:
    """Events that would mean an attack got through to a tool or an admin operation."""
    return events_after(bridge, position, SIDE_EFFECT_TYPES)


def messages_with(bridge: BridgeProcess, content: str, position: int = 0) -> list[Record]:
    return [
        r
        for r in events_after(bridge, position, ["MessageSent"])
        if r.data.get("content") == content
    ]


def assert_refused(response: httpx2.Response, status: int, reason: str) -> dict[str, Any]:
    """The refusal contract: status, JSON body with `error` and the public `reason`."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers.get("content-type", "").startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body.get("reason") == reason, body
    assert isinstance(body.get("error"), str) and body["error"], body
    return body


def one_event(bridge: BridgeProcess, position: int, type_: str) -> Record:
    """Exactly one event of *type_* since *position* (fails loudly otherwise)."""
    found = events_after(bridge, position, [type_])
    assert len(found) == 1, [(r.type, r.data) for r in found]
    assert found[0].stream == "security", found[0].stream
    return found[0]


def assert_no_secret_leak(record: Record, *secrets: str) -> None:
    text = json.dumps(record.data)
    for secret in secrets:
        assert secret not in text, f"secret material in {record.type}"


def call_tool(
    raw: RawClient, name: str, session: str, tool: str, arguments: Mapping[str, Any]
) -> dict[str, Any]:
    """A tools/call as *name*: the JSON-RPC result (`isError` set for a refusal)."""
    response = raw.post(name, tool_call_body(tool, arguments), session=session)
    assert response.status_code == 200, (response.status_code, response.text[:500])
    message = jsonrpc_payload(response)
    assert "result" in message, message
    result: dict[str, Any] = message["result"]
    return result


def error_text(result: Mapping[str, Any]) -> str:
    """The text of a refused tool call (fails if the call was not refused)."""
    assert result.get("isError"), result
    return str(result["content"][0]["text"])
