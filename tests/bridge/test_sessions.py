"""bridge.sessions.Presence: sessions on other bridges, as the log tells them, and
2026-07-28 agents other bridges saw waiting (what is shared when, what counts how long)."""

from __future__ import annotations

from bridge.domain import SESSION_CLOSED, SESSION_OPENED, Fact
from bridge.sessions import MODERN_SEEN_S, SHARE_EVERY_S, LiveSession, Presence


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


def test_a_waiting_modern_agent_is_shared_at_most_every_quarter_window() -> None:
    now = [1000.0]  # a clock the test moves: the window and the interval without sleeping
    presence = Presence("a", clock=lambda: now[0])
    assert presence.modern_due() == []
    client = presence.seen_modern("x", True)
    client.waiting += 1
    [due] = presence.modern_due()
    assert (due.agent, due.elicitation, due.age) == ("x", True, 0.0)
    assert presence.modern_due() == [due]  # not written yet: still due
    presence.modern_shared([due])
    now[0] += 1
    assert presence.modern_due() == []  # one row per agent per SHARE_EVERY_S, not per call
    presence.seen_modern("x", False)  # a capability change goes out at once
    assert [d.elicitation for d in presence.modern_due()] == [False]
    presence.modern_shared(presence.modern_due())
    now[0] += SHARE_EVERY_S
    [due] = presence.modern_due()  # still waiting: refreshed so peers keep it
    presence.modern_shared([due])
    now[0] += 5
    presence.left_wait(client)
    now[0] += SHARE_EVERY_S
    [due] = presence.modern_due()  # its last sighting, with its age (not "now")
    assert due.age == SHARE_EVERY_S
    presence.modern_shared([due])
    now[0] += SHARE_EVERY_S
    assert presence.modern_due() == []  # nothing new seen since
    presence.seen_modern("y", True)
    now[0] += MODERN_SEEN_S
    assert [d.agent for d in presence.modern_due()] == []  # seen too long ago to matter


def test_a_peers_modern_agent_is_reachable_for_the_window_while_the_peer_lives() -> None:
    now = [1000.0]
    alive = {"a", "b", "c"}
    presence = Presence("b", lambda node: node is None or node in alive, clock=lambda: now[0])
    presence.remote_modern_seen(
        [("x", "a", True, 50.0), ("y", "c", False, 0.0), ("z", "b", True, 0.0)]
    )
    assert presence.online("x") and presence.elicitation_capable("x")
    assert presence.remote_modern_reachable("x") and not presence.modern_reachable("x")
    assert presence.online("y") and not presence.elicitation_capable("y")  # no forms
    assert not presence.online("z")  # our own rows come from memory, not the table
    assert presence.remote_modern_counts() == {"a": 1, "c": 1}
    now[0] += MODERN_SEEN_S - 50.0 - 0.1
    assert presence.remote_modern_reachable("x")
    now[0] += 0.2  # seen on a more than MODERN_SEEN_S ago: not reachable any more
    assert not presence.online("x") and not presence.remote_modern_reachable("x")
    assert not presence.bridge_gone("x")
    presence.remote_modern_seen([])  # the next tick forgets it
    assert presence.remote_modern_counts() == {"c": 1}
    presence.remote_modern_seen([("x", "a", True, 0.0)])
    alive.discard("a")  # its bridge died: not online, and the cause says why
    assert not presence.online("x") and presence.bridge_gone("x")


def test_a_local_modern_agent_counts_until_the_window_after_its_last_wait() -> None:
    now = [1000.0]
    presence = Presence("a", clock=lambda: now[0])
    client = presence.seen_modern("x", True)
    client.waiting += 1
    now[0] += MODERN_SEEN_S * 2
    assert presence.modern_reachable("x")  # still holding its wait
    presence.left_wait(client)
    now[0] += MODERN_SEEN_S - 0.1
    assert presence.modern_reachable("x") and presence.online("x")
    now[0] += 0.2
    assert not presence.modern_reachable("x") and not presence.online("x")
