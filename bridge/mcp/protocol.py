"""The era rules of MCP over Streamable HTTP, apart from I/O.

Three protocol revisions share one endpoint. 2025-06-18 and 2025-11-25 are *session*
eras: `initialize` negotiates a version and opens a session named by `Mcp-Session-Id`,
later requests carry that id and `MCP-Protocol-Version`, and the server pushes requests on
the session's GET stream. 2026-07-28 is *single-exchange*: no `initialize`, every request
carries its envelope in `params._meta`, its method and name in headers, and results carry
`resultType`. Everything here is a pure function of headers and decoded messages, so the
rules are tested by handing messages in and checking what comes out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from .wire import (
    HEADER_MISMATCH,
    INVALID_PARAMS,
    INVALID_REQUEST,
    UNSUPPORTED_PROTOCOL_VERSION,
    Message,
    ProtocolError,
)

SESSION_VERSIONS: Final = ("2025-06-18", "2025-11-25")
LATEST_SESSION_VERSION: Final = "2025-11-25"
MODERN_VERSIONS: Final = ("2026-07-28",)
SUPPORTED_VERSIONS: Final = (*SESSION_VERSIONS, *MODERN_VERSIONS)
# Revisions a client may still name in a handshake; we answer them with our latest.
HANDSHAKE_VERSIONS: Final = ("2024-11-05", "2025-03-26", *SESSION_VERSIONS)

PROTOCOL_VERSION_HEADER: Final = "MCP-Protocol-Version"
SESSION_HEADER: Final = "Mcp-Session-Id"
METHOD_HEADER: Final = "Mcp-Method"
NAME_HEADER: Final = "Mcp-Name"
ROUTING_HEADERS: Final = (PROTOCOL_VERSION_HEADER, METHOD_HEADER, NAME_HEADER)

META_PROTOCOL_VERSION: Final = "io.modelcontextprotocol/protocolVersion"
META_CLIENT_CAPABILITIES: Final = "io.modelcontextprotocol/clientCapabilities"
META_CLIENT_INFO: Final = "io.modelcontextprotocol/clientInfo"
META_SERVER_INFO: Final = "io.modelcontextprotocol/serverInfo"

# Methods of the session eras that 2026-07-28 removed: a modern client naming one is told
# the method does not exist at its version (-32601 / 404), not that its envelope is bad.
REMOVED_IN_MODERN: Final = frozenset(
    {
        "initialize",
        "ping",
        "logging/setLevel",
        "resources/subscribe",
        "resources/unsubscribe",
    }
)
NAME_BEARING: Final = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}


def negotiate(requested: object) -> str:
    """The session version to answer `initialize` with: the client's when we support it,
    else our latest (the client then decides whether it can go on)."""
    return (
        requested
        if isinstance(requested, str) and requested in SESSION_VERSIONS
        else (LATEST_SESSION_VERSION)
    )


def elicits_forms(capabilities: object) -> bool:
    """Whether declared client capabilities include form elicitation: `elicitation: {}`
    (2025-06-18, and 2025-11-25's shorthand for form) or `elicitation: {form: {}}`."""
    if not isinstance(capabilities, Mapping):
        return False
    elicitation = capabilities.get("elicitation")
    if not isinstance(elicitation, Mapping):
        return False
    return not elicitation or "form" in elicitation


def elicitation_params(version: str, message: str, schema: dict[str, Any]) -> dict[str, Any]:
    """`elicitation/create` params for a session version (`mode` arrived in 2025-11-25)."""
    params: dict[str, Any] = {"message": message, "requestedSchema": schema}
    if version != "2025-06-18":
        params["mode"] = "form"
    return params


@dataclass(frozen=True, slots=True)
class Envelope:
    """What a 2026-07-28 request says about its client, from `params._meta`."""

    version: str
    capabilities: Mapping[str, Any]
    client_info: Any = None

    @property
    def elicitation(self) -> bool:
        return elicits_forms(self.capabilities)


def duplicated_routing_header(headers: Any) -> str | None:
    """A routing header sent more than once (first-copy and last-copy readers disagree)."""
    for name in ROUTING_HEADERS:
        if len(headers.getall(name, ())) > 1:
            return name
    return None


def unsupported(requested: object) -> ProtocolError:
    return ProtocolError(
        UNSUPPORTED_PROTOCOL_VERSION,
        f"protocol version {requested!r} is not supported; use one of "
        + ", ".join(SUPPORTED_VERSIONS),
        data={"supported": list(SUPPORTED_VERSIONS), "requested": requested},
    )


def modern_envelope(message: Message, headers: Mapping[str, str]) -> Envelope:
    """Check a 2026-07-28 request's envelope and routing headers, in the spec's order:
    `_meta` present and complete (-32602), headers agree with the body (-32020), then the
    version is one we serve (-32022)."""
    meta = message.args.get("_meta")
    if not isinstance(meta, Mapping):
        raise ProtocolError(
            INVALID_PARAMS,
            f"params._meta must be an object carrying {META_PROTOCOL_VERSION!r} and "
            f"{META_CLIENT_CAPABILITIES!r} (2026-07-28 requests carry their envelope)",
        )
    missing = [k for k in (META_PROTOCOL_VERSION, META_CLIENT_CAPABILITIES) if k not in meta]
    if missing:
        raise ProtocolError(
            INVALID_PARAMS, f"params._meta is missing the required key(s): {', '.join(missing)}"
        )
    version = meta[META_PROTOCOL_VERSION]
    if headers.get(PROTOCOL_VERSION_HEADER) != version:
        raise ProtocolError(
            HEADER_MISMATCH,
            f"{PROTOCOL_VERSION_HEADER} header does not match params._meta's protocol version",
        )
    if headers.get(METHOD_HEADER) != message.method:
        raise ProtocolError(
            HEADER_MISMATCH, f"{METHOD_HEADER} header does not match the body's method"
        )
    name_key = NAME_BEARING.get(message.method)  # type: ignore[arg-type]
    if name_key is not None:
        value = message.args.get(name_key)
        if value is not None and headers.get(NAME_HEADER) != value:
            raise ProtocolError(
                HEADER_MISMATCH, f"{NAME_HEADER} header does not match the body's {name_key!r}"
            )
    if not isinstance(version, str):
        raise ProtocolError(INVALID_PARAMS, "the protocol version in params._meta must be a string")
    if version not in MODERN_VERSIONS:
        raise unsupported(version)
    capabilities = meta[META_CLIENT_CAPABILITIES]
    if not isinstance(capabilities, Mapping):
        raise ProtocolError(INVALID_PARAMS, "params._meta client capabilities must be an object")
    return Envelope(version, capabilities, meta.get(META_CLIENT_INFO))


def check_session_version(header: str | None, negotiated: str) -> None:
    """Later requests of a session name a handshake-era version, or none (old clients).

    We do not insist on the negotiated one: clients in the field (and the conformance
    suite) send 2025-03-26 on sessions negotiated later, and the official SDK serves them;
    a version we do not know, or a 2026-07-28 request carrying a session, is refused."""
    if header is None or header in HANDSHAKE_VERSIONS:
        return
    if header in MODERN_VERSIONS:
        raise ProtocolError(
            INVALID_REQUEST,
            f"{PROTOCOL_VERSION_HEADER} {header!r} has no sessions: drop {SESSION_HEADER} "
            f"(this session negotiated {negotiated!r})",
        )
    raise unsupported(header)


def is_modern_request(version_header: str | None) -> bool:
    """A request with no session takes the 2026-07-28 rules unless it names a handshake
    version (or none: clients of the session eras omit the header on `initialize`)."""
    return version_header is not None and version_header not in HANDSHAKE_VERSIONS


def tool_result(payload: dict[str, Any], text: str) -> dict[str, Any]:
    return {
        "content": [{"type": "text", "text": text}],
        "structuredContent": payload,
        "isError": False,
    }


def tool_error(message: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": message}], "isError": True}
