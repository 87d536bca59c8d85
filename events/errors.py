"""One family of errors for every backend, so callers catch `StoreError` whatever runs.

Mirrors the DB-API split the `eventsourcing` library uses: each backend converts its
driver's exceptions into these before they leave the store.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of every error the event store raises."""


class WrongExpectedVersion(StoreError):
    """The stream moved on since the caller read it (optimistic concurrency)."""

    def __init__(self, stream: str, expected: int, actual: int) -> None:
        super().__init__(
            f"stream {stream!r} is at version {actual}, append expected version {expected}"
        )
        self.stream = stream
        self.expected = expected
        self.actual = actual


class EventIdConflict(StoreError):
    """An event_id already stored names a different event: a retry must resend the same event."""

    def __init__(self, event_id: str) -> None:
        super().__init__(f"event_id {event_id} is already stored with different content")
        self.event_id = event_id


class StoreLocked(StoreError):
    """Another process holds the store for writing; two writers would fork the chain."""


class StoreClosed(StoreError):
    """The store was closed (or its writer failed) before the operation could complete."""


class KeyMismatch(StoreError):
    """The chain key on disk is not the key this store was created with."""


class MissingKey(StoreError):
    """A key file is missing for a store that already holds events (never regenerated)."""


class SchemaError(StoreError):
    """The database schema is from a newer release, or a migration failed."""


class OperationalError(StoreError):
    """The backend failed (disk full, I/O error, corrupt file); nothing was written."""


class StoreUnavailable(OperationalError):
    """The database server could not be reached or the connection broke.

    Nothing was half-written: a batch is one transaction. When the connection broke while
    COMMIT was in flight the outcome is unknown, which is why retrying with the same
    `event_id`s is safe (an idempotent retry returns the original positions).
    """

    reason = "store_unavailable"
