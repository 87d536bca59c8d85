"""bridge.sessions.Presence: sessions on other bridges, as the log tells them."""

from __future__ import annotations

from bridge.domain import SESSION_CLOSED, SESSION_OPENED, Fact
from bridge.sessions import LiveSession, Presence


def _opened(position: int, sid: str, agent: str, node: str, elicitation: bool = True) -> Fact:
    data = {"agent": agent, "session_id": sid, "protocol": "2025-11-25", "node": node}
    return Fact(
        position, f"session-{sid}", SESSION_OPENED, {**data, "elicitation": elicitation}, agent, 0.0
    )


def _closed(position: int, sid: str, agent: str) -> Fact:
    data = {"agent": agent, "session_id": sid, "reason": "deleted"}
    return Fact(position, f"session-{sid}", SESSION_CLOSED, data, agent, 0.0)


def test_remote_sessions_route_to_their_live_node() -> None:
    alive = {"b1", "b2"}
    presence = Presence("b1", lambda node: node is None or node in alive)
    presence.apply(_opened(1, "b2.x", "bob", "b2"))
    assert presence.online("bob") and presence.elicitation_capable("bob")
    assert presence.remote_target("bob") == ("b2", False)
    presence.apply(_opened(2, "b3.y", "bob", "b3"))  # newer, but its bridge is gone
    assert presence.remote_target("bob") == ("b2", True)
    presence.apply(_closed(3, "b2.x", "bob"))
    assert presence.remote_target("bob") == (None, True)
    assert not presence.online("bob")  # only a session on a dead bridge is left
    assert presence.remote_counts() == {"b3": 1}


def test_a_session_without_elicitation_is_online_but_not_a_push_target() -> None:
    presence = Presence("b1", lambda node: True)
    presence.apply(_opened(1, "b2.x", "dave", "b2", elicitation=False))
    assert presence.online("dave")
    assert presence.remote_target("dave") == (None, False)


def test_orphans_are_this_nodes_logged_sessions_it_does_not_hold() -> None:
    presence = Presence("b1", lambda node: True)
    presence.apply(_opened(1, "b1.old", "bob", "b1"))
    presence.apply(_opened(2, "b1.live", "bob", "b1"))
    presence.apply(_opened(3, "b2.other", "bob", "b2"))
    presence.open(LiveSession("b1.live", "bob", "2025-11-25", True, handle=None))
    assert [s.session_id for s in presence.orphans()] == ["b1.old"]
    assert presence.remote_counts() == {"b2": 1}  # own-node sessions are not remote
