"""bridge.mcp.wire and bridge.mcp.protocol: messages in, verdicts out, no server."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from bridge.mcp.protocol import (
    META_CLIENT_CAPABILITIES,
    META_PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    check_session_version,
    duplicated_routing_header,
    elicitation_params,
    elicits_forms,
    is_modern_request,
    modern_envelope,
    negotiate,
)
from bridge.mcp.wire import (
    HEADER_MISMATCH,
    INVALID_PARAMS,
    INVALID_REQUEST,
    PARSE_ERROR,
    UNSUPPORTED_PROTOCOL_VERSION,
    ProtocolError,
    decode_message,
)

MODERN = "2026-07-28"


def _modern(method: str = "tools/list", **params: object) -> bytes:
    import json

    meta = {META_PROTOCOL_VERSION: MODERN, META_CLIENT_CAPABILITIES: {}}
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {"_meta": meta, **params}}
    return json.dumps(body).encode()


def _headers(**values: str) -> CIMultiDict[str]:
    return CIMultiDict({k.replace("_", "-"): v for k, v in values.items()})


def _code(body: bytes) -> int:
    with pytest.raises(ProtocolError) as caught:
        decode_message(body)
    return caught.value.code


def test_message_kinds() -> None:
    request = decode_message(b'{"jsonrpc":"2.0","id":7,"method":"ping"}')
    assert request.is_request and request.request_id == 7 and request.args == {}
    note = decode_message(b'{"jsonrpc":"2.0","method":"notifications/initialized"}')
    assert note.is_notification and not note.is_request
    answer = decode_message(b'{"jsonrpc":"2.0","id":"a","result":{"action":"accept"}}')
    assert answer.is_response and answer.request_id == "a"
    null_id = decode_message(b'{"jsonrpc":"2.0","id":null,"method":"ping"}')
    assert null_id.is_request and null_id.request_id is None


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"{not json", PARSE_ERROR),
        (b"", PARSE_ERROR),
        (b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', INVALID_REQUEST),  # batch
        (b'"ping"', INVALID_REQUEST),
        (b'{"jsonrpc":"1.0","id":1,"method":"ping"}', INVALID_REQUEST),
        (b'{"id":1,"method":"ping"}', INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1}', INVALID_REQUEST),  # neither method nor result
        (b'{"jsonrpc":"2.0","method":"x","params":[1]}', INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":{"a":1},"method":"x"}', INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","result":{}}', INVALID_REQUEST),  # a response needs its id
    ],
)
def test_bad_bodies(body: bytes, code: int) -> None:
    assert _code(body) == code


def test_errors_carry_their_http_status() -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_message(b"{")
    assert caught.value.status == 400


def test_negotiation() -> None:
    assert negotiate("2025-06-18") == "2025-06-18"
    assert negotiate("2025-11-25") == "2025-11-25"
    assert negotiate("2024-11-05") == "2025-11-25"  # our latest; the client decides
    assert negotiate(None) == "2025-11-25"


def test_era_of_a_sessionless_request() -> None:
    assert not is_modern_request(None)
    assert not is_modern_request("2025-11-25")
    assert is_modern_request(MODERN)
    assert is_modern_request("2099-01-01")  # told it is unsupported by the modern ladder


def test_form_elicitation_capability() -> None:
    assert elicits_forms({"elicitation": {}})
    assert elicits_forms({"elicitation": {"form": {}, "url": {}}})
    assert not elicits_forms({"elicitation": {"url": {}}})
    assert not elicits_forms({})
    assert not elicits_forms(None)
    assert "mode" not in elicitation_params("2025-06-18", "q", {})
    assert elicitation_params("2025-11-25", "q", {})["mode"] == "form"


def test_modern_envelope_accepted() -> None:
    message = decode_message(_modern("tools/call", name="ask"))
    envelope = modern_envelope(
        message, _headers(MCP_Protocol_Version=MODERN, Mcp_Method="tools/call", Mcp_Name="ask")
    )
    assert envelope.version == MODERN and not envelope.elicitation


@pytest.mark.parametrize(
    ("body", "headers", "code"),
    [
        (
            b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}',
            {"MCP_Protocol_Version": MODERN, "Mcp_Method": "tools/list"},
            INVALID_PARAMS,
        ),
        (
            _modern("tools/list"),
            {"MCP_Protocol_Version": "2025-11-25", "Mcp_Method": "tools/list"},
            HEADER_MISMATCH,
        ),
        (_modern("tools/list"), {"MCP_Protocol_Version": MODERN}, HEADER_MISMATCH),
        (
            _modern("tools/call", name="ask"),
            {"MCP_Protocol_Version": MODERN, "Mcp_Method": "tools/call", "Mcp_Name": "respond"},
            HEADER_MISMATCH,
        ),
    ],
)
def test_modern_ladder(body: bytes, headers: dict[str, str], code: int) -> None:
    with pytest.raises(ProtocolError) as caught:
        modern_envelope(decode_message(body), _headers(**headers))
    assert caught.value.code == code and caught.value.status == 400


def test_unsupported_modern_version_lists_ours() -> None:
    body = _modern("tools/list").replace(MODERN.encode(), b"2099-01-01")
    with pytest.raises(ProtocolError) as caught:
        modern_envelope(
            decode_message(body),
            _headers(MCP_Protocol_Version="2099-01-01", Mcp_Method="tools/list"),
        )
    assert caught.value.code == UNSUPPORTED_PROTOCOL_VERSION
    assert caught.value.data == {"supported": list(SUPPORTED_VERSIONS), "requested": "2099-01-01"}


def test_session_version_header() -> None:
    check_session_version(None, "2025-11-25")  # old clients omit it
    check_session_version("2025-11-25", "2025-11-25")
    check_session_version("2025-03-26", "2025-11-25")  # what the SDK server tolerates too
    with pytest.raises(ProtocolError) as caught:
        check_session_version("2026-07-28", "2025-11-25")
    assert caught.value.code == INVALID_REQUEST
    with pytest.raises(ProtocolError) as caught:
        check_session_version("1999-01-01", "2025-11-25")
    assert caught.value.code == UNSUPPORTED_PROTOCOL_VERSION


def test_duplicated_routing_header() -> None:
    headers = CIMultiDict([("Mcp-Method", "a"), ("mcp-method", "b")])
    assert duplicated_routing_header(headers) == "Mcp-Method"
    assert duplicated_routing_header(_headers(Mcp_Method="a")) is None
