"""The refusal write budget: individual records up to the burst, then one aggregate per
(type, source, reason) per window, and a fixed cap whatever the number of sources."""

from __future__ import annotations

from bridge.refusals import OTHER_SOURCES, RefusalLedger, refusal_count


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _ledger(**kw: int) -> tuple[RefusalLedger, Clock]:
    clock = Clock()
    return RefusalLedger(60.0, kw.pop("burst", 3), clock=clock, **kw), clock


def test_burst_then_one_aggregate_per_window() -> None:
    ledger, clock = _ledger()
    decisions = [
        ledger.note("AuthRejected", "1.2.3.4", "missing_signature", {"n": i}) for i in range(100)
    ]
    assert decisions == [True] * 3 + [False] * 97
    assert ledger.due() == []  # the window is still open
    clock.now += 60
    [summary] = ledger.due()
    assert summary.type == "AuthRejected"
    assert summary.data["n"] == 3  # the first aggregated one is the sample
    assert (summary.data["count"], summary.data["aggregated"]) == (97, True)
    assert summary.data["first_at"] <= summary.data["last_at"]
    assert refusal_count(summary.data) == 97 and refusal_count({"count": 5}) == 1
    # A new window starts with a fresh burst.
    assert ledger.note("AuthRejected", "1.2.3.4", "missing_signature", {}) is True


def test_groups_are_per_source_and_reason() -> None:
    ledger, _ = _ledger(burst=1)
    assert ledger.note("AuthRejected", "a", "x", {})
    assert ledger.note("AuthRejected", "b", "x", {})
    assert ledger.note("AuthRejected", "a", "y", {})
    assert ledger.note("RateLimited", "a", "x", {})
    assert not ledger.note("AuthRejected", "a", "x", {})


def test_the_budget_is_fixed_whatever_the_number_of_sources() -> None:
    ledger, clock = _ledger(burst=5, max_individual=50, max_groups=100)
    written = 0
    for i in range(100_000):  # one refusal from each of 100,000 addresses
        written += ledger.note("AuthRejected", f"10.0.{i // 256}.{i % 256}", "bad", {})
    clock.now += 60
    summaries = ledger.due()
    assert written == 50
    assert len(summaries) <= 100 + 1
    assert sum(s.data["count"] for s in summaries) + written == 100_000
    assert any(s.data.get("source") == OTHER_SOURCES for s in summaries)


def test_final_flush_writes_the_open_window() -> None:
    ledger, _ = _ledger(burst=0)
    ledger.note("AdminAuthFailed", "a", "invalid_token", {"path": "/admin/x"})
    [summary] = ledger.due(final=True)
    assert summary.data["count"] == 1 and summary.data["path"] == "/admin/x"
