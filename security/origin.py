"""Host and Origin checks against DNS rebinding and cross-site requests.

The MCP Streamable HTTP transport's security guidance: servers MUST validate ``Origin``
and, when running locally, bind to localhost only. A web page the user visits can make
the browser send requests to ``127.0.0.1:8765``; DNS rebinding even makes them
same-origin for the page. Two checks stop that:

* ``Host`` must name this server (the bound host:port, or a localhost spelling, or an
  operator-configured name); a rebound domain name fails here.
* ``Origin``, which browsers add to cross-site and all POST requests, must be absent
  (non-browser clients such as the MCP SDKs do not send it) or in the allow-list.

Pure functions over strings: the bridge decides where to call them.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

import msgspec

__all__ = ["OriginPolicy", "OriginRejection", "origin_policy"]

_LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class OriginRejection(msgspec.Struct, frozen=True):
    reason: str  # forbidden_host | forbidden_origin
    status: int = 403


def _bracket(host: str) -> str:
    host = host.lower().rstrip(".")
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _normalize_host(value: str, default_port: int) -> str | None:
    """``host:port`` in lower case with an explicit port, or None if unparsable."""
    value = value.strip().lower()
    if not value or any(c in value for c in "/?#@ \t"):
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[: end + 1], value[end + 1 :]
    else:
        host, _, port_part = value.partition(":")
        rest = ":" + port_part if _ else ""
    if rest:
        if not rest.startswith(":") or not rest[1:].isdigit():
            return None
        port = int(rest[1:])
    else:
        port = default_port
    host = host.rstrip(".")
    return f"{host}:{port}" if host else None


class OriginPolicy(msgspec.Struct, frozen=True):
    """Allowed ``host:port`` pairs (lower case, ports explicit) and allowed origins
    (``scheme://host:port``)."""

    hosts: frozenset[str]
    origins: frozenset[str]

    def check(self, host: str | None, origin: str | None) -> OriginRejection | None:
        """None when the request may proceed, else why not (status 403)."""
        # An allowed value is its own normal form: most requests match it as sent.
        if host is None or (host not in self.hosts and _normalize_host(host, 80) not in self.hosts):
            return OriginRejection("forbidden_host")
        if origin is None:
            return None
        if _normalize_origin(origin) not in self.origins:
            return OriginRejection("forbidden_origin")
        return None


def _normalize_origin(origin: str) -> str | None:
    origin = origin.strip()
    if origin.lower() == "null":
        return None
    try:
        parts = urlsplit(origin)
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or parts.path not in ("", "/") or parts.query:
        return None
    netloc = _normalize_host(parts.netloc, _DEFAULT_PORTS[scheme])
    return None if netloc is None else f"{scheme}://{netloc}"


def origin_policy(
    bind_host: str,
    port: int,
    *,
    extra_hosts: Iterable[str] = (),
    extra_origins: Iterable[str] = (),
) -> OriginPolicy:
    """The default policy for a server bound to ``bind_host:port``.

    Allowed hosts: the bound address and the localhost spellings (``localhost``,
    ``127.0.0.1``, ``[::1]``) on that port, plus ``extra_hosts`` (``name`` or
    ``name:port``; without a port: *port*, 80 and 443). A wildcard bind address
    (``0.0.0.0``, ``::``) is not a name clients use, so it adds nothing: put the real
    names in ``extra_hosts``. Allowed origins: ``http://`` and ``https://`` on each
    allowed host, plus ``extra_origins``.
    """
    hosts: set[str] = set()
    names = list(_LOCAL_HOSTS)
    if bind_host not in ("0.0.0.0", "::", "", "[::]"):
        names.append(_bracket(bind_host))
    for name in names:
        hosts.add(f"{name.lower()}:{port}")
    for extra in extra_hosts:
        # A name without a port is accepted on the bound port and on 80/443, where a
        # TLS-terminating proxy in front would send it without one.
        explicit = _normalize_host(extra, 0)
        if explicit is None:
            raise ValueError(f"invalid host {extra!r}")
        if explicit.endswith(":0"):
            name = explicit[:-2]
            hosts.update(f"{name}:{p}" for p in (port, 80, 443))
        else:
            hosts.add(explicit)
    origins = {f"{scheme}://{h}" for h in hosts for scheme in ("http", "https")}
    for extra in extra_origins:
        normalized_origin = _normalize_origin(extra)
        if normalized_origin is None:
            raise ValueError(f"invalid origin {extra!r}")
        origins.add(normalized_origin)
    return OriginPolicy(frozenset(hosts), frozenset(origins))
