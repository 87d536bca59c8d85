"""One family of errors for every backend, so callers catch `StoreError` whatever runs.

Mirrors the DB-API split the `eventsourcing` library uses: each backend converts its
driver's exceptions into these before they leave the store.

Every error carries a stable machine-readable `reason` (what HTTP bodies, tool errors,
metrics and `/health` show) and a `retry_after` hint in seconds: `None` means retrying
the same call cannot help (a conflict, a damaged store); a number means the store may
accept it again once the cause is gone (a full disk freed, a read-only mount remounted).
`unavailable(exc)` tells the two kinds of failure apart for callers that map them onto
a transport: an *unavailable* store is the service's fault (503), anything else is an
answer about the request itself.
"""

from __future__ import annotations

import errno
from typing import ClassVar, Final, Literal

Reason = Literal[
    "wrong_expected_version",
    "event_id_conflict",
    "store_locked",
    "store_closed",
    "key_mismatch",
    "missing_key",
    "schema_error",
    "store_unavailable",
    "store_full",
    "store_read_only",
    "store_busy",
    "store_corrupt",
    "store_damaged",
]
UNAVAILABLE_REASONS: Final[frozenset[str]] = frozenset(
    {"store_unavailable", "store_full", "store_read_only", "store_busy", "store_corrupt"}
)
"""Reasons that mean "the store cannot serve now", not "this request is wrong"."""


class StoreError(Exception):
    """Base of every error the event store raises."""

    reason: ClassVar[str] = "store_unavailable"
    default_retry_after: ClassVar[float | None] = None

    def __init__(self, message: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after: float | None = (
            retry_after if retry_after is not None else self.default_retry_after
        )

    @property
    def retryable(self) -> bool:
        return self.retry_after is not None

    def to_dict(self) -> dict[str, object]:
        """What a transport may show a client: reason, retry hint and the message."""
        return {"reason": self.reason, "retry_after": self.retry_after, "message": str(self)}


class WrongExpectedVersion(StoreError):
    """The stream moved on since the caller read it (optimistic concurrency)."""

    reason = "wrong_expected_version"

    def __init__(self, stream: str, expected: int, actual: int) -> None:
        super().__init__(
            f"stream {stream!r} is at version {actual}, append expected version {expected}"
        )
        self.stream = stream
        self.expected = expected
        self.actual = actual


class EventIdConflict(StoreError):
    """An event_id already stored names a different event: a retry must resend the same event."""

    reason = "event_id_conflict"

    def __init__(self, event_id: str) -> None:
        super().__init__(f"event_id {event_id} is already stored with different content")
        self.event_id = event_id


class StoreLocked(StoreError):
    """Another process holds the store for writing; two writers would fork the chain."""

    reason = "store_locked"


class StoreClosed(StoreError):
    """The store was closed (or its writer failed) before the operation could complete."""

    reason = "store_closed"


class KeyMismatch(StoreError):
    """The chain key on disk is not the key this store was created with."""

    reason = "key_mismatch"


class MissingKey(StoreError):
    """A key file is missing for a store that already holds events (never regenerated)."""

    reason = "missing_key"


class SchemaError(StoreError):
    """The database schema is from a newer release, or a migration failed."""

    reason = "schema_error"


class OperationalError(StoreError):
    """The backend failed (disk full, I/O error, corrupt file); nothing was written.

    The subclasses below name the cause; a bare `OperationalError` is an unclassified
    backend failure (`store_unavailable`), worth retrying after a short pause.
    """

    reason = "store_unavailable"
    default_retry_after = 5.0


class StoreUnavailable(OperationalError):
    """The database server could not be reached or the connection broke (PostgreSQL).

    Nothing was half-written: a batch is one transaction. When the connection broke while
    COMMIT was in flight the outcome is unknown, which is why retrying with the same
    `event_id`s is safe (an idempotent retry returns the original positions).
    """

    reason = "store_unavailable"
    default_retry_after = 1.0


class StoreFull(OperationalError):
    """The disk (or quota) holding the store is full; writes resume once space is freed."""

    reason = "store_full"
    default_retry_after = 30.0


class StoreReadOnly(OperationalError):
    """The store's file or file system does not accept writes (permissions, ro mount)."""

    reason = "store_read_only"
    default_retry_after = 60.0


class StoreBusy(OperationalError):
    """The database stayed locked by another connection past the busy timeout."""

    reason = "store_busy"
    default_retry_after = 1.0


class StoreCorrupt(OperationalError):
    """The database file is malformed; retrying cannot help — run `lighthouse verify`."""

    reason = "store_corrupt"
    default_retry_after = None


class StoreDamaged(StoreError):
    """The log is damaged in a way a writer must not write over (a cut tail, a lost
    checkpoint file); opening for writing needs `repair --accept-damage`.

    `kind` is the verify problem kind that names the damage (`truncated`,
    `checkpoint_file_missing`, …).
    """

    reason = "store_damaged"

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


_BY_ERRNO: Final[dict[int, type[OperationalError]]] = {
    errno.ENOSPC: StoreFull,
    errno.EDQUOT: StoreFull,
    errno.EROFS: StoreReadOnly,
    errno.EACCES: StoreReadOnly,
    errno.EPERM: StoreReadOnly,
}


def os_store_error(exc: OSError, doing: str) -> OperationalError:
    """The `StoreError` an OS error on a store file (WAL, checkpoint file…) becomes."""
    cls = _BY_ERRNO.get(exc.errno or 0, OperationalError)
    return cls(f"{doing}: {exc.strerror or exc}")


def unavailable(exc: BaseException) -> bool:
    """True when `exc` says the store cannot serve now (a 503), not that the call is wrong."""
    return isinstance(exc, StoreError) and exc.reason in UNAVAILABLE_REASONS


__all__ = [
    "UNAVAILABLE_REASONS",
    "EventIdConflict",
    "KeyMismatch",
    "MissingKey",
    "OperationalError",
    "Reason",
    "SchemaError",
    "StoreBusy",
    "StoreClosed",
    "StoreCorrupt",
    "StoreDamaged",
    "StoreError",
    "StoreFull",
    "StoreLocked",
    "StoreReadOnly",
    "StoreUnavailable",
    "WrongExpectedVersion",
    "os_store_error",
    "unavailable",
]
