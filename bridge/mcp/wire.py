"""JSON-RPC 2.0 on the wire: one decoded shape for every inbound message, and encoders.

An inbound body is decoded once, by msgspec, into `Message`; whether it is a request, a
notification or a response to one of our server→client requests follows from which
members are present (JSON-RPC 2.0 §4: a request without `id` is a notification). Anything
the era rules reject is a `ProtocolError`: a value carrying the JSON-RPC code, a message a
person can act on and the HTTP status to answer with (like h11's `RemoteProtocolError`).
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
SESSION_NOT_FOUND: Final = -32001
REQUEST_CANCELLED: Final = -32800
HEADER_MISMATCH: Final = -32020
MISSING_CLIENT_CAPABILITY: Final = -32021
UNSUPPORTED_PROTOCOL_VERSION: Final = -32022

# HTTP status per JSON-RPC code (2026-07-28 transport table; the 2025 eras answer errors
# on requests with 200 or 400 alike, and the SDK clients read either).
HTTP_STATUS: Final = {
    PARSE_ERROR: 400,
    INVALID_REQUEST: 400,
    INVALID_PARAMS: 400,
    HEADER_MISMATCH: 400,
    MISSING_CLIENT_CAPABILITY: 400,
    UNSUPPORTED_PROTOCOL_VERSION: 400,
    METHOD_NOT_FOUND: 404,
    SESSION_NOT_FOUND: 404,
}

RequestId = int | str


class ProtocolError(Exception):
    """A message the protocol refuses, with everything needed to answer it."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        status: int | None = None,
        data: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status if status is not None else HTTP_STATUS.get(code, 200)
        self.data = data
        self.headers = headers or {}


class Message(msgspec.Struct, omit_defaults=True):
    """Any JSON-RPC 2.0 object; `UNSET` members were absent from the body."""

    jsonrpc: str | msgspec.UnsetType = msgspec.UNSET
    id: int | str | msgspec.UnsetType | None = msgspec.UNSET
    method: str | msgspec.UnsetType = msgspec.UNSET
    params: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    result: Any = msgspec.UNSET
    error: Any = msgspec.UNSET

    @property
    def is_request(self) -> bool:
        return self.method is not msgspec.UNSET and self.id is not msgspec.UNSET

    @property
    def is_notification(self) -> bool:
        return self.method is not msgspec.UNSET and self.id is msgspec.UNSET

    @property
    def is_response(self) -> bool:
        return self.method is msgspec.UNSET and (
            self.result is not msgspec.UNSET or self.error is not msgspec.UNSET
        )

    @property
    def request_id(self) -> RequestId | None:
        return None if self.id is msgspec.UNSET else self.id

    @property
    def args(self) -> dict[str, Any]:
        return {} if self.params is msgspec.UNSET else self.params


_decoder = msgspec.json.Decoder(Message)
_encoder = msgspec.json.Encoder()
encode = _encoder.encode


def decode_message(body: bytes) -> Message:
    """One JSON-RPC message from a POST body, or the error that says why not."""
    try:
        message = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        if body.lstrip()[:1] == b"[":
            raise ProtocolError(
                INVALID_REQUEST, "batches are not supported: send one JSON-RPC message per POST"
            ) from None
        raise ProtocolError(INVALID_REQUEST, f"not a JSON-RPC 2.0 message: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ProtocolError(PARSE_ERROR, f"body is not valid JSON: {exc}") from None
    if message.jsonrpc != "2.0":
        raise ProtocolError(INVALID_REQUEST, 'JSON-RPC messages must carry "jsonrpc": "2.0"')
    if message.is_request or message.is_notification or message.is_response:
        if message.is_response and message.request_id is None:
            raise ProtocolError(INVALID_REQUEST, "a response must carry the id it answers")
        return message
    raise ProtocolError(INVALID_REQUEST, "a JSON-RPC message needs a method, or a result/error")


def result_message(request_id: RequestId | None, result: dict[str, Any]) -> bytes:
    return encode({"jsonrpc": "2.0", "id": request_id, "result": result})


def error_message(request_id: RequestId | None, code: int, message: str, data: Any = None) -> bytes:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return encode({"jsonrpc": "2.0", "id": request_id, "error": err})


def server_request(request_id: int, method: str, params: dict[str, Any]) -> bytes:
    return encode({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
