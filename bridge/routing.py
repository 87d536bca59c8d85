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
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from events import NewEvent, WrongExpectedVersion
from security import AgentInfo, KeyRegistry

from .display import printable
from .domain import (
    ANSWER_REJECTED,
    REQUEST_CREATED,
    REQUEST_DELIVERED,
    REQUEST_FELL_BACK,
    REQUEST_ROUTED,
    REQUEST_TIMED_OUT,
    STATUS_BY_TERMINAL,
    TERMINAL_BY_ACTION,
    TERMINAL_TYPES,
    Fact,
    request_stream,
    valid_request_id,
)
from .flags import Flags, FlagState
from .log import Log
from .mcp import PushFailed
from .metrics import Metrics
from .nodes import SoloNodes
from .schema import ContentError, check_content, check_schema
from .sessions import LiveSession, Presence

log = logging.getLogger(__name__)


STREAM_WAIT_S = 2.0


class AskError(ValueError):
    """The ask cannot be made (bad target, schema or timeout); nothing was recorded."""


class AnswerRefused(Exception):
    """An answer that is not accepted; `reason` is the stable code recorded in the log."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(slots=True)
class OpenRequest:
    """A request without a terminal fact yet (a projection of its stream)."""

    request_id: str
    caller: str
    recipient: str
    message: str
    schema: dict[str, Any]
    deadline: float
    created_at: float
    path: str = "legacy"
    closing: bool = False
    falling_back: bool = False  # a RequestFellBack is being recorded
    answer: asyncio.Future[dict[str, Any]] | None = None
    delivery: asyncio.Task[None] | None = None
    offered: bool = False  # handed to a 2026-07-28 wait call
    elicitation_rounds: int = 0
    node: str | None = None  # the bridge that pushes it (RequestRouted.node)
    version: int = 0  # facts in its stream so far: the terminal append expects it
    extra: dict[str, Any] = field(default_factory=dict)


class Requests:
    """Projection: the open requests and how each closed (for late-answer refusals)."""

    def __init__(self) -> None:
        self.open: dict[str, OpenRequest] = {}
        self.closed: dict[str, str] = {}  # request id -> terminal type

    def apply(self, fact: Fact) -> None:
        data = fact.data
        req = self.open.get(data.get("request_id", "")) if isinstance(data, dict) else None
        if req is not None and fact.stream == request_stream(req.request_id):
            req.version += 1
        if fact.type == REQUEST_CREATED:
            self.open[data["request_id"]] = OpenRequest(
                data["request_id"],
                data["from"],
                data["recipient"],
                data["message"],
                data["schema"],
                data["deadline"],
                fact.time,
                version=1,
            )
        elif fact.type in (REQUEST_ROUTED, REQUEST_FELL_BACK):
            if req is not None:
                req.path = data.get("path", "legacy")
                req.node = data.get("node") if req.path == "elicitation" else None
        elif fact.type in TERMINAL_TYPES:
            self.closed[data["request_id"]] = fact.type
            closed = self.open.pop(data["request_id"], None)
            if closed is not None:
                _settle(closed, fact)


def _settle(req: OpenRequest, fact: Fact) -> None:
    """A terminal fact, written here or by another bridge, ends the request's local life:
    the waiting `ask` gets its result and a push still pending is stopped."""
    if req.delivery is not None and req.delivery is not asyncio.current_task():
        req.delivery.cancel()
    if req.answer is not None and not req.answer.done():
        data = fact.data
        req.answer.set_result(
            {
                "request_id": req.request_id,
                "status": STATUS_BY_TERMINAL[fact.type],
                "content": data.get("content"),
                "path": data.get("path", req.path),
            }
        )


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
        self.draining = False
        self.stopping = False  # this bridge is shutting down: new asks are refused
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._background: set[asyncio.Task[Any]] = set()
        self.elicitation_observer: Any = None  # the auto-rollback guard (bridge.guard.Guard)
        self.wake: Any = lambda agent: None  # wakes the recipient's pending wait call
        flags.on_change(self._flags_changed)

    # -- asking ---------------------------------------------------------------------------

    async def ask(
        self, caller: str, to: str, message: str, schema: object, timeout_s: float | None
    ) -> dict[str, Any]:
        started = time.perf_counter()
        if self.stopping:
            raise AskError("bridge_stopping: this bridge is shutting down; retry the ask shortly")
        checked = self._check_ask(to, message, schema, timeout_s)
        recipient = self._resolve(caller, to)
        timeout = checked
        request_id = uuid.uuid4().hex
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
        except BaseException:
            self._mine.discard(request_id)
            raise
        if path == "legacy" and reason != "offline":
            self.metrics.fallbacks.labels(reason).inc()
        req = self.requests.open[request_id]
        req.answer = asyncio.get_running_loop().create_future()
        self._arm_timeout(req)
        if path == "elicitation" and node in (self.node, None):
            self._start_elicitation(req, target)
        self._mine.discard(request_id)
        try:
            result = await asyncio.shield(req.answer)
        finally:
            self._disarm(req)
        self.metrics.asks.labels(result["path"], result["status"]).inc()
        self.metrics.ask_latency.labels(result["path"]).observe(time.perf_counter() - started)
        return result

    def _check_ask(self, to: str, message: str, schema: object, timeout_s: float | None) -> float:
        if not isinstance(to, str) or not to:
            raise AskError("to: must name an agent, role:NAME or capability:NAME")
        if not isinstance(message, str) or not message:
            raise AskError("message: must be a non-empty string")
        try:
            check_schema(schema)
        except ValueError as exc:
            raise AskError(str(exc)) from None
        timeout = self.default_timeout_s if timeout_s is None else timeout_s
        if not isinstance(timeout, int | float) or not 0 < timeout <= self.max_timeout_s:
            raise AskError(f"timeout_s: must be > 0 and <= {self.max_timeout_s:g}")
        return float(timeout)

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

    def _resolve(self, caller: str, to: str) -> str:
        """One recipient: an online match if any, the least loaded among them."""
        matches = self.matching(caller, to)
        online = [a for a in matches if self.presence.online(a.agent)]
        return min(online or matches, key=lambda a: self._load(a.agent)).agent

    def _load(self, agent: str) -> int:
        return sum(1 for r in self.requests.open.values() if r.recipient == agent)

    def _choose_path(self, recipient: str) -> tuple[str, str]:
        if not (self.presence.online(recipient)):
            if self.presence.remote_target(recipient)[1]:
                return "legacy", "bridge_gone"  # its only sessions were on a dead bridge
            return "legacy", "offline"
        if self.draining:
            return "legacy", "draining"
        if not self.flags.elicitation_for(recipient):
            return "legacy", "flag_off"
        if not self.presence.elicitation_capable(recipient):
            return "legacy", "no_capability"
        return "elicitation", "eligible"

    # -- timeouts -------------------------------------------------------------------------

    def _arm_timeout(self, req: OpenRequest) -> None:
        delay = max(0.0, req.deadline - _now())
        loop = asyncio.get_running_loop()
        self._timers[req.request_id] = loop.call_later(
            delay, lambda: self._spawn(self._expire(req))
        )

    def _disarm(self, req: OpenRequest) -> None:
        timer = self._timers.pop(req.request_id, None)
        if timer is not None:
            timer.cancel()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _expire(self, req: OpenRequest) -> None:
        with contextlib.suppress(AnswerRefused):
            await self._close(
                req,
                REQUEST_TIMED_OUT,
                {"request_id": req.request_id},
                "bridge",
                path=req.path,
                content=None,
            )

    # -- answering ------------------------------------------------------------------------

    async def answer(
        self, request_id: str, by: str, action: str, content: object, path: str
    ) -> dict[str, Any]:
        """Accept one answer for an open request, or refuse it and record why."""
        if not valid_request_id(request_id):
            refused = AnswerRefused("bad_request_id", "request_id must be 1-64 of A-Z a-z 0-9 _ -")
            await self._record_refusal(printable(str(request_id))[:80], by, path, refused, None)
            raise refused
        req = self.requests.open.get(request_id)
        try:
            terminal = self._check_answer(req, request_id, by, action, content)
        except AnswerRefused as refused:
            await self._record_refusal(request_id, by, path, refused, content)
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

    def _check_answer(
        self, req: OpenRequest | None, request_id: str, by: str, action: str, content: object
    ) -> str:
        if req is None or req.closing:
            if request_id in self.requests.closed or (req is not None and req.closing):
                raise AnswerRefused("already_closed", "this request already has its answer")
            raise AnswerRefused("unknown_request", f"no request {request_id!r}")
        if by != req.recipient:
            raise AnswerRefused("not_recipient", "only the request's recipient may answer it")
        terminal = TERMINAL_BY_ACTION.get(action)
        if terminal is None:
            raise AnswerRefused("bad_action", "action must be accept, decline or cancel")
        if action == "accept":
            try:
                check_content(req.schema, content)
            except ContentError as exc:
                raise AnswerRefused(
                    "invalid_content", f"content does not match schema: {exc}"
                ) from None
            except Exception as exc:  # a schema stored before its keywords were type-checked
                log.warning("request %s: its schema cannot check an answer: %r", request_id, exc)
                raise AnswerRefused(
                    "unusable_schema",
                    "the request's schema cannot check an answer; decline or cancel it",
                ) from None
        return terminal

    async def _record_refusal(
        self, request_id: str, by: str, path: str, refused: AnswerRefused, content: object
    ) -> None:
        stream = (
            request_stream(request_id)
            if request_id in self.requests.open or request_id in self.requests.closed
            else "requests-unknown"
        )
        await self.log.record(
            stream,
            ANSWER_REJECTED,
            {
                "request_id": request_id,
                "by": by,
                "path": path,
                "reason": refused.reason,
                "detail": str(refused),
                "content": content,
            },
            actor=by,
        )

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
        except Exception:
            req.closing = False
            raise
        self._disarm(req)
        if req.delivery is not None and req.delivery is not asyncio.current_task():
            req.delivery.cancel()
        result = {
            "request_id": req.request_id,
            "status": STATUS_BY_TERMINAL[terminal],
            "content": content,
            "path": path,
        }
        if req.answer is not None and not req.answer.done():
            req.answer.set_result(result)
        return result

    # -- elicitation ----------------------------------------------------------------------

    def _start_elicitation(self, req: OpenRequest, target: LiveSession | None) -> None:
        """`target`: the session picked when the request was appended, its RequestDelivered
        already recorded with it."""
        if target is not None:
            req.delivery = self._spawn(self._push(req, target, recorded=True))
        elif self.presence.modern_reachable(req.recipient):
            self._offer(req)
        else:
            req.delivery = self._spawn(self._push_when_stream_opens(req))

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
            while not req.closing:
                remaining = req.deadline - _now()
                if remaining <= 0:
                    return
                async with asyncio.timeout(remaining):
                    result = await session.handle.elicit_form(req.message, req.schema)
                self._observe(True, started)
                try:
                    await self.answer(
                        req.request_id, req.recipient, result.action, result.content, "elicitation"
                    )
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

    def _observe(self, ok: bool, started: float) -> None:
        self.metrics.elicitations.labels("answered" if ok else "failed").inc()
        if self.elicitation_observer is not None:
            decision = self.elicitation_observer.observe(ok, time.perf_counter() - started)
            if decision is not None:
                self._spawn(self.elicitation_observer.trip(decision))

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
        ]
        found.sort(key=lambda r: r.created_at)
        return found[:limit]

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
        try:
            await self.log.record(
                request_stream(req.request_id),
                REQUEST_FELL_BACK,
                {
                    "request_id": req.request_id,
                    "recipient": req.recipient,
                    "path": "legacy",
                    "cause": cause,
                },
                actor="bridge",
            )
        finally:
            req.falling_back = False
        self.metrics.fallbacks.labels(cause).inc()
        return True

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
            self._spawn(self.fall_back_all("kill_switch", excluded))

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
        bridge's pushes are left alone. Returns how many moved. (Every bridge arms a timer
        for every open request: the terminal append's expected version lets one win.)"""
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
        return self.presence.remote_target(recipient)[0] or self.node

    def on_followed(self, fact: Fact) -> None:
        """A fact another bridge appended, just applied: push what was routed to us."""
        if fact.type not in (REQUEST_ROUTED, REQUEST_FELL_BACK):
            return
        req = self.requests.open.get(fact.data.get("request_id", ""))
        if req is None or req.request_id in self._mine or req.closing:
            return
        if req.path == "legacy":
            return  # the mailbox projection queued it and woke the waiter
        if req.node == self.node and req.delivery is None:
            self._start_elicitation(req, None)
        elif req.node is None:
            self.wake(req.recipient)  # a 2026-07-28 wait held here may offer it

    def check_peers(self) -> None:
        """Heartbeat tick: requests this bridge asked whose pushing bridge is gone move to
        the mailbox (`bridge_gone`); the asking bridge does it because it holds the
        caller's wait (if it died too, the next bridge to start adopts the timers)."""
        for req in self.in_flight():
            if (
                req.node is not None
                and req.node != self.node
                and req.answer is not None
                and not self.nodes.alive(req.node)
            ):
                self._spawn(self.fall_back(req, "bridge_gone"))

    async def _append_terminal(
        self, req: OpenRequest, terminal: str, data: dict[str, Any], actor: str
    ) -> None:
        """The terminal fact, appended only if nothing else entered the request's stream
        since we last saw it; a fact from elsewhere (a delivery, a refusal — or another
        bridge's terminal fact) makes us catch up with the log and look again."""
        stream = request_stream(req.request_id)
        event = NewEvent(type=terminal, data=data, actor=actor)
        for _ in range(_CAS_ATTEMPTS):
            try:
                await self.log.append(stream, [event], expected_version=req.version)
                return
            except WrongExpectedVersion:
                await self.log.catch_up()
                if req.request_id not in self.requests.open:
                    raise AnswerRefused(
                        "already_closed", "this request already has its answer"
                    ) from None
        raise AnswerRefused("busy", "the request changed under every attempt to close it")


_CAS_ATTEMPTS = 20
