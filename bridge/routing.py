"""`ask`: create the request, pick the delivery path, and take exactly one answer.

The request's life is a short series of facts in its own stream: created, routed (or
fallen back) with the path, delivered, then exactly one terminal fact — answered,
declined, cancelled, timed out or expired. Elicitation and the legacy mailbox may both be
live for one request after a fallback; whichever answers first closes it, and every later
answer is refused and recorded. The claim on a request is taken synchronously before the
terminal append, so two answers racing on the event loop cannot both win; across bridges
the terminal fact is appended with the request stream's `expected_version`, so two bridges
closing one request at once cannot both write a terminal fact.

Several bridges on one store: the bridge that takes an `ask` picks the recipient's bridge
(`RequestRouted.node`); that bridge's log follower sees the fact and pushes
(`on_followed`), no other does. The answer it records reaches the asking bridge through
its follower, and the `Requests` projection resolves the waiting `ask` from the terminal
fact, whichever bridge wrote it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from events import NewEvent, Record, StoreError, WrongExpectedVersion
from security import AgentInfo, KeyRegistry

from .display import printable
from .domain import (
    AGENT_FORGOTTEN,
    ANSWER_REJECTED,
    MESSAGE_SENT,
    REQUEST_CREATED,
    REQUEST_DELIVERED,
    REQUEST_FELL_BACK,
    REQUEST_ROUTED,
    REQUEST_TIMED_OUT,
    STATUS_BY_TERMINAL,
    TERMINAL_BY_ACTION,
    TERMINAL_TYPES,
    Fact,
    digest,
    message_stream,
    request_stream,
    valid_request_id,
)
from .flags import Flags, FlagState
from .log import Log
from .mailbox import fair
from .mcp import PushFailed
from .metrics import Metrics
from .nodes import SoloNodes
from .schema import ContentError, check_content, check_schema
from .sealing import erased
from .sessions import LiveSession, Presence

log = logging.getLogger(__name__)


STREAM_WAIT_S = 2.0
MAX_GET_WAIT_S = 25.0
# How long a failed write of a timeout waits before its next try (doubling up to the cap).
RETRY_FIRST_S = 0.25
RETRY_MAX_S = 30.0
# How long after a deadline the other bridges wait for the asking bridge to record the
# timeout before one of them does (a commit and a follower's wake-up, with a wide margin).
TAKEOVER_GRACE_S = 1.0


class AskError(ValueError):
    """The ask cannot be made (bad target, schema or timeout); nothing was recorded."""


class AnswerRefused(Exception):
    """An answer that is not accepted; `reason` is the stable code recorded in the log."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def refusal_text(exc: BaseException) -> str | None:
    """The tool-error text for an exception a tool call may end with; None for a bug.

    Protocol-independent, so every MCP endpoint words refusals the same way."""
    if isinstance(exc, AskError):
        return str(exc)
    if isinstance(exc, AnswerRefused):
        return f"{exc.reason}: {exc}"
    if isinstance(exc, StoreError):
        later = f"retry in {exc.retry_after:g} s" if exc.retry_after else "retry later"
        return (
            f"store_unavailable ({exc.reason}): the event store cannot record this now; "
            f"nothing was recorded, {later}"
        )
    return None


CLOSED_INDEX = 10_000  # recently closed request ids kept in memory; older ones: the log


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps that keep one agent from taking memory, the log or a recipient from others."""

    max_content_bytes: int = 64 * 1024  # a message, a question (with its schema), an answer
    max_open_per_caller: int = 256
    max_open_per_recipient: int = 1024
    max_fanout: int = 64  # recipients of one role:/capability: message
    closed_index: int = CLOSED_INDEX


def encoded_size(value: object) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    return len(json.dumps(value, separators=(",", ":"), default=repr).encode())


def fingerprint(to: str, message: str, schema: object, timeout_s: float) -> str:
    """What makes two asks with one `request_id` the same ask (compared on re-attach)."""
    raw = json.dumps([to, message, schema, float(timeout_s)], sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def terminal_result(request_id: str, terminal: str, data: dict[str, Any], path: str) -> dict:
    return {
        "request_id": request_id,
        "status": STATUS_BY_TERMINAL[terminal],
        "content": data.get("content"),
        "path": data.get("path") or path,
    }


@dataclass(slots=True)
class OpenRequest:
    """A request without a terminal fact yet (a projection of its stream).

    Small on purpose: message and schema are bounded by `Limits.max_content_bytes` and
    shared with the mailbox item; everything else is a few scalars."""

    request_id: str
    caller: str
    recipient: str
    message: str
    schema: dict[str, Any]
    deadline: float
    created_at: float
    path: str = "legacy"
    fingerprint: str = ""
    position: int = 0
    closing: bool = False
    falling_back: bool = False  # a RequestFellBack is being recorded
    answer: asyncio.Future[dict[str, Any]] | None = None
    changed: asyncio.Event | None = None  # set (and dropped) at the next fact of this request
    delivery: asyncio.Task[None] | None = None
    offered: bool = False  # handed to a 2026-07-28 wait call
    elicitation_rounds: int = 0
    node: str | None = None  # the bridge that pushes it (RequestRouted.node)
    asked_on: str | None = None  # the bridge that took the ask (RequestCreated.node)
    version: int = 0  # facts in its stream so far: the terminal append expects it
    sealed: bool = False  # its question is encrypted in the store (forget erases it)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def askable(self) -> bool:
        """Whether the question can be put to the recipient as a form: not once its
        contents read ``[erased]`` (or ``[unreadable]``), which leaves no schema."""
        return isinstance(self.schema, dict)

    def erase(self) -> None:
        """Its caller was forgotten: the question reads ``[erased]``, as after a replay.
        The fingerprint goes too (it is a hash of the question); no re-attach matches."""
        gone = erased(REQUEST_CREATED, {"message": self.message, "schema": self.schema})
        self.message, self.schema, self.fingerprint = gone["message"], gone["schema"], ""

    def result_future(self) -> asyncio.Future[dict[str, Any]]:
        if self.answer is None:
            self.answer = asyncio.get_running_loop().create_future()
        return self.answer

    def notify(self) -> None:
        changed, self.changed = self.changed, None
        if changed is not None:
            changed.set()


class Requests:
    """Projection: the open requests, per-agent counts of them, and a bounded index of the
    most recently closed (older closed requests are looked up in the log)."""

    def __init__(self, closed_index: int = CLOSED_INDEX) -> None:
        self.open: dict[str, OpenRequest] = {}
        self.closed: OrderedDict[str, str] = OrderedDict()  # request id -> terminal type
        self.closed_index = closed_index
        self.by_caller: Counter[str] = Counter()
        self.by_recipient: Counter[str] = Counter()
        # Told of open requests whose question was just erased (the router moves them on).
        self.on_erased: Callable[[list[OpenRequest]], None] = lambda requests: None

    def apply(self, fact: Fact) -> None:
        data = fact.data
        req = self.open.get(data.get("request_id", "")) if isinstance(data, dict) else None
        if req is not None and fact.stream == request_stream(req.request_id):
            req.version += 1
        if fact.type == REQUEST_CREATED:
            req = OpenRequest(
                data["request_id"],
                data["from"],
                data["recipient"],
                data["message"],
                data["schema"],
                data["deadline"],
                fact.time,
                fingerprint=fingerprint(
                    data["to"], data["message"], data["schema"], data["timeout_s"]
                ),
                position=fact.position,
                version=1,
                asked_on=data.get("node"),
                sealed=fact.sealed,
            )
            self.open[req.request_id] = req
            self.by_caller[req.caller] += 1
            self.by_recipient[req.recipient] += 1
        elif fact.type == AGENT_FORGOTTEN:
            gone = self.erasable(str(data.get("agent")))
            for req in gone:
                req.erase()
            if gone:
                self.on_erased(gone)
        elif fact.type in (REQUEST_ROUTED, REQUEST_FELL_BACK):
            if req is not None:
                req.path = data.get("path", "legacy")
                req.node = data.get("node") if req.path == "elicitation" else None
                req.notify()
        elif fact.type in TERMINAL_TYPES:
            request_id = data["request_id"]
            self.closed[request_id] = fact.type
            self.closed.move_to_end(request_id)
            while len(self.closed) > self.closed_index:
                self.closed.popitem(last=False)
            req = self.open.pop(request_id, None)
            if req is None:
                return
            for counter, agent in (
                (self.by_caller, req.caller),
                (self.by_recipient, req.recipient),
            ):
                counter[agent] -= 1
                if counter[agent] <= 0:
                    del counter[agent]
            if req.delivery is not None and req.delivery is not asyncio.current_task():
                req.delivery.cancel()  # e.g. another bridge's answer ends our pending push
            # Every way a request closes (answer, timeout, repair) ends here: waiting askers
            # and get_request long-polls are released by the fact itself.
            if req.answer is not None and not req.answer.done():
                req.answer.set_result(terminal_result(request_id, fact.type, data, req.path))
            req.notify()

    def erasable(self, agent: str) -> list[OpenRequest]:
        """Open requests whose sealed question `agent` asked (what its forget erases)."""
        return [r for r in self.open.values() if r.caller == agent and r.sealed]


# Causes after which the pending push cannot complete; after the others (the flag, a drain)
# it may still be answered and is left to finish or time out rather than torn down.
_SESSION_DEAD = frozenset({"session_gone", "transport_error", "no_stream"})


def _delivered(request_id: str, recipient: str, session: LiveSession) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "to": recipient,
        "path": "elicitation",
        "session_id": session.session_id,
        "item": request_id,
    }


def _now() -> float:
    return time.time()


_UNKNOWN = "request_id: no such request"  # also for a request the caller may not read


class Router:
    def __init__(
        self,
        log_: Log,
        requests: Requests,
        registry: KeyRegistry,
        presence: Presence,
        flags: Flags,
        metrics: Metrics,
        *,
        default_timeout_s: float = 60.0,
        max_timeout_s: float = 3600.0,
        limits: Limits | None = None,
        nodes: SoloNodes | None = None,
    ) -> None:
        self.log = log_
        self.nodes = nodes or SoloNodes(presence.node)
        self.node = self.nodes.node
        self._mine: set[str] = set()  # requests this bridge created and is routing now
        self.requests = requests
        self.registry = registry
        self.presence = presence
        self.flags = flags
        self.metrics = metrics
        self.default_timeout_s = default_timeout_s
        self.max_timeout_s = max_timeout_s
        self.limits = limits or Limits()
        self.draining = False
        self.stopping = False  # this bridge is shutting down: new asks are refused
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self.elicitation_observer: Any = None  # the auto-rollback guard (bridge.guard.Guard)
        self.wake: Any = lambda agent: None  # wakes the recipient's pending wait call
        flags.on_change(self._flags_changed)
        requests.on_erased = self._questions_erased

    # -- asking ---------------------------------------------------------------------------

    async def ask(
        self,
        caller: str,
        to: str,
        message: str,
        schema: object,
        timeout_s: float | None,
        *,
        request_id: str | None = None,
        wait: bool = True,
    ) -> dict[str, Any]:
        """Create a request and (with `wait`) return its outcome.

        With a caller-chosen `request_id` the ask is idempotent: the same caller asking the
        same thing again attaches to the request already recorded (no second
        RequestCreated) and gets its outcome — at once if it has one."""
        started = time.perf_counter()
        if self.stopping:
            raise AskError("bridge_stopping: this bridge is shutting down; retry the ask shortly")
        timeout = self._check_ask(to, message, schema, timeout_s)
        if not isinstance(wait, bool):
            raise AskError("wait: must be true or false")
        if request_id is not None:
            if not valid_request_id(request_id):
                raise AskError("request_id: must be 1-64 characters of A-Z a-z 0-9 _ -")
            mark = fingerprint(to, message, schema, timeout)
            attached = await self._attach(caller, request_id, mark, wait)
            if attached is not None:
                return attached
        else:
            request_id, mark = uuid.uuid4().hex, ""
        self._check_quota(caller)
        recipient = self._resolve(caller, to)
        deadline = _now() + timeout
        path, reason = self._choose_path(recipient)
        node = self._push_node(recipient) if path == "elicitation" else None
        created = {
            "request_id": request_id,
            "from": caller,
            "to": to,
            "recipient": recipient,
            "message": message,
            "schema": schema,
            "timeout_s": timeout,
            "deadline": deadline,
            "node": self.node,  # who owns its deadline and moves it on if its pusher dies
        }
        routed_type = (
            REQUEST_ROUTED if path == "elicitation" or reason == "offline" else REQUEST_FELL_BACK
        )
        routed = {
            "request_id": request_id,
            "recipient": recipient,
            "path": path,
            "reason" if routed_type == REQUEST_ROUTED else "cause": reason,
        }
        if node is not None:
            routed["node"] = node
        events = [
            NewEvent(type=REQUEST_CREATED, data=created, actor=caller),
            NewEvent(type=routed_type, data=routed, actor=caller),
        ]
        # A session with an open stream takes the push at once: its RequestDelivered goes in
        # the same append (still written before the push), one durable commit fewer.
        target = self.presence.push_target(recipient) if node == self.node else None
        if target is not None:
            delivered = _delivered(request_id, recipient, target)
            events.append(NewEvent(type=REQUEST_DELIVERED, data=delivered, actor="bridge"))
        self._mine.add(request_id)
        try:
            await self.log.append(request_stream(request_id), events, expected_version=0)
        except WrongExpectedVersion:
            self._mine.discard(request_id)
            # the same id raced in from another call: attach to (or refuse) what won
            attached = await self._attach(caller, request_id, mark, wait) if mark else None
            if attached is None:
                raise AskError("request_id: already used; choose another") from None
            return attached
        except BaseException:
            self._mine.discard(request_id)
            raise
        if path == "legacy" and reason != "offline":
            self.metrics.fallbacks.labels(reason).inc()
        req = self.requests.open[request_id]
        self._arm_timeout(req)
        if path == "elicitation" and node in (self.node, None):
            self._start_elicitation(req, target)
        self._mine.discard(request_id)
        if not wait:
            return self._pending(req)
        future = req.result_future()
        # No disarm when the caller goes away: the request lives on, re-attachable, and its
        # deadline timer is what closes it.
        result = await asyncio.shield(future)
        self.metrics.asks.labels(result["path"], result["status"]).inc()
        self.metrics.ask_latency.labels(result["path"]).observe(time.perf_counter() - started)
        return result

    async def _attach(
        self, caller: str, request_id: str, mark: str, wait: bool
    ) -> dict[str, Any] | None:
        """The outcome (or pending state) of the caller's earlier ask with `request_id`;
        None when no request has that id."""
        req = self.requests.open.get(request_id)
        if req is not None:
            if req.caller != caller:
                raise AskError("request_id: already used; choose another")
            if req.fingerprint != mark:
                raise AskError(
                    "request_id: already used by your ask with different arguments "
                    "(to, message, schema or timeout_s); use a new id for a new question"
                )
            if not wait:
                return self._pending(req)
            return await asyncio.shield(req.result_future())
        records = await self._stream(request_id)
        if not records:
            return None
        created = records[0].data
        if records[0].type != REQUEST_CREATED or created.get("from") != caller:
            raise AskError("request_id: already used; choose another")
        theirs = fingerprint(
            created["to"], created["message"], created["schema"], created["timeout_s"]
        )
        if theirs != mark:
            raise AskError(
                "request_id: already used by your ask with different arguments "
                "(to, message, schema or timeout_s); use a new id for a new question"
            )
        return self._closed_view(records) or self._open_view(records)

    async def _stream(self, request_id: str) -> list[Record]:
        return await self.log.read_stream(request_stream(request_id))

    def _pending(self, req: OpenRequest) -> dict[str, Any]:
        return {
            "request_id": req.request_id,
            "status": "pending",
            "content": None,
            "path": req.path,
            "from": req.caller,
            "to": req.recipient,
            "deadline": req.deadline,
        }

    @staticmethod
    def _closed_view(records: list[Record]) -> dict[str, Any] | None:
        created = records[0].data
        path = "legacy"
        for r in records:
            if r.type in (REQUEST_ROUTED, REQUEST_FELL_BACK):
                path = r.data.get("path", "legacy")
            elif r.type in TERMINAL_TYPES:
                return terminal_result(created["request_id"], r.type, r.data, path) | {
                    "from": created["from"],
                    "to": created["recipient"],
                    "deadline": created["deadline"],
                }
        return None

    @staticmethod
    def _open_view(records: list[Record]) -> dict[str, Any]:
        """A request open in the log but not in this process (another bridge's, or one
        whose projection is a moment behind): pending with what the log says."""
        created = records[0].data
        path = "legacy"
        for r in records:
            if r.type in (REQUEST_ROUTED, REQUEST_FELL_BACK):
                path = r.data.get("path", "legacy")
        return {
            "request_id": created["request_id"],
            "status": "pending",
            "content": None,
            "path": path,
            "from": created["from"],
            "to": created["recipient"],
            "deadline": created["deadline"],
        }

    async def get_request(self, caller: str, request_id: object, wait_s: object = 0) -> dict:
        """Status, path and (once answered) the answer of a request `caller` asked or was
        asked; `wait_s` long-polls until the request next changes. Anyone else gets the
        same error as for an id that does not exist."""
        if not isinstance(wait_s, int | float) or isinstance(wait_s, bool):
            raise AskError(f"wait_s: must be a number from 0 to {MAX_GET_WAIT_S:g}")
        if not 0 <= wait_s <= MAX_GET_WAIT_S:
            raise AskError(f"wait_s: must be a number from 0 to {MAX_GET_WAIT_S:g}")
        if not valid_request_id(request_id):
            raise AskError(_UNKNOWN)
        assert isinstance(request_id, str)
        req = self.requests.open.get(request_id)
        if req is not None:
            if caller not in (req.caller, req.recipient):
                raise AskError(_UNKNOWN)
            if wait_s > 0:
                if req.changed is None:
                    req.changed = asyncio.Event()
                changed = req.changed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), wait_s)
            if request_id in self.requests.open:
                return self._pending(self.requests.open[request_id])
        records = await self._stream(request_id)
        if not records or records[0].type != REQUEST_CREATED:
            raise AskError(_UNKNOWN)
        created = records[0].data
        if caller not in (created.get("from"), created.get("recipient")):
            raise AskError(_UNKNOWN)
        return self._closed_view(records) or self._open_view(records)

    def _check_ask(self, to: str, message: str, schema: object, timeout_s: float | None) -> float:
        if not isinstance(to, str) or not to:
            raise AskError("to: must name an agent, role:NAME or capability:NAME")
        if not isinstance(message, str) or not message:
            raise AskError("message: must be a non-empty string")
        try:
            check_schema(schema)
        except ValueError as exc:
            raise AskError(str(exc)) from None
        size = encoded_size(message) + encoded_size(schema)
        if size > self.limits.max_content_bytes:
            raise AskError(
                f"message: the question (message and schema) is {size} bytes, more than the "
                f"limit of {self.limits.max_content_bytes}"
            )
        timeout = self.default_timeout_s if timeout_s is None else timeout_s
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout <= self.max_timeout_s
        ):
            raise AskError(f"timeout_s: must be > 0 and <= {self.max_timeout_s:g}")
        return float(timeout)

    def _check_quota(self, caller: str) -> None:
        held = self.requests.by_caller[caller]
        if held >= self.limits.max_open_per_caller:
            raise AskError(
                f"quota: you have {held} open requests, the limit per caller; wait for "
                "answers or timeouts before asking more"
            )

    def matching(self, caller: str, to: str) -> list[AgentInfo]:
        """Live agents that `to` names: one agent, or every holder of `role:`/`capability:`
        other than the caller. Raises AskError when there is none."""
        kind, _, name = to.partition(":")
        agents = self.registry.agents
        if kind in ("role", "capability") and name:
            attr = "roles" if kind == "role" else "capabilities"
            found = [
                a
                for a in agents.values()
                if not a.revoked and name in getattr(a, attr) and a.agent != caller
            ]
            if not found:
                raise AskError(f"to: no agent has {kind} {name!r}")
            return sorted(found, key=lambda a: a.agent)
        info = agents.get(to)
        if info is None or info.revoked:
            raise AskError(f"to: unknown or revoked agent {to!r}")
        return [info]

    def fan_out(self, caller: str, to: str) -> list[str]:
        """Recipients of a message to `to`, refused above the fan-out cap."""
        found = [a.agent for a in self.matching(caller, to)]
        if len(found) > self.limits.max_fanout:
            raise AskError(
                f"to: {to} names {len(found)} agents, more than the fan-out limit of "
                f"{self.limits.max_fanout}; address a narrower role"
            )
        return found

    def _resolve(self, caller: str, to: str) -> str:
        """One recipient: an online match if any, the least loaded among them; recipients
        at their open-request cap are skipped, and when all are, the ask is refused."""
        matches = self.matching(caller, to)
        cap = self.limits.max_open_per_recipient
        free = [a for a in matches if self.requests.by_recipient[a.agent] < cap]
        if not free:
            raise AskError(
                f"quota: {to} has {cap} open requests waiting, the limit per recipient; "
                "try again later"
            )
        online = [a for a in free if self.presence.online(a.agent)]
        return min(online or free, key=lambda a: self._load(a.agent)).agent

    def _load(self, agent: str) -> int:
        return self.requests.by_recipient[agent]

    def _choose_path(self, recipient: str) -> tuple[str, str]:
        if not (self.presence.online(recipient)):
            if self.presence.bridge_gone(recipient):
                return "legacy", "bridge_gone"  # it was reachable only through a dead bridge
            return "legacy", "offline"
        if self.draining:
            return "legacy", "draining"
        if not self.flags.elicitation_for(recipient):
            return "legacy", "flag_off"
        if not self.presence.elicitation_capable(recipient):
            return "legacy", "no_capability"
        return "elicitation", "eligible"

    # -- messages -------------------------------------------------------------------------

    async def send_message(self, sender: str, to: str, content: object) -> dict[str, Any]:
        """One MessageSent holding the content once, naming every recipient."""
        if not isinstance(content, str) or not content:
            raise AskError("content: must be a non-empty string")
        size = encoded_size(content)
        if size > self.limits.max_content_bytes:
            raise AskError(
                f"content: {size} bytes, more than the limit of {self.limits.max_content_bytes}"
            )
        if not isinstance(to, str) or not to:
            raise AskError("to: must name an agent, role:NAME or capability:NAME")
        recipients = self.fan_out(sender, to)
        message_id = uuid.uuid4().hex
        await self.log.append(
            message_stream(message_id),
            [
                NewEvent(
                    type=MESSAGE_SENT,
                    data={
                        "message_id": message_id,
                        "from": sender,
                        "to": to,
                        "recipients": recipients,
                        "content": content,
                    },
                    actor=sender,
                )
            ],
            expected_version=0,
        )
        return {
            "message_id": message_id,
            "delivered_to": [
                {"agent": r, "status": "queued", "online": self.presence.online(r)}
                for r in recipients
            ],
        }

    # -- timeouts -------------------------------------------------------------------------

    def _arm_timeout(self, req: OpenRequest) -> None:
        """The request's deadline timer. The bridge that took the ask (or an earlier run of
        this node, or anyone for a request that names no node) records the timeout at the
        deadline; every other bridge holds a standby timer `TAKEOVER_GRACE_S` later, so a
        request whose asking bridge died is still timed out while any bridge lives."""
        self._disarm(req.request_id)
        owner = req.asked_on in (None, self.node)
        due = req.deadline if owner else req.deadline + TAKEOVER_GRACE_S
        delay = max(0.0, due - _now())
        loop = asyncio.get_running_loop()
        self._timers[req.request_id] = loop.call_later(
            delay, lambda: self.spawn(self._expire(req) if owner else self._take_over(req))
        )

    def _disarm(self, request_id: str) -> None:
        timer = self._timers.pop(request_id, None)
        if timer is not None:
            timer.cancel()

    def _standby_rank(self, req: OpenRequest) -> int:
        """This bridge's turn among the live bridges that may take over a request its
        asking bridge left (0: first). Node order, the same on every bridge: one bridge
        acts, not all of them at once; the expected version keeps a second one harmless."""
        live = [n for n in self.nodes.live() if n != req.asked_on]
        return live.index(self.node) if self.node in live else len(live)

    async def _take_over(self, req: OpenRequest) -> None:
        """A standby timer fired: the request outlived its deadline by the grace, so its
        asking bridge did not record the timeout. The first live bridge in node order
        records it now; the others look again one grace per place later."""
        self._timers.pop(req.request_id, None)
        if req.closing or req.request_id not in self.requests.open:
            return
        rank = self._standby_rank(req)
        if rank and not req.extra.get("standing_by"):
            req.extra["standing_by"] = True
            loop = asyncio.get_running_loop()
            self._timers[req.request_id] = loop.call_later(
                rank * TAKEOVER_GRACE_S, lambda: self.spawn(self._take_over(req))
            )
            return
        log.warning(
            "request %s outlived its deadline on bridge %s: timing it out here",
            req.request_id,
            req.asked_on,
        )
        await self._expire(req)

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """A background task whose failure is logged, never left unretrieved."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    async def _expire(self, req: OpenRequest) -> None:
        """Close `req` as timed out. The caller is told at the deadline even when the store
        cannot be written: the claim is taken first (later answers are refused), the asker
        gets the timeout, and the write is retried with backoff until the store takes it
        (or repair, finding the deadline passed, records the expiry)."""
        self._timers.pop(req.request_id, None)
        if req.closing or req.request_id not in self.requests.open:
            return  # an answer is being recorded; if it fails, _close re-expires
        req.closing = True
        data = {"request_id": req.request_id}
        delay = RETRY_FIRST_S
        while req.request_id in self.requests.open:
            try:
                await self._append_terminal(req, REQUEST_TIMED_OUT, data, "bridge")
                break
            except AnswerRefused as refused:  # closed by another bridge meanwhile, or busy
                if refused.reason == "already_closed":
                    break
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
            except StoreError as exc:
                if req.answer is None or not req.answer.done():
                    req.result_future().set_result(
                        terminal_result(req.request_id, REQUEST_TIMED_OUT, data, req.path)
                    )
                    log.warning(
                        "timeout of request %s not recorded (%s); retrying", req.request_id, exc
                    )
                self.metrics.tool_calls.labels("timeout_write", "retry").inc()
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
        self._after_close(req)

    def _after_close(self, req: OpenRequest) -> None:
        self._disarm(req.request_id)
        if req.delivery is not None and req.delivery is not asyncio.current_task():
            req.delivery.cancel()

    # -- answering ------------------------------------------------------------------------

    async def answer(
        self, request_id: str, by: str, action: str, content: object, path: str
    ) -> dict[str, Any]:
        """Accept one answer for an open request, or refuse it and record why."""
        if not valid_request_id(request_id):
            refused = AnswerRefused("bad_request_id", "request_id must be 1-64 of A-Z a-z 0-9 _ -")
            await self._record_refusal(request_id, False, by, path, refused, content)
            raise refused
        req = self.requests.open.get(request_id)
        known = req is not None or await self._was_created(request_id)
        try:
            terminal = self._check_answer(req, known, by, action, content)
        except AnswerRefused as refused:
            await self._record_refusal(request_id, known, by, path, refused, content)
            raise
        assert req is not None
        offered_at = req.extra.pop("offered_at", None)
        if path == "elicitation" and offered_at is not None:
            self._observe(True, offered_at)  # 2026-07-28: answered on the retried wait call
        data = {"request_id": request_id, "by": by, "path": path}
        if action == "accept":
            data["content"] = content
        return await self._close(
            req, terminal, data, by, path=path, content=content if action == "accept" else None
        )

    async def _was_created(self, request_id: str) -> bool:
        """Whether the log has the request: the bounded index first, then its stream."""
        if request_id in self.requests.closed:
            return True
        return bool(await self.log.store.read_stream(request_stream(request_id), limit=1))

    def _check_answer(
        self, req: OpenRequest | None, known: bool, by: str, action: str, content: object
    ) -> str:
        if req is None or req.closing:
            if known:
                raise AnswerRefused("already_closed", "this request already has its answer")
            raise AnswerRefused("unknown_request", "no such request")
        if by != req.recipient:
            raise AnswerRefused("not_recipient", "only the request's recipient may answer it")
        terminal = TERMINAL_BY_ACTION.get(action)
        if terminal is None:
            raise AnswerRefused("bad_action", "action must be accept, decline or cancel")
        if action == "accept":
            if not req.askable:
                raise AnswerRefused(
                    "question_erased",
                    "the question was erased (its asker was forgotten); decline or cancel it",
                )
            size = encoded_size(content)
            if size > self.limits.max_content_bytes:
                raise AnswerRefused(
                    "too_large",
                    f"content is {size} bytes, more than the limit of "
                    f"{self.limits.max_content_bytes}",
                )
            try:
                check_content(req.schema, content)
            except ContentError as exc:
                raise AnswerRefused(
                    "invalid_content", f"content does not match schema: {exc}"
                ) from None
            except Exception as exc:  # a schema stored before its keywords were type-checked
                log.warning(
                    "request %s: its schema cannot check an answer: %r", req.request_id, exc
                )
                raise AnswerRefused(
                    "unusable_schema",
                    "the request's schema cannot check an answer; decline or cancel it",
                ) from None
        return terminal

    async def _record_refusal(
        self,
        request_id: object,
        known: bool,
        by: str,
        path: str,
        refused: AnswerRefused,
        content: object,
    ) -> None:
        """Record the refusal with a bounded digest of what was sent, never the payload."""
        data: dict[str, Any] = {
            "request_id": request_id
            if valid_request_id(request_id)
            else printable(str(request_id))[:80],
            "by": by,
            "path": path,
            "reason": refused.reason,
            "detail": str(refused)[:300],
            "content": None if content is None else digest(content),
        }
        if not valid_request_id(request_id):
            data["request_id_digest"] = digest(request_id)
        stream = request_stream(str(request_id)) if known else "requests-unknown"
        try:
            await self.log.record(stream, ANSWER_REJECTED, data, actor=by)
        except StoreError as exc:  # the refusal is still the caller's answer
            log.warning("refusal of an answer to %s not recorded: %s", data["request_id"], exc)

    async def _close(
        self,
        req: OpenRequest,
        terminal: str,
        data: dict[str, Any],
        actor: str,
        *,
        path: str,
        content: object,
    ) -> dict[str, Any]:
        if req.closing:
            raise AnswerRefused("already_closed", "this request already has its answer")
        req.closing = True  # claimed before the await: a racing answer is refused above
        try:
            await self._append_terminal(req, terminal, data, actor)
        except BaseException:
            req.closing = False
            if req.request_id not in self._timers and req.request_id in self.requests.open:
                self._arm_timeout(req)  # the deadline timer may have fired meanwhile
            raise
        self._after_close(req)
        return {
            "request_id": req.request_id,
            "status": STATUS_BY_TERMINAL[terminal],
            "content": content,
            "path": path,
        }

    # -- elicitation ----------------------------------------------------------------------

    def _start_elicitation(self, req: OpenRequest, target: LiveSession | None) -> None:
        """`target`: the session picked when the request was appended, its RequestDelivered
        already recorded with it."""
        if target is not None:
            req.delivery = self.spawn(self._push(req, target, recorded=True))
        elif req.node is None:  # a 2026-07-28 wait, held here or on another bridge
            self._offer(req)
        else:
            req.delivery = self.spawn(self._push_when_stream_opens(req))

    async def _push_when_stream_opens(self, req: OpenRequest) -> None:
        """A session that declared elicitation but has no open stream yet (the SDK opens its
        GET stream just after initialize): give it a moment, then fall back to the mailbox,
        because a push without a stream is silently dropped by the SDK."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STREAM_WAIT_S
        while loop.time() < deadline and not req.closing:
            target = self.presence.push_target(req.recipient)
            if target is not None:
                req.delivery = asyncio.current_task()
                await self._push(req, target)
                return
            await asyncio.sleep(0.05)
        req.delivery = None
        await self.fall_back(req, "no_stream")

    async def _push(
        self, req: OpenRequest, session: LiveSession, *, recorded: bool = False
    ) -> None:
        """Send elicitation/create on the recipient session's GET stream; take its answer.
        `recorded`: its RequestDelivered was already appended with the request."""
        if not req.askable:
            return  # erased while it waited for a stream: it went to the mailbox instead
        self.metrics.elicitations_in_flight.inc()
        req.extra["session_id"] = session.session_id
        started = time.perf_counter()
        try:
            if not recorded:
                await self.log.record(
                    request_stream(req.request_id),
                    REQUEST_DELIVERED,
                    _delivered(req.request_id, req.recipient, session),
                    actor="bridge",
                )
            while not req.closing and req.askable:
                remaining = req.deadline - _now()
                if remaining <= 0:
                    return
                async with asyncio.timeout(remaining):
                    result = await session.handle.elicit_form(req.message, req.schema)
                self._observe(True, started)
                try:
                    await self._answer_pushed(req, result.action, result.content)
                    return
                except AnswerRefused as refused:
                    if refused.reason != "invalid_content":
                        return
        except TimeoutError:
            self.metrics.elicitations.labels("timeout").inc()
            return
        except PushFailed as exc:
            self._observe(False, started)
            gone = exc.gone or self.presence.get(session.session_id) is None
            cause = "session_gone" if gone else "transport_error"
            log.info("elicitation of %s failed (%s): %s", req.request_id, cause, exc)
            await self.fall_back(req, cause)
        finally:
            self.metrics.elicitations_in_flight.dec()

    async def _answer_pushed(self, req: OpenRequest, action: str, content: object) -> None:
        """Record an elicitation's answer; while the store refuses writes, keep trying (with
        backoff) until the deadline, after which the timeout wins."""
        delay = RETRY_FIRST_S
        while True:
            try:
                await self.answer(req.request_id, req.recipient, action, content, "elicitation")
                return
            except StoreError as exc:
                if _now() + delay >= req.deadline:
                    log.warning(
                        "answer to %s not recorded before its deadline: %s", req.request_id, exc
                    )
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    def _observe(self, ok: bool, started: float) -> None:
        self.metrics.elicitations.labels("answered" if ok else "failed").inc()
        if self.elicitation_observer is not None:
            decision = self.elicitation_observer.observe(ok, time.perf_counter() - started)
            if decision is not None:
                self.spawn(self.elicitation_observer.trip(decision))

    def _offer(self, req: OpenRequest) -> None:
        """Queue for the recipient's pending 2026-07-28 `wait_for_messages` call."""
        req.offered = False
        self.wake(req.recipient)

    def offers_for(self, agent: str, limit: int) -> list[OpenRequest]:
        now = _now()
        found = [
            r
            for r in self.requests.open.values()
            if r.recipient == agent
            and r.path == "elicitation"
            and not r.closing
            and r.delivery is None
            and r.deadline > now
            and r.askable
        ]
        found.sort(key=lambda r: r.created_at)
        return fair(found, lambda r: r.caller, limit)

    async def mark_offered(self, reqs: list[OpenRequest]) -> None:
        await asyncio.gather(
            *(
                self.log.record(
                    request_stream(r.request_id),
                    REQUEST_DELIVERED,
                    {
                        "request_id": r.request_id,
                        "to": r.recipient,
                        "path": "elicitation",
                        "session_id": None,
                        "item": r.request_id,
                    },
                    actor="bridge",
                )
                for r in reqs
                if not r.offered
            )
        )
        for r in reqs:
            if not r.offered:
                r.extra["offered_at"] = time.perf_counter()
            r.offered = True

    # -- fallback -------------------------------------------------------------------------

    async def fall_back(self, req: OpenRequest, cause: str) -> bool:
        """Move an elicitation-path request to the recipient's legacy mailbox (once).

        A push still pending on a live session is left to finish or time out: whichever
        answer comes first wins, the other is refused and recorded. Cancelling SDK
        elicitations in bulk (a forced kill switch under load) coincided with the SDK's
        client sessions failing with "Connection closed" (benchmark, 400 pairs; measured
        before the listen-backlog fix, which may have been the larger cause)."""
        if (
            req.closing
            or req.falling_back
            or req.path != "elicitation"
            or req.request_id not in self.requests.open
        ):
            return False
        # Causes race (a closing GET stream and the DELETE that follows it): claim the move
        # before the first await so only one of them records it.
        req.falling_back = True
        delivery, req.delivery = req.delivery, None
        if cause in _SESSION_DEAD and delivery not in (None, asyncio.current_task()):
            delivery.cancel()
        event = NewEvent(
            type=REQUEST_FELL_BACK,
            data={
                "request_id": req.request_id,
                "recipient": req.recipient,
                "path": "legacy",
                "cause": cause,
            },
            actor="bridge",
        )
        try:
            moved = await self._append_if_unchanged(req, event, moving=True)
        except StoreError as exc:
            self._fall_back_later(req, cause, exc)
            return False
        finally:
            req.falling_back = False
        if moved:
            self.metrics.fallbacks.labels(cause).inc()
        return moved

    def _fall_back_later(self, req: OpenRequest, cause: str, exc: StoreError) -> None:
        """The move could not be recorded (a full disk, the database out of reach). Its
        push is already cancelled, so nothing would deliver the request before its
        deadline: the move is tried again, backing off, until the store takes it or the
        request closes — in the background, because callers (a DELETE, a drain) must not
        hang on a store that is down."""
        tries = req.extra["fall_back_tries"] = req.extra.get("fall_back_tries", 0) + 1
        delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (tries - 1))
        log.warning(
            "move of request %s to the mailbox not recorded (%s); retrying in %.2f s",
            req.request_id,
            exc,
            delay,
        )
        self.metrics.tool_calls.labels("fallback_write", "retry").inc()
        loop = asyncio.get_running_loop()
        loop.call_later(delay, lambda: self.spawn(self.fall_back(req, cause)))

    def _questions_erased(self, requests: list[OpenRequest]) -> None:
        """Their caller was forgotten (here or on another bridge): the questions read
        ``[erased]``, and a question that is gone cannot be put as a form. Each one this
        bridge moves along — it pushes it, or asked it for a 2026-07-28 offer — goes to
        the recipient's mailbox, where it reads ``[erased]`` and can be declined (or
        times out). It stays open: the recipient learns it was asked something, not
        what. A form already on the recipient's screen cannot be recalled; accepting it
        is refused (`question_erased`: there is no schema left to check an answer)."""
        for req in requests:
            pusher = req.node == self.node or (req.node is None and req.asked_on == self.node)
            if req.path == "elicitation" and pusher:
                self.spawn(self.fall_back(req, "contents_erased"))

    def waiting_callers(self) -> int:
        """Asks whose caller is still waiting for the answer."""
        return sum(
            1 for r in self.requests.open.values() if r.answer is not None and not r.answer.done()
        )

    def in_flight(self) -> list[OpenRequest]:
        return [r for r in self.requests.open.values() if r.path == "elicitation" and not r.closing]

    async def fall_back_all(self, cause: str, agents: set[str] | None = None) -> int:
        moved = await asyncio.gather(
            *(
                self.fall_back(r, cause)
                for r in self.in_flight()
                if agents is None or r.recipient in agents
            )
        )
        return sum(moved)

    def _flags_changed(self, old: FlagState, new: FlagState) -> None:
        if not new.force:
            return
        excluded = {
            r.recipient for r in self.in_flight() if not self.flags.elicitation_for(r.recipient)
        }
        if excluded:
            self.spawn(self.fall_back_all("kill_switch", excluded))

    async def session_gone(self, session_id: str) -> None:
        for req in self.in_flight():
            if req.extra.get("session_id") == session_id:
                await self.fall_back(req, "session_gone")

    async def stream_lost(self, session_id: str) -> int:
        """The GET stream of `session_id` lost its client: what it carried falls back."""
        session = self.presence.get(session_id)
        cause = "transport_error" if session is not None and not session.ending else "session_gone"
        riding = [r for r in self.in_flight() if r.extra.get("session_id") == session_id]
        moved = await asyncio.gather(*(self.fall_back(r, cause) for r in riding))
        return sum(moved)

    async def adopt_open_requests(self) -> int:
        """After a restart: deadline timers back, and THIS bridge's elicitations (whose
        sessions died with the old process) moved to the legacy mailbox; another live
        bridge's pushes are left alone. Returns how many moved. (Every bridge holds a timer
        for every open request, a standby one for a peer's: `_arm_timeout`.)"""
        for req in self.requests.open.values():
            if req.request_id not in self._timers:
                self._arm_timeout(req)
        mine = [r for r in self.in_flight() if r.node in (None, self.node)]
        moved = await asyncio.gather(*(self.fall_back(r, "bridge_restart") for r in mine))
        return sum(moved)

    async def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    # -- several bridges ------------------------------------------------------------------

    def _push_node(self, recipient: str) -> str | None:
        """Which bridge pushes: this one when it holds a session (or the 2026-07-28 wait)
        that can take it, else the bridge of the recipient's newest capable session. None:
        offered to whichever bridge's wait call the 2026-07-28 recipient holds."""
        if self.presence.push_target(recipient) is not None:
            return self.node
        if any(s.elicitation for s in self.presence.sessions_of(recipient)):
            return self.node  # its stream is about to open here (`_push_when_stream_opens`)
        if self.presence.modern_reachable(recipient):
            return None
        node = self.presence.remote_target(recipient)[0]
        if node is None and self.presence.remote_modern_reachable(recipient):
            return None  # its wait is held on another bridge, which `on_followed` wakes
        return node or self.node

    def on_followed(self, fact: Fact) -> None:
        """A fact another bridge appended, just applied: push what was routed to us, and
        keep a standby deadline timer for every open request (`_arm_timeout`)."""
        if fact.type in TERMINAL_TYPES:
            self._disarm(fact.data["request_id"])  # closed elsewhere: no timer left behind
            return
        if fact.type not in (REQUEST_CREATED, REQUEST_ROUTED, REQUEST_FELL_BACK):
            return
        req = self.requests.open.get(fact.data.get("request_id", ""))
        if req is None or req.request_id in self._mine or req.closing:
            return
        if fact.type == REQUEST_CREATED:
            if req.request_id not in self._timers:
                self._arm_timeout(req)
            return
        if req.path == "legacy":
            return  # the mailbox projection queued it and woke the waiter
        if req.node == self.node and req.delivery is None:
            self._start_elicitation(req, None)
        elif req.node is None:
            self.wake(req.recipient)  # a 2026-07-28 wait held here may offer it

    def check_peers(self) -> None:
        """Heartbeat tick: requests whose pushing bridge is gone move to the mailbox
        (`bridge_gone`), where the recipient's `wait_for_messages` on any bridge gets them.
        The asking bridge moves its own; when it is gone too (or the request names none),
        the first live bridge in node order does. The move is appended with the stream's
        expected version, so two bridges that disagree for a beat still move it once."""
        for req in self.in_flight():
            if req.node is None or req.node == self.node or self.nodes.alive(req.node):
                continue
            if req.asked_on == self.node or (
                (req.asked_on is None or not self.nodes.alive(req.asked_on))
                and self._standby_rank(req) == 0
            ):
                self.spawn(self.fall_back(req, "bridge_gone"))

    async def _append_terminal(
        self, req: OpenRequest, terminal: str, data: dict[str, Any], actor: str
    ) -> None:
        """The terminal fact, appended only if nothing else entered the request's stream
        since we last saw it; a fact from elsewhere (a delivery, a refusal — or another
        bridge's terminal fact) makes us catch up with the log and look again."""
        event = NewEvent(type=terminal, data=data, actor=actor)
        if not await self._append_if_unchanged(req, event, moving=False):
            if req.request_id not in self.requests.open:
                raise AnswerRefused("already_closed", "this request already has its answer")
            raise AnswerRefused("busy", "the request changed under every attempt to close it")

    async def _append_if_unchanged(
        self, req: OpenRequest, event: NewEvent, *, moving: bool
    ) -> bool:
        """Append `event` to the request's stream at the version this bridge last saw; on a
        conflict catch up with the log and try again while the request is open — and, for
        a move to the mailbox (`moving`), still in flight on the elicitation path and not
        being closed (another bridge may have moved it first). False: not appended."""
        stream = request_stream(req.request_id)
        for _ in range(_CAS_ATTEMPTS):
            try:
                await self.log.append(stream, [event], expected_version=req.version)
                return True
            except WrongExpectedVersion:
                await self.log.catch_up()
                if req.request_id not in self.requests.open:
                    return False
                if moving and (req.path != "elicitation" or req.closing):
                    return False
        return False


_CAS_ATTEMPTS = 20
