"""The append-only, tamper-evident event store. Knows nothing of HTTP, MCP or agents."""

from .chain import ChainKey, CheckpointFile, CheckpointSigner, load_public_key
from .errors import (
    EventIdConflict,
    KeyMismatch,
    MissingKey,
    OperationalError,
    SchemaError,
    StoreBusy,
    StoreClosed,
    StoreCorrupt,
    StoreDamaged,
    StoreError,
    StoreFull,
    StoreLocked,
    StoreReadOnly,
    StoreUnavailable,
    WrongExpectedVersion,
    unavailable,
)
from .model import ANY_VERSION, NO_STREAM, Checkpoint, NewEvent, Record
from .sqlite import SqliteEventStore
from .store import EventStore, GroupCommitStore, Head, StoreConfig
from .verify import Problem, VerifyReport, verify_store, verify_with_config

__all__ = [
    "ANY_VERSION",
    "NO_STREAM",
    "ChainKey",
    "Checkpoint",
    "CheckpointFile",
    "CheckpointSigner",
    "EventIdConflict",
    "EventStore",
    "GroupCommitStore",
    "Head",
    "KeyMismatch",
    "MissingKey",
    "NewEvent",
    "OperationalError",
    "Problem",
    "Record",
    "SchemaError",
    "SqliteEventStore",
    "StoreBusy",
    "StoreClosed",
    "StoreConfig",
    "StoreCorrupt",
    "StoreDamaged",
    "StoreError",
    "StoreFull",
    "StoreLocked",
    "StoreReadOnly",
    "StoreUnavailable",
    "VerifyReport",
    "WrongExpectedVersion",
    "load_public_key",
    "unavailable",
    "verify_store",
    "verify_with_config",
]
