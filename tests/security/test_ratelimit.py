import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from security.ratelimit import GCRARateLimiter, RateDecision, address_rate_limiter
from tests.security.conftest import FakeClock


def limiter(rate=50.0, burst=100, **kw):
    clock = FakeClock(1000.0)
    return GCRARateLimiter(rate, burst, clock=clock, **kw), clock


def test_defaults_match_design():
    lim = GCRARateLimiter()
    assert (lim.rate, lim.burst) == (50.0, 100)


async def test_burst_then_refill():
    lim, clock = limiter()
    decisions = [await lim.hit("alice") for _ in range(100)]
    assert all(d.allowed for d in decisions)
    assert [d.remaining for d in decisions[:3]] == [99, 98, 97]
    assert decisions[-1].remaining == 0
    denied = await lim.hit("alice")
    assert not denied.allowed
    assert denied.retry_after == pytest.approx(0.02)
    clock.now += 0.02  # one emission interval refills one request
    assert (await lim.hit("alice")).allowed
    assert not (await lim.hit("alice")).allowed
    clock.now += 1.0  # 50 more
    assert sum([(await lim.hit("alice")).allowed for _ in range(60)]) == 50


async def test_keys_are_independent():
    lim, _ = limiter(rate=1, burst=1)
    assert (await lim.hit("a")).allowed
    assert not (await lim.hit("a")).allowed
    assert (await lim.hit("b")).allowed


async def test_retry_after_is_exact_for_slow_rates():
    lim, clock = limiter(rate=0.5, burst=2)
    assert (await lim.hit("a")).allowed
    assert (await lim.hit("a")).allowed
    d = await lim.hit("a")
    assert not d.allowed and d.retry_after == pytest.approx(2.0)
    clock.now += 1.999
    assert not (await lim.hit("a")).allowed
    clock.now += 0.001
    assert (await lim.hit("a")).allowed


@settings(deadline=None)
@given(st.lists(st.floats(0, 0.5), min_size=1, max_size=300))
def test_never_more_than_burst_plus_rate_times_elapsed(gaps):
    lim, clock = limiter(rate=10, burst=5)
    start = clock.now
    allowed = 0
    for gap in gaps:
        clock.now += gap
        allowed += lim.hit_now("k").allowed
    assert allowed <= 5 + 10 * (clock.now - start) + 1e-6


def test_headers_when_allowed_and_denied():
    ok = RateDecision(True, 100, 42, 1.16)
    assert ok.headers() == {
        "RateLimit-Limit": "100",
        "RateLimit-Remaining": "42",
        "RateLimit-Reset": "2",
    }
    no = RateDecision(False, 100, 0, 2.0, 0.02)
    assert no.headers()["Retry-After"] == "1"  # whole seconds, never 0
    assert RateDecision(False, 1, 0, 7.0, 6.2).headers()["Retry-After"] == "7"


async def test_reset_reports_time_until_full():
    lim, _ = limiter(rate=10, burst=10)
    for _ in range(10):
        d = await lim.hit("k")
    assert d.reset == pytest.approx(1.0)
    assert d.headers()["RateLimit-Reset"] == "1"


async def test_idle_buckets_evicted():
    lim, clock = limiter(rate=10, burst=10, sweep_every=5)
    for i in range(1000):
        await lim.hit(f"agent-{i}")
    assert len(lim) == 1000
    clock.now += 6  # every bucket is full again, and a sweep is due
    await lim.hit("someone")
    assert len(lim) == 1


async def test_hard_cap_on_keys():
    lim, _ = limiter(rate=1, burst=5, max_keys=100)
    for i in range(1000):
        await lim.hit(f"addr-{i}")
    assert len(lim) <= 100


def test_address_limiter_is_looser_and_separate():
    a = address_rate_limiter(clock=FakeClock())
    assert a.rate > 50 and a.burst > 100
    assert a is not address_rate_limiter()


def test_invalid_parameters():
    with pytest.raises(ValueError):
        GCRARateLimiter(0, 1)
    with pytest.raises(ValueError):
        GCRARateLimiter(1, 0)
