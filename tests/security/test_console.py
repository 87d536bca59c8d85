"""Console sessions: short-lived, unguessable, kept as hashes, CSRF compared in constant time."""

from __future__ import annotations

from security import ConsoleSessions


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_is_found_by_its_cookie_and_the_server_keeps_only_a_hash() -> None:
    sessions = ConsoleSessions()
    cookie, session = sessions.open("ann")
    assert sessions.get(cookie) is session and session.operator == "ann"
    assert len(cookie) >= 43 and len(session.csrf) >= 43 and cookie != session.csrf
    assert cookie not in repr(vars(sessions))
    assert sessions.get(cookie + "x") is None and sessions.get(None) is None
    assert sessions.get("") is None


def test_idle_and_absolute_limits_end_a_session() -> None:
    clock = Clock()
    sessions = ConsoleSessions(idle_s=60, max_age_s=150, clock=clock)
    cookie, session = sessions.open("ann")
    clock.now += 59
    assert sessions.get(cookie) is session  # use slides the idle limit
    assert sessions.expires_in(session) == 60
    clock.now += 59
    assert sessions.get(cookie) is session
    clock.now += 33  # 151 s after sign-in: past the absolute limit although active
    assert sessions.get(cookie) is None
    other, _ = sessions.open("bo")
    clock.now += 61
    assert sessions.get(other) is None
    assert len(sessions) == 0


def test_csrf_token_must_match_exactly() -> None:
    sessions = ConsoleSessions()
    _, session = sessions.open("ann")
    assert ConsoleSessions.csrf_ok(session, session.csrf)
    for wrong in (None, "", session.csrf[:-1], session.csrf + "a", session.csrf.upper(), "é"):
        assert not ConsoleSessions.csrf_ok(session, wrong)


def test_sign_out_ends_the_session_and_the_oldest_are_dropped_past_the_cap() -> None:
    sessions = ConsoleSessions(max_sessions=2)
    first, _ = sessions.open("a")
    second, _ = sessions.open("b")
    assert sessions.close(second) and not sessions.close(second)
    assert sessions.get(second) is None
    third, _ = sessions.open("c")
    fourth, _ = sessions.open("d")
    assert sessions.get(first) is None  # oldest dropped
    assert sessions.get(third) is not None and sessions.get(fourth) is not None
