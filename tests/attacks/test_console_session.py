"""Forged or missing console credentials: CSRF, a stolen-less cookie, cross-site sign-in.

The console trades the admin token for a session cookie. A page on another site can make
the browser send that cookie (if SameSite did not stop it), but cannot read the CSRF
token; a DNS-rebinding page can read nothing either, since its Host fails. Every
state-changing admin call made with the cookie must therefore carry the session's CSRF
token and an allowed Origin; a request without a valid cookie falls back to the bearer
check and is refused and throttled like any unauthenticated admin call.
"""

from __future__ import annotations

from typing import Any

import httpx2
import pytest

from tests.harness import BridgeProcess

from .conftest import assert_refused, events_after, mark, side_effects

KILL = {"elicitation_enabled": False, "force": True, "reason": "attack"}


def _sign_in(bridge: BridgeProcess, http: httpx2.Client, operator: str = "ann") -> dict[str, Any]:
    response = http.post(
        "/console/session",
        json={"token": bridge.admin_token, "operator": operator},
        headers={"Origin": bridge.url},
    )
    assert response.status_code == 200, response.text
    return {"csrf": response.json()["csrf"], "cookie": response.cookies["lh_console"]}


@pytest.fixture
def http(bridge: BridgeProcess) -> Any:
    with httpx2.Client(base_url=bridge.url, timeout=30.0) as client:
        yield client


def test_sign_in_sets_a_strict_httponly_cookie_and_records_who(
    bridge: BridgeProcess, http: httpx2.Client
) -> None:
    start = mark(bridge)
    response = http.post(
        "/console/session",
        json={"token": bridge.admin_token, "operator": "ann"},
        headers={"Origin": bridge.url},
    )
    assert response.status_code == 200
    cookie = response.headers["set-cookie"]
    assert "lh_console=" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Path=/" in cookie
    assert bridge.admin_token not in cookie and bridge.admin_token not in response.text
    [signed_in] = events_after(bridge, start, ["ConsoleSignedIn"])
    assert signed_in.actor == "console:ann" and bridge.admin_token not in str(signed_in.data)


def test_cookie_without_csrf_token_cannot_change_flags(
    bridge: BridgeProcess, http: httpx2.Client
) -> None:
    session = _sign_in(bridge, http)
    start = mark(bridge)
    origin = {"Origin": bridge.url}
    assert_refused(http.post("/feature_flags", json=KILL, headers=origin), 403, "csrf_failed")
    wrong = {**origin, "X-CSRF-Token": session["csrf"][:-2] + "xx"}
    assert_refused(http.post("/feature_flags", json=KILL, headers=wrong), 403, "csrf_failed")
    no_origin = {"X-CSRF-Token": session["csrf"]}
    refused = http.post("/feature_flags", json=KILL, headers=no_origin)
    assert_refused(refused, 403, "missing_origin")
    evil = {"X-CSRF-Token": session["csrf"], "Origin": "http://evil.example"}
    assert_refused(http.post("/feature_flags", json=KILL, headers=evil), 403, "forbidden_origin")
    assert side_effects(bridge, start) == []
    failures = events_after(bridge, start, ["AdminAuthFailed"])
    assert [f.data["reason"] for f in failures] == [
        "csrf_failed",
        "csrf_failed",
        "missing_origin",
        "forbidden_origin",
    ]
    assert bridge.health()["flags"]["elicitation_enabled"] is True
    # Reading needs no CSRF token (nothing changes), and the same cookie + token works.
    assert http.get("/feature_flags").status_code == 200
    good = {**origin, "X-CSRF-Token": session["csrf"]}
    change = http.post("/feature_flags", json={"rollout_percent": 100}, headers=good)
    assert change.status_code == 200, change.text
    [changed] = events_after(bridge, start, ["FlagChanged"])
    assert changed.actor == "console:ann"


def test_requests_without_a_live_cookie_are_refused(bridge: BridgeProcess) -> None:
    with httpx2.Client(base_url=bridge.url, timeout=30.0) as stranger:
        start = mark(bridge)
        assert_refused(stranger.get("/admin/console/overview"), 401, "missing_token")
        forged = {"Cookie": "lh_console=forged-session-id", "Origin": bridge.url}
        refused = stranger.post("/feature_flags", json=KILL, headers=forged)
        assert_refused(refused, 401, "missing_token")
        assert side_effects(bridge, start) == []
    with httpx2.Client(base_url=bridge.url, timeout=30.0) as http:
        session = _sign_in(bridge, http, "bo")
        headers = {"Origin": bridge.url, "X-CSRF-Token": session["csrf"]}
        assert http.delete("/console/session", headers=headers).status_code == 200
        with httpx2.Client(base_url=bridge.url, timeout=30.0) as replay:
            stale = {**headers, "Cookie": f"lh_console={session['cookie']}"}
            after = replay.post("/feature_flags", json=KILL, headers=stale)
            assert_refused(after, 401, "missing_token")


def test_cross_site_sign_in_is_refused_before_the_token_is_checked(
    bridge: BridgeProcess, http: httpx2.Client
) -> None:
    start = mark(bridge)
    body = {"token": bridge.admin_token, "operator": "mallory"}
    evil = http.post("/console/session", json=body, headers={"Origin": "http://evil.example"})
    assert_refused(evil, 403, "forbidden_origin")
    assert "set-cookie" not in evil.headers
    bare = http.post("/console/session", json=body)
    assert_refused(bare, 403, "missing_origin")
    # A foreign Origin is refused by the Host/Origin guard in front of every route…
    [cross_site] = events_after(bridge, start, ["AuthRejected"])
    assert cross_site.data["reason"] == "forbidden_origin"
    assert cross_site.data["path"] == "/console/session"
    # …and a POST without one (no browser sends that) by the sign-in itself.
    [bare_failure] = events_after(bridge, start, ["AdminAuthFailed"])
    assert bare_failure.data["reason"] == "missing_origin"
    assert events_after(bridge, start, ["ConsoleSignedIn"]) == []


def test_wrong_tokens_at_sign_in_are_recorded_and_throttled_but_never_the_right_one(
    bridge: BridgeProcess,
) -> None:
    headers = {"Origin": bridge.url}
    start = mark(bridge)
    with httpx2.Client(base_url=bridge.url, timeout=30.0) as http:
        statuses = []
        for attempt in range(7):
            body = {"token": f"lh_admin_guess{attempt}", "operator": "mallory"}
            response = http.post("/console/session", json=body, headers=headers)
            statuses.append(response.status_code)
            assert "set-cookie" not in response.headers
        assert statuses[:5] == [401] * 5 and statuses[5:] == [429, 429], statuses
        assert int(response.headers["Retry-After"]) > 0
        # The operator's own token still signs in from the throttled address.
        _sign_in(bridge, http, "ann")
    failures = events_after(bridge, start, ["AdminAuthFailed"])
    reasons = [f.data["reason"] for f in failures]
    assert reasons[:5] == ["invalid_token"] * 5 and set(reasons[5:]) <= {"throttled"}
    assert {f.data["path"] for f in failures} == {"/console/session"}
    assert all("guess" not in str(f.data) for f in failures)
