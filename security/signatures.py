"""RFC 9421 HTTP Message Signatures, narrowed to Lighthouse's one profile.

Why a narrow verifier of our own: every request to ``/mcp`` is verified, so the verifier
sits on the hot path and on the attack surface. A general RFC 9421 library resolves any
component a client names, accepts any algorithm it is configured with and raises
exceptions for malformed input. Here the profile is fixed (DESIGN.md, "Agent request
signatures"):

* label ``lh``; ``alg="hmac-sha256"`` required and fixed server-side (no downgrade);
* covered components: ``"@method" "@path"``, plus ``"@query"`` when the request has a
  query, ``"content-digest"`` when it has a body and ``"mcp-session-id"`` when that
  header is present;
* parameters exactly ``created``, ``nonce``, ``keyid``, ``alg``.

Anything else is a typed :class:`Rejection`, never an exception. Checks run cheapest and
least revealing first, and the nonce is recorded only after everything else passed, so
garbage or forged requests can never fill the nonce store::

    header sizes -> parse -> key lookup -> created within skew -> MAC (constant time)
    -> required components  (all before the body is read: check_headers)
    -> content-digest vs body (check_body) -> nonce claim

The low-level pieces (:func:`serialize_signature_params`, :func:`signature_base`,
:func:`hmac_sha256`) follow RFC 9421 §2.3/§2.5 generically so they can be checked against
the RFC's own examples.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from enum import StrEnum
from typing import Any

import msgspec

from security.digest import (
    DigestError,
    UnsupportedDigest,
    content_digest,
    verify_content_digest,
)
from security.nonces import NonceStore

__all__ = [
    "ALGORITHM",
    "LABEL",
    "KeyLookup",
    "Reason",
    "Rejection",
    "RequestView",
    "ResolvedKey",
    "SignatureVerifier",
    "Verified",
    "covered_components_for",
    "hmac_sha256",
    "serialize_signature_params",
    "sign_request",
    "signature_base",
]

LABEL = "lh"
ALGORITHM = "hmac-sha256"

_SESSION_HEADER = "mcp-session-id"
_ALLOWED_COMPONENTS = frozenset({"@method", "@path", "@query", "content-digest", _SESSION_HEADER})
_REQUIRED_PARAMS = ("created", "nonce", "keyid", "alg")


class Reason(StrEnum):
    """Stable rejection reasons, used in events, metrics and JSON error bodies."""

    MISSING_SIGNATURE = "missing_signature"
    MALFORMED_SIGNATURE = "malformed_signature"
    UNSUPPORTED_ALGORITHM = "unsupported_algorithm"
    INVALID_SIGNATURE = "invalid_signature"
    UNKNOWN_KEY = "unknown_key"  # internal; clients see invalid_signature
    REVOKED_KEY = "revoked_key"  # internal; clients see invalid_signature
    EXPIRED_KEY = "expired_key"  # internal (rotated key past its grace period)
    STALE_SIGNATURE = "stale_signature"
    FUTURE_SIGNATURE = "future_signature"
    MISSING_COMPONENT = "missing_component"
    DIGEST_MISMATCH = "digest_mismatch"
    UNSUPPORTED_DIGEST = "unsupported_digest"
    PREDATES_NONCE_STORE = "predates_nonce_store"
    REPLAYED_NONCE = "replayed_nonce"
    HEADER_TOO_LARGE = "header_too_large"


# Reasons that would let a client probe which key ids exist or were revoked.
_HIDDEN = frozenset({Reason.UNKNOWN_KEY, Reason.REVOKED_KEY, Reason.EXPIRED_KEY})


class Rejection(msgspec.Struct, frozen=True):
    """Why a request was refused. ``reason`` is precise (for the audit event);
    :attr:`public_reason` is what the client may be told."""

    reason: Reason
    status: int = 401
    agent: str | None = None
    key_id: str | None = None

    @property
    def public_reason(self) -> str:
        return Reason.INVALID_SIGNATURE.value if self.reason in _HIDDEN else self.reason.value

    def public_body(self) -> dict[str, str]:
        """JSON error body for the client: never carries secrets, nonces or key state."""
        return {"error": "unauthorized", "reason": self.public_reason}


class Verified(msgspec.Struct, frozen=True):
    """A request whose signature, digest and nonce all checked out. ``repr`` hides the
    nonce, so logging a verdict cannot leak one."""

    agent: str
    key_id: str
    nonce: str
    created: int
    key_state: str = "active"

    def __repr__(self) -> str:
        return (
            f"Verified(agent={self.agent!r}, key_id={self.key_id!r}, nonce=<hidden>, "
            f"created={self.created}, key_state={self.key_state!r})"
        )


class ResolvedKey(msgspec.Struct, frozen=True):
    """What a key lookup returns. ``state`` is ``active`` or ``grace`` for usable keys;
    ``revoked`` / ``expired`` keys are refused (with a hidden reason)."""

    agent: str
    secret: bytes
    state: str = "active"


KeyLookup = Callable[[str], ResolvedKey | tuple[str, bytes] | None]


class RequestView(msgspec.Struct, frozen=True):
    """The parts of an HTTP request the verifier needs, independent of any framework.

    ``path`` is the raw (still percent-encoded) path without the query; ``query`` the raw
    query string without the leading ``?`` (``""`` when there is none). ``headers`` must be
    case-insensitive (aiohttp ``CIMultiDictProxy``, ``httpx2.Headers``) or a plain ``dict``
    (matched case-insensitively here).
    """

    method: str
    path: str
    query: str
    headers: Any
    body: bytes = b""


# --------------------------------------------------------------------------------------
# RFC 8941 structured fields: just enough to read Signature-Input and Signature.
# --------------------------------------------------------------------------------------


class _ParseError(ValueError):
    """Malformed structured field; always turned into a `malformed_signature` rejection."""


class _Token(str):
    """An sf-token, kept distinct from an sf-string so it re-serializes unchanged."""


_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_INT = re.compile(r"-?[0-9]{1,15}(?:\.[0-9]{1,3})?")
_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_BYTES = re.compile(r":([A-Za-z0-9+/=]*):")
_STRING_BODY = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]*")

_Params = list[tuple[str, Any]]

# The shape our signer writes (and what well-behaved clients send): one `lh` member, the
# components as plain sf-strings separated by one space, parameters whose strings need no
# escapes and whose integers are canonical. Such a field serializes back to exactly the
# text received, so the verifier can use that text as the `@signature-params` value and
# skip the general parser; anything else, valid or not, takes the general parser.
_FAST_INPUT = re.compile(
    r'lh=(\(((?:"[a-z@-]+"(?: "[a-z@-]+")*)?)\)'
    r'(?:;[a-z][a-z0-9_\-.*]*=(?:"[\x20\x21\x23-\x5b\x5d-\x7e]*"|0|-?[1-9][0-9]{0,14}))+)'
)
_FAST_PARAM = re.compile(
    r';([a-z][a-z0-9_\-.*]*)=(?:"([\x20\x21\x23-\x5b\x5d-\x7e]*)"|(0|-?[1-9][0-9]{0,14}))'
)
_FAST_SIGNATURE = re.compile(r"lh=:([A-Za-z0-9+/=]*):")
_Item = tuple[Any, _Params]


class _Parser:
    __slots__ = ("i", "s")

    def __init__(self, s: str) -> None:
        self.s = s
        self.i = 0

    def _sp(self) -> None:
        while self.s[self.i : self.i + 1] == " ":
            self.i += 1

    def _ows(self) -> None:
        while self.s[self.i : self.i + 1] in (" ", "\t"):
            self.i += 1

    def dictionary(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        self._sp()
        if self.i == len(self.s):
            return out
        while True:
            key = self._key()
            if self.s[self.i : self.i + 1] == "=":
                self.i += 1
                value = self._item_or_inner_list()
            else:
                value = (True, self._params())
            if key in out:
                # RFC 8941 says the last one wins; for signatures that is an ambiguity
                # an attacker could exploit between layers, so refuse it.
                raise _ParseError("duplicate dictionary key")
            out[key] = value
            self._ows()
            if self.i == len(self.s):
                return out
            if self.s[self.i : self.i + 1] != ",":
                raise _ParseError("expected ','")
            self.i += 1
            self._ows()
            if self.i == len(self.s):
                raise _ParseError("trailing ','")

    def _key(self) -> str:
        m = _KEY.match(self.s, self.i)
        if m is None:
            raise _ParseError("bad key")
        self.i = m.end()
        return m.group()

    def _item_or_inner_list(self) -> Any:
        if self.s[self.i : self.i + 1] == "(":
            return self._inner_list()
        return self._item()

    def _inner_list(self) -> tuple[list[_Item], _Params]:
        self.i += 1
        items: list[_Item] = []
        while True:
            self._sp()
            if self.s[self.i : self.i + 1] == ")":
                self.i += 1
                return items, self._params()
            items.append(self._item())
            if self.s[self.i : self.i + 1] not in (" ", ")"):
                raise _ParseError("bad inner list")

    def _item(self) -> _Item:
        return self._bare(), self._params()

    def _params(self) -> _Params:
        params: _Params = []
        seen: set[str] = set()
        while self.s[self.i : self.i + 1] == ";":
            self.i += 1
            self._sp()
            key = self._key()
            value: Any = True
            if self.s[self.i : self.i + 1] == "=":
                self.i += 1
                value = self._bare()
            if key in seen:
                raise _ParseError("duplicate parameter")
            seen.add(key)
            params.append((key, value))
        return params

    def _bare(self) -> Any:
        c = self.s[self.i : self.i + 1]
        if c == '"':
            return self._string()
        if c == ":":
            m = _BYTES.match(self.s, self.i)
            if m is None:
                raise _ParseError("bad byte sequence")
            self.i = m.end()
            try:
                return base64.b64decode(m.group(1), validate=True)
            except (binascii.Error, ValueError) as exc:
                raise _ParseError("bad base64") from exc
        if c == "?":
            nxt = self.s[self.i + 1 : self.i + 2]
            if nxt not in ("0", "1"):
                raise _ParseError("bad boolean")
            self.i += 2
            return nxt == "1"
        if c == "-" or c.isdigit():
            m = _INT.match(self.s, self.i)
            if m is None:
                raise _ParseError("bad number")
            self.i = m.end()
            text = m.group()
            return float(text) if "." in text else int(text)
        m = _TOKEN.match(self.s, self.i)
        if m is None:
            raise _ParseError("bad item")
        self.i = m.end()
        return _Token(m.group())

    def _string(self) -> str:
        self.i += 1
        parts: list[str] = []
        while True:
            m = _STRING_BODY.match(self.s, self.i)
            assert m is not None  # the pattern matches the empty string
            parts.append(m.group())
            self.i = m.end()
            c = self.s[self.i : self.i + 1]
            if c == '"':
                self.i += 1
                return "".join(parts)
            if c == "\\":
                esc = self.s[self.i + 1 : self.i + 2]
                if esc not in ('"', "\\"):
                    raise _ParseError("bad escape")
                parts.append(esc)
                self.i += 2
                continue
            raise _ParseError("bad string")


def _parse_dictionary(value: str) -> dict[str, Any]:
    return _Parser(value).dictionary()


def _ser_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ser_bare(v: Any) -> str:
    if isinstance(v, bool):
        return "?1" if v else "?0"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, _Token):
        return str(v)
    if isinstance(v, str):
        return _ser_string(v)
    if isinstance(v, bytes):
        return ":" + base64.b64encode(v).decode("ascii") + ":"
    raise TypeError(f"cannot serialize {type(v).__name__}")


# --------------------------------------------------------------------------------------
# RFC 9421 building blocks
# --------------------------------------------------------------------------------------


def serialize_signature_params(
    component_ids: Iterable[str], params: Iterable[tuple[str, int | str]]
) -> str:
    """The ``@signature-params`` value (RFC 9421 §2.3): the covered component ids as an
    inner list of sf-strings, followed by the parameters in the given order."""
    inner = "(" + " ".join(_ser_string(c) for c in component_ids) + ")"
    return inner + "".join(f";{k}" if v is True else f";{k}={_ser_bare(v)}" for k, v in params)


def signature_base(components: Iterable[tuple[str, str]], signature_params: str) -> bytes:
    """The signature base (RFC 9421 §2.5): one ``"<id>": <value>`` line per covered
    component, then the ``"@signature-params"`` line, joined by LF, no trailing LF."""
    lines = [f"{_ser_string(name)}: {value}" for name, value in components]
    lines.append(f'"@signature-params": {signature_params}')
    return "\n".join(lines).encode("ascii")


def hmac_sha256(secret: bytes, base: bytes) -> bytes:
    """The ``hmac-sha256`` algorithm of RFC 9421 §3.3.3."""
    return hmac.new(secret, base, hashlib.sha256).digest()


def covered_components_for(query: str, has_body: bool, has_session: bool) -> list[str]:
    """The components our profile requires for a request of this shape."""
    ids = ["@method", "@path"]
    if query:
        ids.append("@query")
    if has_body:
        ids.append("content-digest")
    if has_session:
        ids.append(_SESSION_HEADER)
    return ids


# --------------------------------------------------------------------------------------
# Header access that works for multidicts, httpx headers and plain dicts
# --------------------------------------------------------------------------------------


def _field(headers: Any, name: str) -> str | None:
    """Combined value of a field (RFC 9110 §5.3: lines joined with ", ")."""
    getall = getattr(headers, "getall", None)
    if getall is not None:  # aiohttp / multidict
        values = getall(name, None)
        return None if not values else ", ".join(values)
    get_list = getattr(headers, "get_list", None)
    if get_list is not None:  # httpx2.Headers
        values = get_list(name)
        return None if not values else ", ".join(values)
    if isinstance(headers, dict):
        found = [v for k, v in headers.items() if k.lower() == name]
        return None if not found else ", ".join(found)
    return headers.get(name)


def _printable(value: str) -> bool:
    return value.isascii() and value.isprintable()


# --------------------------------------------------------------------------------------
# Verifier
# --------------------------------------------------------------------------------------


class _Parsed(msgspec.Struct):
    components: list[str]
    params: _Params
    created: int
    nonce: str
    key_id: str
    signature: bytes
    params_text: str | None = None  # the received text, when it is the serialization


class SignatureVerifier:
    """Verifies requests against the Lighthouse profile.

    ``keys`` maps a key id to ``(agent, secret)`` or a :class:`ResolvedKey`;
    ``nonces`` remembers claimed nonces; its retention must be at least ``skew`` seconds.
    ``clock`` returns unix time (injected so tests need not sleep).
    """

    def __init__(
        self,
        keys: KeyLookup,
        nonces: NonceStore,
        *,
        skew: int = 300,
        clock: Callable[[], float] = time.time,
        max_header_bytes: int = 1024,
        max_nonce_length: int = 128,
        max_key_id_length: int = 128,
    ) -> None:
        if nonces.window < skew:
            # A nonce forgotten before its signature goes stale could be replayed.
            raise ValueError(f"nonce store window {nonces.window}s is shorter than skew {skew}s")
        self._keys = keys
        self._nonces = nonces
        self.skew = skew
        self._clock = clock
        self._max_header = max_header_bytes
        self._max_nonce = max_nonce_length
        self._max_key_id = max_key_id_length

    async def verify(self, request: RequestView) -> Verified | Rejection:
        """All checks including the nonce claim. Returns, never raises, for bad input."""
        now = self._clock()
        result = self.check(request, now=now)
        if isinstance(result, Rejection):
            return result
        return await self.claim(result, now)

    async def claim(self, verified: Verified, now: float | None = None) -> Verified | Rejection:
        """The last step: claim the nonce of a request that passed every other check."""
        now = self._clock() if now is None else now
        if not await self._nonces.claim(verified.key_id, verified.nonce, verified.created, now):
            return Rejection(Reason.REPLAYED_NONCE, 401, verified.agent, verified.key_id)
        return verified

    def check(self, request: RequestView, *, now: float | None = None) -> Verified | Rejection:
        """Every check except the nonce claim (see :meth:`verify`)."""
        headed = self.check_headers(request, has_body=bool(request.body), now=now)
        if isinstance(headed, Rejection):
            return headed
        return self.check_body(headed, request)

    def check_headers(
        self, request: RequestView, *, has_body: bool, now: float | None = None
    ) -> Verified | Rejection:
        """Every check that needs no body: size, parse, key, skew, MAC and the covered
        components. The MAC covers the ``content-digest`` header, not the body, so a server
        can refuse a forged request before reading (and waiting for) its body; the body is
        then bound by :meth:`check_body`. ``request.body`` is not looked at."""
        headers = request.headers
        sig_input = _field(headers, "signature-input")
        sig_value = _field(headers, "signature")
        if sig_input is None or sig_value is None:
            return Rejection(Reason.MISSING_SIGNATURE)
        digest = _field(headers, "content-digest")
        session = _field(headers, _SESSION_HEADER)
        limit = self._max_header
        for value in (sig_input, sig_value, digest, session):
            if value is not None and len(value) > limit:
                return Rejection(Reason.HEADER_TOO_LARGE, 431)

        parsed = self._parse(sig_input, sig_value)
        if isinstance(parsed, Rejection):
            return parsed
        key_id = parsed.key_id

        resolved = self._keys(key_id)
        if resolved is None:
            return Rejection(Reason.UNKNOWN_KEY, 401, None, key_id)
        if not isinstance(resolved, ResolvedKey):
            resolved = ResolvedKey(resolved[0], resolved[1])
        agent = resolved.agent
        if resolved.state == "revoked":
            return Rejection(Reason.REVOKED_KEY, 401, agent, key_id)
        if resolved.state not in ("active", "grace"):
            return Rejection(Reason.EXPIRED_KEY, 401, agent, key_id)

        if now is None:
            now = self._clock()
        if parsed.created < now - self.skew:
            return Rejection(Reason.STALE_SIGNATURE, 401, agent, key_id)
        if parsed.created > now + self.skew:
            return Rejection(Reason.FUTURE_SIGNATURE, 401, agent, key_id)
        if parsed.created < int(self._nonces.born_at):
            # Signed before this nonce store existed: its nonce may have been used
            # against a store that was lost, so it cannot be told from a replay. (Whole
            # seconds: `created` has no fraction, and a restart takes longer than that.)
            return Rejection(Reason.PREDATES_NONCE_STORE, 401, agent, key_id)

        values: list[tuple[str, str]] = []
        for name in parsed.components:
            if name == "@method":
                value = request.method
            elif name == "@path":
                value = request.path or "/"
            elif name == "@query":
                value = "?" + request.query
            elif name == "content-digest":
                value = digest  # type: ignore[assignment]
            else:
                value = session  # type: ignore[assignment]
            if value is None:
                return Rejection(Reason.MISSING_COMPONENT, 401, agent, key_id)
            if not _printable(value):
                return Rejection(Reason.MALFORMED_SIGNATURE, 401, agent, key_id)
            values.append((name, value))
        params_text = parsed.params_text
        if params_text is None:
            params_text = serialize_signature_params(parsed.components, parsed.params)
        base = signature_base(values, params_text)
        if not hmac.compare_digest(hmac_sha256(resolved.secret, base), parsed.signature):
            return Rejection(Reason.INVALID_SIGNATURE, 401, agent, key_id)

        covered = parsed.components
        required = covered_components_for(request.query, has_body, session is not None)
        if digest is not None and "content-digest" not in required:
            # A digest header that is sent must also be signed, or it means nothing.
            required.append("content-digest")
        if any(name not in covered for name in required):
            return Rejection(Reason.MISSING_COMPONENT, 401, agent, key_id)

        return Verified(agent, key_id, parsed.nonce, parsed.created, resolved.state)

    def check_body(self, headed: Verified, request: RequestView) -> Verified | Rejection:
        """The body against the signed ``content-digest`` (after :meth:`check_headers`)."""
        digest = _field(request.headers, "content-digest")
        if digest is None:
            if request.body:  # announced as bodiless when the headers were checked
                return Rejection(Reason.MISSING_COMPONENT, 401, headed.agent, headed.key_id)
            return headed
        try:
            ok = verify_content_digest(digest, request.body)
        except UnsupportedDigest:
            return Rejection(Reason.UNSUPPORTED_DIGEST, 401, headed.agent, headed.key_id)
        except DigestError:
            ok = False
        if not ok:
            return Rejection(Reason.DIGEST_MISMATCH, 401, headed.agent, headed.key_id)
        return headed

    def _parse(self, sig_input: str, sig_value: str) -> _Parsed | Rejection:
        fast = self._parse_canonical(sig_input, sig_value)
        if fast is not None:
            return fast
        malformed = Rejection(Reason.MALFORMED_SIGNATURE)
        try:
            inputs = _parse_dictionary(sig_input)
            sigs = _parse_dictionary(sig_value)
        except _ParseError:
            return malformed
        if LABEL not in inputs or LABEL not in sigs:
            return Rejection(Reason.MISSING_SIGNATURE)
        member, params = inputs[LABEL]
        sig, _sig_params = sigs[LABEL]
        if not isinstance(member, list) or not isinstance(sig, bytes):
            return malformed
        components: list[str] = []
        for value, item_params in member:
            if (
                type(value) is not str
                or item_params
                or value not in _ALLOWED_COMPONENTS
                or value in components
            ):
                return malformed
            components.append(value)
        names = [k for k, _ in params]
        if sorted(names) != sorted(_REQUIRED_PARAMS):
            # Also refuses extra parameters: the profile is exact.
            alg_only_missing = set(_REQUIRED_PARAMS) - set(names) == {"alg"}
            return Rejection(Reason.UNSUPPORTED_ALGORITHM) if alg_only_missing else malformed
        p = dict(params)
        created, nonce, key_id, alg = p["created"], p["nonce"], p["keyid"], p["alg"]
        if not self._well_typed(created, nonce, key_id):
            return malformed
        if alg != ALGORITHM:
            return Rejection(Reason.UNSUPPORTED_ALGORITHM, 401, None, key_id)
        return _Parsed(components, params, created, nonce, key_id, sig)

    def _well_typed(self, created: object, nonce: object, key_id: object) -> bool:
        """The parameter checks both parsers make: types, and lengths within bounds."""
        return (
            type(created) is int
            and type(nonce) is str
            and type(key_id) is str
            and 0 < len(nonce) <= self._max_nonce
            and 0 < len(key_id) <= self._max_key_id
        )

    def _parse_canonical(self, sig_input: str, sig_value: str) -> _Parsed | None:
        """The fast path for fields in canonical form (`_FAST_INPUT`) that pass every
        check `_parse` makes; None sends the request through `_parse`'s general parser,
        which then decides (and words) any refusal."""
        m = _FAST_INPUT.fullmatch(sig_input)
        sm = _FAST_SIGNATURE.fullmatch(sig_value)
        if m is None or sm is None:
            return None
        components = m.group(2).replace('"', "").split(" ") if m.group(2) else []
        if len(set(components)) != len(components) or not _ALLOWED_COMPONENTS.issuperset(
            components
        ):
            return None
        params: _Params = [
            (k, int(n) if n else v) for k, v, n in _FAST_PARAM.findall(sig_input, m.end(2) + 1)
        ]
        p = dict(params)
        if len(p) != len(params) or sorted(p) != sorted(_REQUIRED_PARAMS):
            return None
        created, nonce, key_id, alg = p["created"], p["nonce"], p["keyid"], p["alg"]
        if not self._well_typed(created, nonce, key_id) or alg != ALGORITHM:
            return None
        try:
            signature = base64.b64decode(sm.group(1), validate=True)
        except (binascii.Error, ValueError):
            return None
        return _Parsed(components, params, created, nonce, key_id, signature, m.group(1))


# --------------------------------------------------------------------------------------
# Signer
# --------------------------------------------------------------------------------------


def sign_request(
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
    key_id: str,
    secret: bytes,
    nonce: str | None = None,
    created: int | None = None,
) -> dict[str, str]:
    """Headers to add to a request so that it verifies under our profile.

    ``path`` is the raw encoded path (a full URL is accepted too and split), ``query``
    the raw query without ``?``. ``headers`` is only consulted for ``Mcp-Session-Id``.
    Returns ``Signature-Input``, ``Signature`` and, when there is a body,
    ``Content-Digest``.
    """
    if "://" in path:
        path = path.split("://", 1)[1]
        path = "/" + path.split("/", 1)[1] if "/" in path else "/"
    if "?" in path:
        path, _, embedded = path.partition("?")
        query = query or embedded
    path = path.split("#", 1)[0] or "/"
    session = _field(headers, _SESSION_HEADER)
    out: dict[str, str] = {}
    components = covered_components_for(query, bool(body), session is not None)
    values: list[tuple[str, str]] = []
    for name in components:
        if name == "@method":
            values.append((name, method.upper()))
        elif name == "@path":
            values.append((name, path))
        elif name == "@query":
            values.append((name, "?" + query))
        elif name == "content-digest":
            out["Content-Digest"] = content_digest(body)
            values.append((name, out["Content-Digest"]))
        else:
            values.append((name, session))  # type: ignore[arg-type]
    params: list[tuple[str, int | str]] = [
        ("created", int(time.time()) if created is None else created),
        ("nonce", secrets.token_urlsafe(16) if nonce is None else nonce),
        ("keyid", key_id),
        ("alg", ALGORITHM),
    ]
    sig_params = serialize_signature_params(components, params)
    mac = hmac_sha256(secret, signature_base(values, sig_params))
    out["Signature-Input"] = f"{LABEL}={sig_params}"
    out["Signature"] = f"{LABEL}=:{base64.b64encode(mac).decode('ascii')}:"
    return out
