"""Client address for the pre-signature limiter: the socket peer, X-Forwarded-For only via
configured proxies."""

from __future__ import annotations

from unittest.mock import Mock

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from bridge.auth import client_address


def _request(peer: str, forwarded: str | None = None) -> web.Request:
    transport = Mock()  # the socket: a boundary we do not own
    transport.get_extra_info.return_value = (peer, 40000)
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    return make_mocked_request("POST", "/mcp", headers=headers, transport=transport)


def test_forwarded_for_is_ignored_without_trusted_proxies() -> None:
    assert client_address(_request("203.0.113.9", "10.0.0.1"), ()) == "203.0.113.9"


def test_forwarded_for_from_an_untrusted_peer_is_ignored() -> None:
    assert client_address(_request("203.0.113.9", "10.0.0.1"), ("192.0.2.0/24",)) == "203.0.113.9"


def test_first_untrusted_hop_behind_trusted_proxies() -> None:
    request = _request("192.0.2.10", "198.51.100.7, 192.0.2.11")
    assert client_address(request, ("192.0.2.0/24",)) == "198.51.100.7"


def test_spoofed_leftmost_hop_does_not_win() -> None:
    # the client prepends a fake address; the proxy appends the real one
    request = _request("192.0.2.10", "1.2.3.4, 198.51.100.7")
    assert client_address(request, ("192.0.2.0/24",)) == "198.51.100.7"
