"""The legacy path: per-agent mailboxes with durable, acknowledged delivery.

An item stays in its recipient's mailbox until acknowledged. Handing it out records a
delivery event naming the session; the same session's next `wait_for_messages` call
acknowledges what it was given (or an explicit ack does). A client that vanishes between
hand-out and its next call therefore gets the item again from a new session: polling never
"eats" mail, and every hand-out is in the log.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from .domain import (
    AGENT_REVOKED,
    MAILBOX_ACKNOWLEDGED,
    MESSAGE_DELIVERED,
    MESSAGE_SENT,
    REQUEST_DELIVERED,
    REQUEST_FELL_BACK,
    REQUEST_ROUTED,
    TERMINAL_TYPES,
    Fact,
)


@dataclass(slots=True)
class MailItem:
    item_id: str
    kind: str  # "message" | "request"
    position: int
    payload: dict[str, Any]


@dataclass(slots=True)
class Mailbox:
    items: dict[str, MailItem] = field(default_factory=dict)
    handed: dict[str, list[str]] = field(default_factory=dict)  # session -> items given
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def wake(self) -> None:
        self.changed.set()


class Mailboxes:
    """Projection of the legacy mailboxes; also the long-poll wait primitive."""

    def __init__(self) -> None:
        self._boxes: dict[str, Mailbox] = {}
        self._requests: dict[str, dict[str, Any]] = {}  # request id -> created data
        self._closed_requests: set[str] = set()

    def box(self, agent: str) -> Mailbox:
        box = self._boxes.get(agent)
        if box is None:
            box = self._boxes[agent] = Mailbox()
        return box

    def apply(self, fact: Fact) -> None:
        data = fact.data
        if fact.type == MESSAGE_SENT:
            self._add(
                data["to"],
                MailItem(
                    data["message_id"],
                    "message",
                    fact.position,
                    {
                        "kind": "message",
                        "message_id": data["message_id"],
                        "from": data["from"],
                        "content": data["content"],
                        "sent_at": fact.time,
                    },
                ),
            )
        elif fact.type == "RequestCreated":
            self._requests[data["request_id"]] = data
        elif (fact.type == REQUEST_ROUTED and data["path"] == "legacy") or (
            fact.type == REQUEST_FELL_BACK
        ):
            self._queue_request(data["request_id"], data["recipient"], fact.position)
        elif fact.type in TERMINAL_TYPES:
            self._close_request(data["request_id"])
        elif (
            fact.type in (MESSAGE_DELIVERED, REQUEST_DELIVERED)
            and data.get("path", "legacy") == "legacy"
        ):
            self.box(data["to"]).handed.setdefault(data["session_id"], []).append(data["item"])
        elif fact.type == MAILBOX_ACKNOWLEDGED:
            box = self.box(data["agent"])
            for item in data["items"]:
                box.items.pop(item, None)
            box.handed.pop(data["session_id"], None)
        elif fact.type == AGENT_REVOKED:
            self.box(data["agent"]).wake()

    def _add(self, agent: str, item: MailItem) -> None:
        box = self.box(agent)
        box.items[item.item_id] = item
        box.wake()

    def _queue_request(self, request_id: str, recipient: str, position: int) -> None:
        created = self._requests.get(request_id)
        if created is None or request_id in self._closed_requests:
            return
        self._add(
            recipient,
            MailItem(
                request_id,
                "request",
                position,
                {
                    "kind": "request",
                    "request_id": request_id,
                    "from": created["from"],
                    "message": created["message"],
                    "schema": created["schema"],
                    "deadline": created["deadline"],
                },
            ),
        )

    def _close_request(self, request_id: str) -> None:
        self._closed_requests.add(request_id)
        created = self._requests.pop(request_id, None)
        if created is not None:
            box = self._boxes.get(created["recipient"])
            if box is not None:
                box.items.pop(request_id, None)

    def pending(self, agent: str, limit: int) -> list[MailItem]:
        """Unacknowledged items, oldest first, skipping requests already answered elsewhere."""
        box = self._boxes.get(agent)
        if box is None:
            return []
        now = time.time()
        live = [
            item
            for item in box.items.values()
            if item.kind == "message" or item.payload["deadline"] > now
        ]
        live.sort(key=lambda item: item.position)
        return live[:limit]

    def handed_to(self, agent: str, session_id: str) -> list[str]:
        box = self._boxes.get(agent)
        return list(box.handed.get(session_id, ())) if box else []

    async def wait_for_change(self, agent: str, timeout: float) -> None:
        """Block until something reaches `agent`'s mailbox or `timeout` passes."""
        box = self.box(agent)
        box.changed.clear()
        try:
            await asyncio.wait_for(box.changed.wait(), timeout)
        except TimeoutError:
            return

    def wake(self, agent: str) -> None:
        self.box(agent).wake()

    def wake_all(self) -> None:
        """Every pending long poll looks again (the bridge is stopping)."""
        for box in self._boxes.values():
            box.wake()
