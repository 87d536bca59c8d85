"""Every knob of a running bridge in one typed place, filled from the command line and env.

Anything secret (admin token) comes from the environment or a file, never from argv, which
other users of the machine can read in the process list.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when used: `lighthouse --help` must not load the store code
    from events import StoreConfig

DEFAULT_URL = "http://127.0.0.1:8765"


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8765
    db: Path = Path("lighthouse.db")
    database_url: str | None = field(default=None, repr=False)
    """`postgresql://…`: the shared event store. `db` then still names the local files
    (key dir, checkpoint copy, agent-secret vault) beside which they default."""
    redis_url: str | None = field(default=None, repr=False)
    """Shared nonces and rate limits; without it a PostgreSQL deployment keeps nonces in
    the database and rate limits per bridge."""
    redis_prefix: str = "lighthouse:"
    """Key prefix in Redis, so several deployments (or test runs) can share one server."""
    key_dir: Path | None = None
    node_id: str | None = None
    """This bridge's name among the bridges of one store (`--node-id`); the start of its
    session ids. Default `node_name(host, port)`: stable across restarts on one machine."""
    checkpoint_file: Path | None = None
    synchronous: str = "FULL"
    checkpoint_every: int = 1000
    checkpoint_interval: float = 10.0
    # security
    skew_s: float = 300.0
    rate_per_s: float = 50.0
    burst: int = 100
    ip_rate_per_s: float = 500.0
    ip_burst: int = 1000
    key_grace_s: float = 3600.0
    max_body_bytes: int = 1 << 20
    max_sessions: int = 10_000
    max_sessions_per_agent: int = 32
    session_idle_timeout_s: float = 900.0
    request_state_ttl_s: float = 900.0
    trusted_proxies: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    # refusals written to the log: `burst` individually per source and reason per window
    refusal_window_s: float = 60.0
    refusal_burst: int = 5
    # connections: before auth, nothing may hold a socket or a buffer for long
    max_connections_per_address: int = 256
    header_timeout_s: float = 10.0
    body_grace_s: float = 5.0
    body_min_rate: float = 1024.0  # bytes/s a body must keep up after the grace period
    metrics_token: str | None = field(default=None, repr=False)
    # delivery
    elicitation_default: bool = True
    max_wait_s: float = 25.0
    default_timeout_s: float = 60.0
    max_timeout_s: float = 3600.0
    shutdown_grace_s: float = 10.0
    # limits on open work and payloads (see bridge.routing.Limits)
    max_content_bytes: int = 64 * 1024
    max_open_per_caller: int = 256
    max_open_per_recipient: int = 1024
    max_fanout: int = 64
    message_retention_s: float = 7 * 86400.0
    # guard (auto-rollback)
    guard_error_rate: float = 0.05
    guard_p99_ms: float = 1000.0
    guard_min_samples: int = 20
    guard_window_s: float = 60.0
    log_level: str = "INFO"
    admin_token: str | None = field(default=None, repr=False)

    @property
    def node(self) -> str:
        return self.node_id or node_name(self.host, self.port)

    @property
    def keys(self) -> Path:
        return self.key_dir or self.db.with_name(self.db.name + ".keys")

    @property
    def admin_token_file(self) -> Path:
        return self.keys / "admin.token"

    @property
    def master_key_file(self) -> Path:
        return self.keys / "master.key"

    @property
    def nonce_db(self) -> Path:
        return self.db.with_name(self.db.name + ".nonces")

    def store_config(self, *, readonly: bool = False) -> StoreConfig:
        from events import StoreConfig

        return StoreConfig(
            path=self.db,
            url=self.database_url,
            key_dir=self.key_dir,
            checkpoint_file=self.checkpoint_file or env_checkpoint_file(),
            synchronous=self.synchronous,
            checkpoint_every=self.checkpoint_every,
            checkpoint_interval=self.checkpoint_interval,
            readonly=readonly,
        )


_NODE_CHARS = re.compile(r"[^A-Za-z0-9_-]+")


def node_name(host: str, port: int) -> str:
    """`<hostname>-<port>` in session-id characters (no dot: the dot ends the prefix). The
    host's name, not the bind address: two machines binding 0.0.0.0:8765 stay distinct."""
    name = socket.gethostname().split(".")[0] if host in ("0.0.0.0", "::", "") else host
    return _NODE_CHARS.sub("-", f"{name}-{port}").strip("-")[:48] or f"node-{port}"


def valid_node_id(node: str) -> bool:
    return 0 < len(node) <= 48 and _NODE_CHARS.search(node) is None


def env_checkpoint_file() -> Path | None:
    """`LIGHTHOUSE_CHECKPOINT_FILE`: where every command finds the signed checkpoint file
    when it is kept away from the database (another disk or host), as it should be."""
    value = os.environ.get("LIGHTHOUSE_CHECKPOINT_FILE")
    return Path(value) if value else None


def env_admin_token() -> str | None:
    return os.environ.get("LIGHTHOUSE_ADMIN_TOKEN") or None


def env_database_url() -> str | None:
    """LIGHTHOUSE_DATABASE_URL: keeps a password in the URL out of the process list."""
    return os.environ.get("LIGHTHOUSE_DATABASE_URL") or None


def env_redis_url() -> str | None:
    return os.environ.get("LIGHTHOUSE_REDIS_URL") or None


def env_url() -> str:
    return os.environ.get("LIGHTHOUSE_URL", DEFAULT_URL).rstrip("/")
