import os
import stat

import pytest

from security.admin import (
    ADMIN_TOKEN_ENV,
    AdminAuth,
    AdminTokenError,
    FailureThrottle,
    bearer_token,
    generate_admin_token,
    hash_admin_token,
    load_or_create_admin_token,
)
from tests.security.conftest import FakeClock


def test_token_shape():
    t = generate_admin_token()
    assert t.startswith("lh_admin_") and len(t) == len("lh_admin_") + 43
    assert generate_admin_token() != t


def test_created_once_owner_only_then_reused(tmp_path):
    path = tmp_path / "state" / "admin.token"
    token, plain = load_or_create_admin_token(path, environ={})
    assert token.source == "created"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == plain
    again, plain2 = load_or_create_admin_token(path, environ={})
    assert again.source == "file" and plain2 == plain and again.digest == token.digest
    assert token.digest == hash_admin_token(plain) and plain.encode() not in token.digest


def test_env_overrides_file(tmp_path):
    path = tmp_path / "admin.token"
    token, plain = load_or_create_admin_token(path, environ={ADMIN_TOKEN_ENV: "from-env"})
    assert token.source == "env" and plain == "from-env"
    assert not path.exists()


def test_group_readable_file_refused(tmp_path):
    path = tmp_path / "admin.token"
    load_or_create_admin_token(path, environ={})
    os.chmod(path, 0o640)
    with pytest.raises(AdminTokenError):
        load_or_create_admin_token(path, environ={})


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        (None, None),
    ],
)
def test_bearer_parsing(header, expected):
    assert bearer_token(header) == expected


def make_auth():
    clock = FakeClock(100.0)
    token, _plain = load_or_create_admin_token("unused", environ={ADMIN_TOKEN_ENV: "lh_admin_good"})
    throttle = FailureThrottle(max_failures=5, window=60, block_for=300, clock=clock)
    return AdminAuth(token, throttle), clock


def test_check_accepts_good_token():
    auth, _ = make_auth()
    assert auth.check("1.2.3.4", "Bearer lh_admin_good").ok
    result = auth.check("1.2.3.4", "Bearer lh_admin_bad")
    assert (result.ok, result.status, result.reason) == (False, 401, "invalid_token")
    assert auth.check("1.2.3.4", None).reason == "missing_token"


def test_five_failures_block_wrong_tokens_but_never_the_right_one():
    auth, clock = make_auth()
    for i in range(4):
        assert auth.check("10.0.0.1", f"Bearer wrong{i}").retry_after is None
    fifth = auth.check("10.0.0.1", "Bearer wrong")
    assert fifth.retry_after == 300
    blocked = auth.check("10.0.0.1", "Bearer wrong-again")
    assert (blocked.ok, blocked.status, blocked.reason) == (False, 429, "throttled")
    assert blocked.retry_after == pytest.approx(300)
    # The kill switch works during the incident: the right token is always accepted.
    assert auth.check("10.0.0.1", "Bearer lh_admin_good").ok
    assert auth.check("10.0.0.1", "Bearer still-wrong").status == 429  # and the block stays
    clock.now += 300
    assert auth.check("10.0.0.1", "Bearer wrong").status == 401


def test_requests_without_a_token_do_not_count():
    """A cross-site `<img src=…/admin/x>` carries no token: refused, never counted."""
    auth, _ = make_auth()
    for _ in range(50):
        missing = auth.check("10.0.0.1", None)
        assert (missing.status, missing.reason, missing.retry_after) == (401, "missing_token", None)
    assert auth.check("10.0.0.1", "Bearer wrong").status == 401  # not throttled


def test_failures_outside_window_do_not_accumulate():
    auth, clock = make_auth()
    for _ in range(20):
        auth.check("a", "Bearer nope")
        clock.now += 15  # at most 4 failures within any 60 s
    assert auth.check("a", "Bearer lh_admin_good").ok


def test_success_does_not_reset_a_guessers_count():
    """The operator's success must not give a guesser behind the same address fresh tries."""
    auth, _ = make_auth()
    for _ in range(4):
        auth.check("a", "Bearer nope")
    assert auth.check("a", "Bearer lh_admin_good").ok
    assert auth.check("a", "Bearer nope").retry_after == 300


def test_throttle_memory_bounded():
    throttle = FailureThrottle(max_failures=5, clock=FakeClock(), max_addresses=100)
    for i in range(10_000):
        throttle.record_failure(f"addr-{i}")
    assert len(throttle._failures) <= 100
