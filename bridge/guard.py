"""Auto-rollback guard: turns elicitation off when its error rate or p99 goes bad.

From the runsheet's decision matrix. The guard watches elicitation outcomes over a sliding
window; once it has a minimum sample and either the error rate or the p99 latency crosses
its threshold, it appends a forced `FlagChanged` (kill switch) with the measured figures.
It never turns elicitation back on — that is an operator's decision.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import msgspec

from .domain import AUTO_ROLLBACK, FLAG_CHANGED, FLAGS_STREAM, OPS_STREAM
from .flags import Flags
from .log import Log
from .metrics import Metrics


class GuardDecision(msgspec.Struct, frozen=True):
    at: float
    samples: int
    error_rate: float
    p99_ms: float
    reason: str


class Guard:
    def __init__(
        self,
        log: Log,
        flags: Flags,
        metrics: Metrics,
        *,
        max_error_rate: float = 0.05,
        max_p99_ms: float = 1000.0,
        min_samples: int = 20,
        window_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log, self.flags, self.metrics = log, flags, metrics
        self.max_error_rate = max_error_rate
        self.max_p99_ms = max_p99_ms
        self.min_samples = min_samples
        self.window_s = window_s
        self._clock = clock
        self._samples: deque[tuple[float, bool, float]] = deque()
        # Running counts over the window, so a check costs O(1) instead of a sort.
        self._errors = 0
        self._slow = 0  # samples above max_p99_ms
        self.last_decision: GuardDecision | None = None
        self._tripping = False

    def observe(self, ok: bool, seconds: float) -> GuardDecision | None:
        """Record one elicitation outcome; return a decision when the guard trips."""
        now = self._clock()
        self._add(now, ok, seconds)
        while self._samples and self._samples[0][0] < now - self.window_s:
            self._drop_oldest()
        if self._tripping or not self.flags.state.elicitation_enabled:
            return None
        n = len(self._samples)
        # p99 > max  <=>  more samples above max than the 1 % the p99 rank leaves out.
        p99_over = self._slow > n - math.ceil(0.99 * n)
        if n < self.min_samples or not (p99_over or self._errors / n > self.max_error_rate):
            return None
        figures = self.figures()  # the exact p99 (one sort), for the record of why
        reasons = []
        if figures["error_rate"] > self.max_error_rate:
            reasons.append(f"error rate {figures['error_rate']:.1%} > {self.max_error_rate:.1%}")
        if p99_over:
            reasons.append(f"p99 {figures['p99_ms']:.0f} ms > {self.max_p99_ms:.0f} ms")
        self._tripping = True
        return GuardDecision(
            time.time(),
            figures["samples"],
            figures["error_rate"],
            figures["p99_ms"],
            "; ".join(reasons),
        )

    def _add(self, at: float, ok: bool, seconds: float) -> None:
        self._samples.append((at, ok, seconds))
        self._errors += not ok
        self._slow += seconds * 1000 > self.max_p99_ms

    def _drop_oldest(self) -> None:
        _, ok, seconds = self._samples.popleft()
        self._errors -= not ok
        self._slow -= seconds * 1000 > self.max_p99_ms

    def figures(self) -> dict[str, Any]:
        n = len(self._samples)
        if not n:
            return {"samples": 0, "error_rate": 0.0, "p99_ms": 0.0}
        errors = sum(1 for _, ok, _ in self._samples if not ok)
        latencies = sorted(s for _, _, s in self._samples)
        p99 = latencies[min(n - 1, math.ceil(0.99 * n) - 1)]
        return {"samples": n, "error_rate": errors / n, "p99_ms": p99 * 1000}

    async def trip(self, decision: GuardDecision) -> None:
        """Apply a decision: forced kill switch plus a record of why, with the figures."""
        try:
            old = self.flags.state
            new = msgspec.structs.replace(old, elicitation_enabled=False, force=True)
            await self.log.append_events(
                FLAGS_STREAM,
                "guard",
                [
                    (
                        FLAG_CHANGED,
                        {
                            "old": old.to_dict(),
                            "new": new.to_dict(),
                            "reason": f"auto-rollback: {decision.reason}",
                        },
                    )
                ],
                expected_version=self.flags.version,
            )
            await self.log.record(
                OPS_STREAM, AUTO_ROLLBACK, msgspec.to_builtins(decision), actor="guard"
            )
            self.last_decision = decision
            self.metrics.auto_rollbacks.inc()
        finally:
            self._tripping = False

    def describe(self) -> dict[str, Any]:
        return {
            "thresholds": {
                "error_rate": self.max_error_rate,
                "p99_ms": self.max_p99_ms,
                "min_samples": self.min_samples,
                "window_s": self.window_s,
            },
            "window": self.figures(),
            "last_decision": msgspec.to_builtins(self.last_decision),
        }
