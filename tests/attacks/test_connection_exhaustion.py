"""Connection exhaustion before auth (issue 16.6): idle sockets, headers or bodies sent a
byte at a time must not hold the server's descriptors, buffers or handlers.

Defences: a per-address connection cap (the excess is reset at accept), a header deadline
(aiohttp's keep-alive timer, set by `--header-timeout`), signature headers verified before
any body byte is awaited, and a body deadline that moves with the bytes received
(`--body-min-rate` after a 5 s grace).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx2
import pytest

from tests.harness import BridgeProcess

from .conftest import RawClient, events_after, initialize_body, mark, metric, start_bridge

CAP = 20
HEADER_TIMEOUT = 2.0


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeProcess]:
    b = start_bridge(
        tmp_path_factory.mktemp("connections"),
        "--max-connections-per-address",
        str(CAP),
        "--header-timeout",
        str(HEADER_TIMEOUT),
    )
    try:
        yield b
    finally:
        b.stop()


def _connect(bridge: BridgeProcess, source: str = "127.0.0.1") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", bridge.port), timeout=10, source_address=(source, 0))
    return s


def _closed_within(s: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed *s* (EOF or reset), or None if it stayed open."""
    began = time.monotonic()
    s.settimeout(seconds)
    try:
        while True:
            data = s.recv(65536)
            if not data:
                return time.monotonic() - began
    except ConnectionResetError:
        return time.monotonic() - began
    except TimeoutError:
        return None


def _health_from(bridge: BridgeProcess, source: str) -> int:
    transport = httpx2.HTTPTransport(local_address=source)
    with httpx2.Client(transport=transport, timeout=10) as http:
        return http.get(f"http://127.0.0.1:{bridge.port}/health").status_code


def test_idle_connections_beyond_the_cap_are_reset(bridge: BridgeProcess) -> None:
    idle = [_connect(bridge) for _ in range(CAP)]
    try:
        time.sleep(0.3)
        extra = _connect(bridge)
        try:
            assert _closed_within(extra, 2.0) is not None, "the connection over the cap stayed"
        finally:
            extra.close()
        # Another address is served meanwhile (127.0.0.2 is loopback too).
        assert _health_from(bridge, "127.0.0.2") == 200
        # The idle ones never sent a request: the header deadline closes them as well.
        for s in idle:
            assert _closed_within(s, HEADER_TIMEOUT + 3) is not None
    finally:
        for s in idle:
            s.close()
    # Once they are gone, the address is served again.
    assert _health_from(bridge, "127.0.0.1") == 200
    assert metric(bridge, "lighthouse_connections_refused_total") >= 1


def test_headers_sent_a_byte_at_a_time_are_cut_off(bridge: BridgeProcess) -> None:
    s = _connect(bridge)
    try:
        began = time.monotonic()
        request = f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{bridge.port}\r\nX-Slow: ".encode()
        s.sendall(request)
        s.settimeout(0.5)
        closed = False
        while time.monotonic() - began < HEADER_TIMEOUT + 5:
            try:
                s.sendall(b"a")
                if s.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
        assert closed, "a trickle of header bytes held the connection"
        assert time.monotonic() - began < HEADER_TIMEOUT + 5
    finally:
        s.close()
    assert _health_from(bridge, "127.0.0.1") == 200


def test_unsigned_request_is_refused_before_its_body(bridge: BridgeProcess) -> None:
    """Headers announce a 100 kB body that never comes: the refusal does not wait for it."""
    s = _connect(bridge)
    try:
        start = mark(bridge)
        s.sendall(
            (
                f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{bridge.port}\r\n"
                "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
            ).encode()
        )
        s.settimeout(3)
        began = time.monotonic()
        head = s.recv(4096)
        assert head.startswith(b"HTTP/1.1 401"), head
        assert b"missing_signature" in head or b"Connection: close" in head
        assert time.monotonic() - began < 2
        # The unread body is discarded for at most 2 s (lingering close), then it is closed.
        assert _closed_within(s, 4) is not None
    finally:
        s.close()
    [event] = events_after(bridge, start, ["AuthRejected"])
    assert event.data["reason"] == "missing_signature"


def test_signed_body_at_one_byte_per_second_is_refused(bridge: BridgeProcess) -> None:
    raw = RawClient(bridge)
    try:
        body = initialize_body()
        signed = raw.build("alice", body)
        lines = ["POST /mcp HTTP/1.1", f"Host: 127.0.0.1:{bridge.port}"]
        lines += [f"{k}: {v}" for k, v in signed.headers.items()]
        lines += [f"Content-Length: {len(body)}"]
        s = _connect(bridge)
        try:
            start = mark(bridge)
            s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            s.settimeout(1.0)
            began = time.monotonic()
            answer = b""
            for byte in body:
                try:
                    s.sendall(bytes([byte]))
                except (BrokenPipeError, ConnectionResetError):
                    break
                try:
                    answer += s.recv(4096)
                except TimeoutError:
                    continue
                if answer:
                    break
            assert answer.startswith(b"HTTP/1.1 408"), answer
            assert b"body_too_slow" in answer
            assert time.monotonic() - began < 10  # 5 s grace, then the rate must hold
        finally:
            s.close()
        [event] = events_after(bridge, start, ["AuthRejected"])
        assert (event.data["reason"], event.data["agent"]) == ("body_too_slow", None)
        # The agent itself is not locked out: its next normal request works.
        assert raw.post("alice", initialize_body()).status_code == 200
    finally:
        raw.close()
