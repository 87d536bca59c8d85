"""Who is connected right now, and through what a question can reach them.

Live state only — the log keeps SessionOpened/SessionClosed for the record, but a session
handle cannot be rebuilt from history. A 2025-era session can be pushed to while its
standalone GET stream is open: we answer every POST with a JSON body (so SDK clients keep
their connections alive — an SSE response costs them a fresh TCP connection per call), and a
JSON body cannot carry a server request, so the GET stream is the only way in; we never pick
a session without one. A
2026-07-28 client has no session: it is reachable while it holds a `wait_for_messages` call.

Several bridges on one store: a session lives on the bridge whose node id starts it.
`apply` follows SessionOpened/SessionClosed (they name the node) so every bridge knows
the *remote* sessions too — enough to route a request to the recipient's bridge, which
then pushes it (only it holds the stream). A remote session counts only while its node is
alive (`alive`, from the heartbeats).

A 2026-07-28 wait is no fact in the log (a fact per wait call would put every poll in the
signed chain), so its reachability travels beside it: each bridge shares the modern agents
it saw (`modern_due` / `modern_shared`, written by `PostgresNodes` once a tick, an agent at
most every `SHARE_EVERY_S` while it keeps waiting) and learns its peers' (`remote_modern_seen`,
read on the same tick). A peer's agent counts for `MODERN_SEEN_S` after it was seen there,
while that peer is alive — the same window as one of ours.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .domain import SESSION_CLOSED, SESSION_OPENED, Fact

MODERN_PROTOCOL = "2026-07-28"
MODERN_SEEN_S = 60.0
# A modern agent still waiting is shared again this often: four times per window keeps its
# row fresh on every peer without a write per call.
SHARE_EVERY_S = MODERN_SEEN_S / 4


@dataclass(slots=True)
class LiveSession:
    session_id: str
    agent: str
    protocol: str
    elicitation: bool
    handle: Any  # bridge.mcp.Session: pushes go through it
    get_streams: int = 0
    ending: bool = False  # its client asked to end it (DELETE): streams closing now are not errors
    opened_at: float = field(default_factory=time.time)


@dataclass(slots=True)
class KnownSession:
    """A session as the log tells it: on which bridge, for whom, whether it can elicit."""

    session_id: str
    agent: str
    node: str
    elicitation: bool


@dataclass(slots=True)
class ModernClient:
    """A 2026-07-28 agent: reachable through its pending waits."""

    waiting: int = 0
    elicitation: bool = False
    last_seen: float = 0.0
    # what the other bridges were last told (`Presence.modern_shared`)
    shared_at: float = float("-inf")
    shared_seen: float = float("-inf")
    shared_elicitation: bool | None = None


@dataclass(slots=True, frozen=True)
class ModernSeen:
    """One agent this bridge saw, to be shared: `age` seconds ago (0 while it waits) —
    an age, not a time, so the peers' and the database's clocks never meet ours."""

    agent: str
    elicitation: bool
    age: float
    seen: float  # on our clock: what `shared_seen` becomes once written


class Presence:
    def __init__(
        self,
        node: str = "",
        alive: Callable[[str | None], bool] = lambda node: True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node = node
        self.alive = alive
        self.clock = clock
        self._known: dict[str, KnownSession] = {}  # from the log, every node's
        self._known_by_agent: dict[str, dict[str, KnownSession]] = {}
        self._sessions: dict[str, LiveSession] = {}
        self._by_agent: dict[str, dict[str, LiveSession]] = {}  # agent -> sessions, in order
        self._owners: dict[str, str] = {}
        self._modern: dict[str, ModernClient] = {}
        # agent -> node -> (elicitation, when seen there on our clock): other bridges' waits
        self._remote_modern: dict[str, dict[str, tuple[bool, float]]] = {}
        # GET streams of issued sessions not yet opened: a client may send its GET alongside
        # `notifications/initialized`, and the GET can win the race.
        self._early_streams: dict[str, int] = {}

    # -- sessions -------------------------------------------------------------------------

    def owner(self, session_id: str) -> str | None:
        return self._owners.get(session_id)

    def claim(self, session_id: str, agent: str) -> None:
        """Bind a freshly issued session id to the agent whose request created it."""
        self._owners[session_id] = agent

    def open(self, session: LiveSession) -> None:
        self._owners[session.session_id] = session.agent
        self._sessions[session.session_id] = session
        self._by_agent.setdefault(session.agent, {})[session.session_id] = session
        session.get_streams += self._early_streams.pop(session.session_id, 0)

    def close(self, session_id: str) -> LiveSession | None:
        self._owners.pop(session_id, None)
        self._early_streams.pop(session_id, None)
        session = self._sessions.pop(session_id, None)
        if session is not None:
            mine = self._by_agent.get(session.agent, {})
            mine.pop(session_id, None)
            if not mine:
                self._by_agent.pop(session.agent, None)
        return session

    def get(self, session_id: str | None) -> LiveSession | None:
        return self._sessions.get(session_id) if session_id else None

    def stream_opened(self, session_id: str) -> None:
        session = self._sessions.get(session_id)
        if session is not None:
            session.get_streams += 1
        elif session_id in self._owners:
            self._early_streams[session_id] = self._early_streams.get(session_id, 0) + 1

    def stream_closed(self, session_id: str) -> None:
        session = self._sessions.get(session_id)
        if session is not None:
            session.get_streams = max(0, session.get_streams - 1)
        elif session_id in self._early_streams:
            left = self._early_streams.pop(session_id) - 1
            if left > 0:
                self._early_streams[session_id] = left

    def sessions_of(self, agent: str) -> list[LiveSession]:
        return list(self._by_agent.get(agent, {}).values())

    def push_target(self, agent: str) -> LiveSession | None:
        """The newest session of `agent` that declared elicitation and has an open stream."""
        for session in reversed(self.sessions_of(agent)):
            if session.elicitation and session.get_streams > 0:
                return session
        return None

    # -- sessions on other bridges (a projection of the log) --------------------------------

    def apply(self, fact: Fact) -> None:
        data = fact.data
        if fact.type == SESSION_OPENED and data.get("node"):
            known = KnownSession(
                data["session_id"], data["agent"], data["node"], bool(data.get("elicitation"))
            )
            self._known[known.session_id] = known
            self._known_by_agent.setdefault(known.agent, {})[known.session_id] = known
        elif fact.type == SESSION_CLOSED:
            known = self._known.pop(data.get("session_id", ""), None)
            if known is not None:
                mine = self._known_by_agent.get(known.agent, {})
                mine.pop(known.session_id, None)
                if not mine:
                    self._known_by_agent.pop(known.agent, None)

    def remote_sessions(self, agent: str) -> list[KnownSession]:
        """`agent`'s sessions on other bridges, oldest first, live or not."""
        return [s for s in self._known_by_agent.get(agent, {}).values() if s.node != self.node]

    def remote_target(self, agent: str) -> tuple[str | None, bool]:
        """(node of the newest elicitation-capable session on a live other bridge, whether
        some session of `agent` sits on a bridge that is gone)."""
        gone = False
        for s in reversed(self.remote_sessions(agent)):
            if not self.alive(s.node):
                gone = True
            elif s.elicitation:
                return s.node, gone
        return None, gone

    def remote_online(self, agent: str) -> bool:
        return any(self.alive(s.node) for s in self.remote_sessions(agent))

    def orphans(self) -> list[KnownSession]:
        """Sessions the log says are open on THIS node but that this process does not hold:
        they died with a previous run (to be recorded closed at start-up)."""
        return [
            s
            for s in self._known.values()
            if s.node == self.node and s.session_id not in self._sessions
        ]

    # -- 2026-07-28 clients ----------------------------------------------------------------

    def modern(self, agent: str) -> ModernClient:
        client = self._modern.get(agent)
        if client is None:
            client = self._modern[agent] = ModernClient()
        return client

    def seen_modern(self, agent: str, elicitation: bool) -> ModernClient:
        client = self.modern(agent)
        client.elicitation = elicitation
        client.last_seen = self.clock()
        return client

    def left_wait(self, client: ModernClient) -> None:
        client.waiting -= 1
        client.last_seen = self.clock()

    def _fresh(self, client: ModernClient | None) -> bool:
        return client is not None and (
            client.waiting > 0 or self.clock() - client.last_seen < MODERN_SEEN_S
        )

    def modern_reachable(self, agent: str) -> bool:
        """Through a wait call held (or recently held) on THIS bridge."""
        client = self._modern.get(agent)
        return client is not None and client.elicitation and self._fresh(client)

    # -- 2026-07-28 clients of other bridges -----------------------------------------------

    def modern_due(self) -> list[ModernSeen]:
        """The agents to share now: seen since they were last shared, and either not shared
        for `SHARE_EVERY_S` or with another capability. One that waits is seen right now."""
        now = self.clock()
        due = []
        for agent, c in self._modern.items():
            seen = now if c.waiting > 0 else c.last_seen
            if seen <= c.shared_seen or now - seen >= MODERN_SEEN_S:
                continue
            if now - c.shared_at >= SHARE_EVERY_S or c.elicitation != c.shared_elicitation:
                due.append(ModernSeen(agent, c.elicitation, max(0.0, now - seen), seen))
        return due

    def modern_shared(self, shared: list[ModernSeen]) -> None:
        """`shared` reached the other bridges (called once written, so a failed write is
        retried on the next tick)."""
        now = self.clock()
        for s in shared:
            c = self.modern(s.agent)
            c.shared_at, c.shared_seen, c.shared_elicitation = now, s.seen, s.elicitation

    def remote_modern_seen(self, rows: list[tuple[str, str, bool, float]]) -> None:
        """(agent, node, elicitation, age in seconds) of other bridges' modern agents; what
        has aged out of the window is forgotten."""
        now = self.clock()
        for agent, node, elicitation, age in rows:
            if node != self.node:
                self._remote_modern.setdefault(agent, {})[node] = (elicitation, now - age)
        for agent in list(self._remote_modern):
            nodes = self._remote_modern[agent]
            for node in [n for n, (_, seen) in nodes.items() if now - seen >= MODERN_SEEN_S]:
                del nodes[node]
            if not nodes:
                del self._remote_modern[agent]

    def _remote_modern_of(self, agent: str) -> list[tuple[str, bool]]:
        """(node, elicitation) of `agent`'s waits seen on other bridges within the window."""
        now = self.clock()
        return [
            (node, elicitation)
            for node, (elicitation, seen) in self._remote_modern.get(agent, {}).items()
            if now - seen < MODERN_SEEN_S
        ]

    def remote_modern_reachable(self, agent: str) -> bool:
        """Through a wait call held (or recently held) on another live bridge: a request
        for it is offered by whichever bridge's wait it holds."""
        return any(e and self.alive(n) for n, e in self._remote_modern_of(agent))

    def bridge_gone(self, agent: str) -> bool:
        """Some session or recent wait of `agent` sits on a bridge that is gone."""
        return self.remote_target(agent)[1] or any(
            not self.alive(n) for n, _ in self._remote_modern_of(agent)
        )

    # -- summary ---------------------------------------------------------------------------

    def online(self, agent: str) -> bool:
        return (
            self._fresh(self._modern.get(agent))
            or any(True for _ in self.sessions_of(agent))
            or self.remote_online(agent)
            or any(self.alive(n) for n, _ in self._remote_modern_of(agent))
        )

    def elicitation_capable(self, agent: str) -> bool:
        return (
            self.modern_reachable(agent)
            or any(s.elicitation for s in self.sessions_of(agent))
            or self.remote_target(agent)[0] is not None
            or self.remote_modern_reachable(agent)
        )

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self._sessions.values():
            out[s.protocol] = out.get(s.protocol, 0) + 1
        out[MODERN_PROTOCOL] = sum(1 for c in self._modern.values() if c.waiting > 0)
        return out

    def remote_counts(self) -> dict[str, int]:
        """Open sessions per other node, as the log tells it."""
        out: dict[str, int] = {}
        for s in self._known.values():
            if s.node != self.node:
                out[s.node] = out.get(s.node, 0) + 1
        return out

    def remote_modern_counts(self) -> dict[str, int]:
        """2026-07-28 agents seen within the window per other node, as they shared them."""
        out: dict[str, int] = {}
        for agent in self._remote_modern:
            for node, _ in self._remote_modern_of(agent):
                out[node] = out.get(node, 0) + 1
        return out
