"""The legacy path: per-agent mailboxes with durable, acknowledged delivery.

An item stays in its recipient's mailbox until acknowledged. Handing it out records a
delivery event naming the session; the same session's next `wait_for_messages` call
acknowledges what it was given (or an explicit ack does). A client that vanishes between
hand-out and its next call therefore gets the item again from a new session: polling never
"eats" mail, and every hand-out is in the log.

Hand-out is fair: items are taken round-robin by sender, so one agent flooding a mailbox
cannot starve the others. A broadcast's content is stored once (one MessageSent naming all
recipients) and shared by their items; messages nobody acknowledges within the retention
are expired by an appended MailboxItemsExpired fact, never dropped silently.

`agents forget` reaches items already queued: when the AgentForgotten fact is applied
(recorded here or followed from another bridge), every item whose sealed content that
agent wrote reads ``[erased]`` from then on — the same mailbox a replay would rebuild —
so `wait_for_messages` never hands out what was erased.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from .domain import (
    AGENT_FORGOTTEN,
    AGENT_REVOKED,
    MAILBOX_ACKNOWLEDGED,
    MAILBOX_ITEMS_EXPIRED,
    MESSAGE_DELIVERED,
    MESSAGE_SENT,
    REQUEST_CREATED,
    REQUEST_DELIVERED,
    REQUEST_FELL_BACK,
    REQUEST_ROUTED,
    TERMINAL_TYPES,
    Fact,
    digest,
    mailbox_stream,
)
from .sealing import erased

if TYPE_CHECKING:
    from .log import Log

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_ACK_ITEMS = 1000
DEFAULT_RETENTION_S = 7 * 86400.0


def fair(items: Iterable[T], sender: Callable[[T], str], limit: int) -> list[T]:
    """`items` (oldest first) taken round-robin by sender, so a sender with a thousand items
    queued cannot push another sender's one item past the first hand-out."""
    queues: dict[str, list[T]] = {}
    for item in items:
        queues.setdefault(sender(item), []).append(item)
    out: list[T] = []
    depth = 0
    while len(out) < limit:
        row = [q[depth] for q in queues.values() if len(q) > depth]
        if not row:
            break
        out.extend(row)
        depth += 1
    return out[:limit]


@dataclass(slots=True)
class MailItem:
    item_id: str
    kind: str  # "message" | "request"
    position: int
    payload: dict[str, Any]
    sealed: bool = False  # its content is encrypted in the store (forget erases it)


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
        # open request id -> its RequestCreated data, and whether that was sealed
        self._requests: dict[str, tuple[dict[str, Any], bool]] = {}

    def box(self, agent: str) -> Mailbox:
        box = self._boxes.get(agent)
        if box is None:
            box = self._boxes[agent] = Mailbox()
        return box

    def apply(self, fact: Fact) -> None:
        data = fact.data
        if fact.type == MESSAGE_SENT:
            # one item object shared by every recipient of a broadcast (older logs: one
            # MessageSent per recipient, `to` naming it)
            item = MailItem(
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
                fact.sealed,
            )
            for agent in data.get("recipients") or [data["to"]]:
                self._add(agent, item)
        elif fact.type == REQUEST_CREATED:
            self._requests[data["request_id"]] = (data, fact.sealed)
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
        elif fact.type == MAILBOX_ITEMS_EXPIRED:
            box = self.box(data["agent"])
            for item in data["items"]:
                box.items.pop(item, None)
        elif fact.type == AGENT_REVOKED:
            self.box(data["agent"]).wake()
        elif fact.type == AGENT_FORGOTTEN:
            self._erase(str(data.get("agent")))

    def _erase(self, agent: str) -> None:
        """The contents `agent` wrote, sealed, read ``[erased]`` (its keys are destroyed)."""
        for request_id, (created, sealed) in self._requests.items():
            if sealed and created.get("from") == agent:
                self._requests[request_id] = (erased(REQUEST_CREATED, created), sealed)
        for box in self._boxes.values():
            for item in box.items.values():
                if item.sealed and item.payload.get("from") == agent:
                    kind = MESSAGE_SENT if item.kind == "message" else REQUEST_CREATED
                    item.payload = erased(kind, item.payload)

    def _add(self, agent: str, item: MailItem) -> None:
        box = self.box(agent)
        box.items[item.item_id] = item
        box.wake()

    def _queue_request(self, request_id: str, recipient: str, position: int) -> None:
        entry = self._requests.get(request_id)
        if entry is None:  # unknown, or closed already
            return
        created, sealed = entry
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
                sealed,
            ),
        )

    def _close_request(self, request_id: str) -> None:
        entry = self._requests.pop(request_id, None)
        if entry is not None:
            box = self._boxes.get(entry[0]["recipient"])
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
        return fair(live, lambda item: item.payload["from"], limit)

    def acknowledgement(self, agent: str, session_key: str, ack: object) -> dict[str, Any] | None:
        """The MailboxAcknowledged data for a `wait_for_messages` call, or None.

        `ack` (explicit ids) or else what this session was handed last. Only ids that are in
        the mailbox are stored; anything else the caller sent is kept as a bounded digest.
        Raises ValueError for an `ack` that is not a list of strings."""
        if ack is None:
            items = self.handed_to(agent, session_key)
            unknown: list[object] = []
        else:
            if not isinstance(ack, list) or len(ack) > MAX_ACK_ITEMS:
                raise ValueError(f"ack: must be a list of at most {MAX_ACK_ITEMS} item ids")
            box = self._boxes.get(agent)
            held = box.items if box is not None else {}
            items = [i for i in ack if isinstance(i, str) and i in held]
            unknown = [i for i in ack if not (isinstance(i, str) and i in held)]
        if not items and not unknown:
            return None
        data: dict[str, Any] = {"agent": agent, "session_id": session_key, "items": items}
        if unknown:
            data["unknown"] = {"count": len(unknown), **digest(unknown)}
        return data

    def expired(self, now: float, retention_s: float) -> dict[str, list[str]]:
        """Messages older than the retention, per mailbox (requests leave at their deadline)."""
        cutoff = now - retention_s
        found: dict[str, list[str]] = {}
        for agent, box in self._boxes.items():
            old = [
                i.item_id
                for i in box.items.values()
                if i.kind == "message" and i.payload["sent_at"] < cutoff
            ]
            if old:
                found[agent] = old
        return found

    async def expire(self, log: Log, retention_s: float, now: float | None = None) -> int:
        """Record the expiry of every message past its retention; returns how many."""
        count = 0
        for agent, items in self.expired(now or time.time(), retention_s).items():
            for start in range(0, len(items), MAX_ACK_ITEMS):
                chunk = items[start : start + MAX_ACK_ITEMS]
                await log.record(
                    mailbox_stream(agent),
                    MAILBOX_ITEMS_EXPIRED,
                    {
                        "agent": agent,
                        "items": chunk,
                        "reason": "retention",
                        "retention_s": retention_s,
                    },
                )
                count += len(chunk)
        return count

    async def expire_forever(self, log: Log, retention_s: float) -> None:
        """The retention sweep of a running bridge (a failed write is retried next round)."""
        interval = min(60.0, max(1.0, retention_s / 10))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.expire(log, retention_s)
            except Exception as exc:  # a full disk: the items stay until the next round
                log.warning("mailbox retention sweep failed: %s", exc)

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
