"""Structured JSON logs: one line per event of interest, machine-parsable, nothing secret.

Log aggregation (Loki, CloudWatch, …) indexes fields, not prose, so each line is a JSON
object: time, level, logger, message, and the context fields a reader filters on
(`request_id`, `agent`, `reason`, …) passed through `extra=`. Values of keys that name
secret material are replaced before they are written, as a last line of defence: the
code should never log them in the first place.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

CONTEXT_FIELDS = (
    "request_id",
    "agent",
    "recipient",
    "path",
    "status",
    "reason",
    "cause",
    "remote",
    "method",
    "session_id",
    "position",
    "duration_ms",
)
"""`extra=` keys copied into every line that carries them."""
_SECRET_MARKERS = ("secret", "token", "nonce", "signature", "password", "authorization", "key")
_STANDARD = frozenset(vars(logging.makeLogRecord({})))


def _is_secret(name: str) -> bool:
    lowered = name.lower()
    return lowered != "key_id" and any(marker in lowered for marker in _SECRET_MARKERS)


class JsonFormatter(logging.Formatter):
    """Formats each record as one JSON object on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name in _STANDARD or name.startswith("_"):
                continue
            line[name] = "<redacted>" if _is_secret(name) else value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, separators=(",", ":"))


def configure_logging(level: str | int = "INFO", stream: TextIO | None = None) -> None:
    """Send every `lighthouse*` logger (and libraries' warnings) to `stream` as JSON lines.

    Replaces any handlers already on the root logger, so calling it twice does not double
    every line.
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)


_SECURITY_TYPES = frozenset({"AuthRejected", "RateLimited", "AdminAuthFailed"})
_LOGGED_TYPES = _SECURITY_TYPES | {
    "RequestCreated",
    "RequestRouted",
    "RequestFellBack",
    "RequestAnswered",
    "RequestDeclined",
    "RequestCancelled",
    "RequestTimedOut",
    "RequestExpired",
    "AnswerRejected",
    "FlagChanged",
    "AutoRollbackTriggered",
    "DrainStarted",
    "DrainFinished",
    "RepairCompleted",
    "AgentRegistered",
    "AgentKeyRotated",
    "AgentRevoked",
}
_COPIED = ("request_id", "recipient", "path", "status", "reason", "cause", "remote", "scope")


class EventLogger:
    """A log projection: one JSON line per fact of interest, as it is appended.

    Logging from the facts (not from scattered call sites) gives every line the same
    fields and guarantees nothing is logged that was not recorded. Only identifiers and
    outcomes are copied — never message text, answer content or schemas, which may hold
    what agents told each other. Facts replayed at start-up are skipped until `live`.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("lighthouse.events")
        self.live = False

    def apply(self, fact: Any) -> None:
        if not self.live or fact.type not in _LOGGED_TYPES:
            return
        data = fact.data if isinstance(fact.data, dict) else {}
        fields: dict[str, Any] = {
            "event": fact.type,
            "position": fact.position,
            "stream": fact.stream,
            "agent": data.get("agent") or data.get("by") or data.get("from") or fact.actor,
            "actor": fact.actor,
        }
        fields.update({k: data[k] for k in _COPIED if data.get(k) is not None})
        level = logging.WARNING if fact.type in _SECURITY_TYPES else logging.INFO
        self.logger.log(level, fact.type, extra=fields)
