"""Auto-rollback guard with injected failures and latency, on a real store."""

from __future__ import annotations

from pathlib import Path

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
