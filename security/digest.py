"""RFC 9530 ``Content-Digest`` for request bodies.

The signature covers the ``content-digest`` header, not the body itself, so the body is
only authenticated once this module has checked that the header matches it. Only
``sha-256`` is produced; ``sha-256`` is required on verification and ``sha-512`` is
checked too when a client also sends it (other algorithms are ignored, as RFC 9530
allows).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re

__all__ = ["DigestError", "UnsupportedDigest", "content_digest", "verify_content_digest"]

_HASHERS = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}
# One dictionary member: key=:base64:, optional parameters are not used by RFC 9530.
_MEMBER = re.compile(r"\s*([a-z*][a-z0-9_.*-]*)\s*=\s*:([A-Za-z0-9+/=]*):\s*")


class DigestError(ValueError):
    """The ``Content-Digest`` header is malformed or lacks a ``sha-256`` member."""


class UnsupportedDigest(DigestError):
    """A well-formed ``Content-Digest`` without the ``sha-256`` member the profile requires
    (e.g. ``sha-512`` only): the client must be told that, not that its body changed."""


def content_digest(body: bytes) -> str:
    """Return the header value ``sha-256=:<base64>:`` for *body*."""
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode("ascii") + ":"


def _parse(value: str) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    for part in value.split(","):
        m = _MEMBER.fullmatch(part)
        if m is None:
            raise DigestError("malformed Content-Digest member")
        name, b64 = m.group(1), m.group(2)
        if name in members:
            raise DigestError("duplicate Content-Digest algorithm")
        try:
            members[name] = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise DigestError("Content-Digest is not base64") from exc
    return members


def verify_content_digest(value: str, body: bytes) -> bool:
    """True when *value* carries a ``sha-256`` digest equal to that of *body*.

    Raises :class:`DigestError` when the header cannot be parsed, and
    :class:`UnsupportedDigest` when it has no ``sha-256`` member; every known member
    present must match (compared in constant time).
    """
    members = _parse(value)
    if "sha-256" not in members:
        raise UnsupportedDigest("Content-Digest has no sha-256 member")
    ok = True
    for name, expected in members.items():
        hasher = _HASHERS.get(name)
        if hasher is None:
            continue
        ok &= hmac.compare_digest(expected, hasher(body).digest())
    return ok
