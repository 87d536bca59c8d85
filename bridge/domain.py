"""The bridge's vocabulary: event types, stream names, and the shapes of their data.

Every interaction is a fact in the log; the bridge's in-memory state (agents, sessions,
mailboxes, pending requests, flags) is a projection of these facts and can always be
rebuilt from them. Data never carries secret material.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Final, NamedTuple

# Agents and keys
AGENT_REGISTERED: Final = "AgentRegistered"
AGENT_KEY_ISSUED: Final = "AgentKeyIssued"
AGENT_KEY_ROTATED: Final = "AgentKeyRotated"
AGENT_REVOKED: Final = "AgentRevoked"
AGENT_FORGOTTEN: Final = "AgentForgotten"
# Sessions
SESSION_OPENED: Final = "SessionOpened"
SESSION_CLOSED: Final = "SessionClosed"
# Messages and the legacy mailbox
MESSAGE_SENT: Final = "MessageSent"
MESSAGE_DELIVERED: Final = "MessageDelivered"
MAILBOX_ACKNOWLEDGED: Final = "MailboxAcknowledged"
MAILBOX_ITEMS_EXPIRED: Final = "MailboxItemsExpired"
# Requests (`ask`)
REQUEST_CREATED: Final = "RequestCreated"
REQUEST_ROUTED: Final = "RequestRouted"
REQUEST_DELIVERED: Final = "RequestDelivered"
REQUEST_FELL_BACK: Final = "RequestFellBack"
REQUEST_ANSWERED: Final = "RequestAnswered"
REQUEST_DECLINED: Final = "RequestDeclined"
REQUEST_CANCELLED: Final = "RequestCancelled"
REQUEST_TIMED_OUT: Final = "RequestTimedOut"
REQUEST_EXPIRED: Final = "RequestExpired"
ANSWER_REJECTED: Final = "AnswerRejected"
# Operations
FLAG_CHANGED: Final = "FlagChanged"
DRAIN_STARTED: Final = "DrainStarted"
DRAIN_FINISHED: Final = "DrainFinished"
REPAIR_COMPLETED: Final = "RepairCompleted"
DAMAGE_ACCEPTED: Final = "DamageAccepted"
AUTO_ROLLBACK: Final = "AutoRollbackTriggered"
RUNBOOK_STEP: Final = "RunbookStepRecorded"
# Security
AUTH_REJECTED: Final = "AuthRejected"
RATE_LIMITED: Final = "RateLimited"
ADMIN_AUTH_FAILED: Final = "AdminAuthFailed"
CONSOLE_SIGNED_IN: Final = "ConsoleSignedIn"
CONSOLE_SIGNED_OUT: Final = "ConsoleSignedOut"
NONCE_STORE_CREATED: Final = "NonceStoreCreated"
VAULT_IMPORTED: Final = "VaultImported"
CONTENTS_READ: Final = "ContentsRead"

TERMINAL_TYPES: Final = frozenset(
    {REQUEST_ANSWERED, REQUEST_DECLINED, REQUEST_CANCELLED, REQUEST_TIMED_OUT, REQUEST_EXPIRED}
)
STATUS_BY_TERMINAL: Final = {
    REQUEST_ANSWERED: "accepted",
    REQUEST_DECLINED: "declined",
    REQUEST_CANCELLED: "cancelled",
    REQUEST_TIMED_OUT: "timeout",
    REQUEST_EXPIRED: "timeout",
}
TERMINAL_BY_ACTION: Final = {
    "accept": REQUEST_ANSWERED,
    "decline": REQUEST_DECLINED,
    "cancel": REQUEST_CANCELLED,
}

SECURITY_STREAM: Final = "security"
FLAGS_STREAM: Final = "flags"
OPS_STREAM: Final = "operations"


_REQUEST_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


def valid_request_id(value: object) -> bool:
    """A request id as the bridge makes them (uuid hex) or a caller may choose them:
    1-64 of ``[A-Za-z0-9_-]``. Checked where ids enter (tool arguments) so that an id in a
    stream name, an event or a terminal line can never carry control characters."""
    return isinstance(value, str) and _REQUEST_ID.fullmatch(value) is not None


def digest(value: object, limit: int = 64) -> dict[str, object]:
    """A bounded stand-in for what a refused caller sent: its size, its SHA-256 and a short
    escaped prefix, so the audit trail shows what came without storing the payload."""
    if isinstance(value, str):
        raw = value.encode("utf-8", "surrogatepass")
    else:
        raw = json.dumps(value, sort_keys=True, default=repr).encode()
    sample = raw[:limit].decode("utf-8", "replace").encode("unicode_escape").decode("ascii")
    return {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest(), "sample": sample}


def agent_stream(agent: str) -> str:
    return f"agent-{agent}"


def request_stream(request_id: str) -> str:
    return f"request-{request_id}"


def message_stream(message_id: str) -> str:
    return f"message-{message_id}"


def mailbox_stream(agent: str) -> str:
    return f"mailbox-{agent}"


def session_stream(session_id: str) -> str:
    return f"session-{session_id}"


class Fact(NamedTuple):
    """What projections need of a stored event (hashes stay in the store)."""

    position: int
    stream: str
    type: str
    data: dict
    actor: str
    time: float
    sealed: bool = False
    """Its contents are encrypted in the store: `agents forget` of its actor erases them
    (clear contents written before encryption existed stay as they are)."""
