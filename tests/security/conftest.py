"""Shared helpers for the security tests: a fixed clock and a one-agent key table."""

from __future__ import annotations

import pytest

from security.nonces import InMemoryNonceStore
from security.signatures import RequestView, SignatureVerifier, sign_request

SECRET = bytes(range(32))
KEY_ID = "k_0123456789abcdef"
AGENT = "alice"
NOW = 1_800_000_000


class FakeClock:
    """A settable clock: tests move time instead of sleeping."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def keys(key_id: str):
    return (AGENT, SECRET) if key_id == KEY_ID else None


def signed_view(
    method: str = "POST",
    path: str = "/mcp",
    query: str = "",
    body: bytes = b'{"jsonrpc":"2.0","id":1,"method":"ping"}',
    session: str | None = "sess-1",
    created: int = NOW,
    nonce: str | None = None,
    secret: bytes = SECRET,
    key_id: str = KEY_ID,
) -> RequestView:
    headers = {"Content-Type": "application/json"}
    if session is not None:
        headers["Mcp-Session-Id"] = session
    headers.update(
        sign_request(
            method, path, query, headers, body, key_id, secret, nonce=nonce, created=created
        )
    )
    return RequestView(method, path, query, headers, body)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def verifier(clock: FakeClock) -> SignatureVerifier:
    return SignatureVerifier(keys, InMemoryNonceStore(300), clock=clock)
