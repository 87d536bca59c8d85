"""Auto-rollback guard with injected failures and latency, on a real store."""

from __future__ import annotations

import math
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.flags import Flags
from bridge.guard import Guard
from bridge.log import Log
from bridge.metrics import Metrics
from events import SqliteEventStore, StoreConfig


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _guard(tmp_path: Path, **kw: object) -> tuple[Guard, Flags, Log, Clock]:
    store = await SqliteEventStore.open(StoreConfig(path=tmp_path / "g.db"))
    flags = Flags()
    log = Log(store, [flags])
    clock = Clock()
    guard = Guard(log, flags, Metrics(), clock=clock, **kw)  # type: ignore[arg-type]
    return guard, flags, log, clock


async def test_error_rate_over_threshold_turns_elicitation_off(tmp_path: Path) -> None:
    guard, flags, log, _ = await _guard(tmp_path, min_samples=20)
    decision = None
    for i in range(40):
        decision = decision or guard.observe(ok=i % 10 != 0, seconds=0.01)  # 10 % errors
    assert decision is not None and "error rate 10.0% > 5.0%" in decision.reason
    await guard.trip(decision)
    assert flags.state.elicitation_enabled is False and flags.state.force is True
    [change] = await log.store.read_all(types=["FlagChanged"])
    assert change.actor == "guard" and change.data["reason"].startswith("auto-rollback")
    [record] = await log.store.read_all(types=["AutoRollbackTriggered"])
    assert record.data["samples"] >= 20 and record.data["error_rate"] > 0.05
    assert guard.describe()["last_decision"]["reason"] == decision.reason
    await log.store.close()


async def test_slow_p99_turns_elicitation_off(tmp_path: Path) -> None:
    guard, _, log, _ = await _guard(tmp_path, min_samples=10, max_p99_ms=1000)
    decisions = [guard.observe(ok=True, seconds=2.5 if i == 9 else 0.01) for i in range(10)]
    assert decisions[-1] is not None and "p99 2500 ms > 1000 ms" in decisions[-1].reason
    await log.store.close()


async def test_needs_minimum_sample_and_window(tmp_path: Path) -> None:
    guard, _, log, clock = await _guard(tmp_path, min_samples=20, window_s=60)
    for _ in range(19):
        assert guard.observe(ok=False, seconds=0.01) is None
    clock.now += 120  # the old failures leave the window
    assert guard.observe(ok=False, seconds=0.01) is None
    assert guard.figures()["samples"] == 1
    await log.store.close()


async def test_never_turns_elicitation_back_on(tmp_path: Path) -> None:
    guard, flags, log, _ = await _guard(tmp_path, min_samples=5)
    decision = None
    for _ in range(5):
        decision = decision or guard.observe(ok=False, seconds=0.01)
    assert decision is not None
    await guard.trip(decision)
    for _ in range(100):
        assert guard.observe(ok=True, seconds=0.001) is None
    assert flags.state.elicitation_enabled is False
    assert len(await log.store.read_all(types=["FlagChanged"])) == 1
    await log.store.close()


def _trips_by_sorting(window: list[tuple[bool, float]], guard: Guard) -> bool:
    """The guard's rule stated the slow way: sort the window, read the p99 rank."""
    n = len(window)
    latencies = sorted(s for _, s in window)
    p99_ms = latencies[min(n - 1, math.ceil(0.99 * n) - 1)] * 1000
    error_rate = sum(not ok for ok, _ in window) / n
    return n >= guard.min_samples and (
        p99_ms > guard.max_p99_ms or error_rate > guard.max_error_rate
    )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 99).map(bool),  # 1 % errors: trips by p99 get their turn
            st.sampled_from([0.001] * 60 + [0.999, 1.0, 1.001, 3.0]),
            st.sampled_from([0.0] * 8 + [0.5, 7.0]),
        ),
        min_size=1,
        max_size=400,
    )
)
def test_running_counts_trip_exactly_where_sorting_would(
    samples: list[tuple[bool, float, float]],
) -> None:
    clock = Clock()
    guard = Guard(
        None,
        Flags(),
        Metrics(),
        min_samples=5,
        window_s=30.0,
        clock=clock,  # type: ignore[arg-type]
    )
    window: list[tuple[float, bool, float]] = []
    for ok, seconds, step in samples:
        clock.now += step
        window = [w for w in [*window, (clock.now, ok, seconds)] if w[0] >= clock.now - 30.0]
        expected = _trips_by_sorting([(o, s) for _, o, s in window], guard)
        assert (guard.observe(ok, seconds) is not None) == expected
        if expected:
            return
