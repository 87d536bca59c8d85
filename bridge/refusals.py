"""A fixed write budget for refusals: the audit log records who was refused and why, but no
client can grow the store by sending requests that are refused.

Refusals (`AuthRejected`, `RateLimited`, `AdminAuthFailed`) are grouped per window of
``window_s`` seconds by (type, source, reason), where the source is the client address,
or the agent for a per-agent rate limit. Within a window the first ``burst`` refusals of a
group are recorded one by one, as before (so a single refusal is visible at once, with all
its fields); the rest of that window are counted and become one aggregated fact of the
same type when the window ends: the first of them as the sample, plus ``count``,
``first_at`` and ``last_at``. Two caps keep the budget fixed whatever the number of
sources: at most ``max_individual`` individual records per window in all, and at most
``max_groups`` groups (later sources share one ``(other sources)`` group). So a window
writes at most ``max_individual + max_groups + 1`` events, and one source at most
``reasons x (burst + 1)``. Metrics count every refusal exactly; this module only decides
what is written.

Pure bookkeeping with an injected clock: the bridge writes what it returns.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["OTHER_SOURCES", "RefusalLedger", "Summary"]

OTHER_SOURCES = "(other sources)"


@dataclass(slots=True)
class _Group:
    individual: int = 0
    suppressed: int = 0
    first_at: float = 0.0
    last_at: float = 0.0
    sample: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Summary:
    """One aggregated fact to write: `data` is the sample plus the window's counts."""

    type: str
    data: dict[str, Any]


class RefusalLedger:
    def __init__(
        self,
        window_s: float = 60.0,
        burst: int = 5,
        *,
        max_individual: int = 200,
        max_groups: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if window_s <= 0 or burst < 0 or max_groups < 1:
            raise ValueError("window_s must be > 0, burst >= 0, max_groups >= 1")
        self.window_s = window_s
        self.burst = burst
        self.max_individual = max_individual
        self.max_groups = max_groups
        self._clock = clock
        self._window = self._index(clock())
        self._individual = 0
        self._groups: dict[tuple[str, str, str], _Group] = {}
        self._pending: list[Summary] = []

    def _index(self, now: float) -> int:
        return math.floor(now / self.window_s)

    def next_boundary(self) -> float:
        """When the current window ends (wall clock), so a flusher knows when to wake."""
        return (self._window + 1) * self.window_s

    def note(self, type_: str, source: str, reason: str, data: dict[str, Any]) -> bool:
        """Count one refusal; True if it should be recorded individually now."""
        now = self._clock()
        self._roll(now)
        key = (type_, source, reason)
        group = self._groups.get(key)
        if group is None:
            if len(self._groups) >= self.max_groups:
                key = (type_, OTHER_SOURCES, reason)
                group = self._groups.get(key)
            if group is None:
                group = self._groups[key] = _Group()
        if group.individual < self.burst and self._individual < self.max_individual:
            group.individual += 1
            self._individual += 1
            return True
        if group.suppressed == 0:
            group.first_at = now
            group.sample = dict(data)
            if key[1] == OTHER_SOURCES:
                group.sample["source"] = OTHER_SOURCES
        group.suppressed += 1
        group.last_at = now
        return False

    def due(self, *, final: bool = False) -> list[Summary]:
        """Summaries of the windows that ended (all open ones when `final`)."""
        self._roll(self._clock())
        if final:
            self._close_window()
        pending, self._pending = self._pending, []
        return pending

    def _roll(self, now: float) -> None:
        index = self._index(now)
        if index != self._window:
            self._close_window()
            self._window = index

    def _close_window(self) -> None:
        for (type_, _, _), g in self._groups.items():
            if g.suppressed:
                data = {
                    **g.sample,
                    "aggregated": True,
                    "count": g.suppressed,
                    "first_at": g.first_at,
                    "last_at": g.last_at,
                    "window_s": self.window_s,
                }
                self._pending.append(Summary(type_, data))
        self._groups.clear()
        self._individual = 0


def refusal_count(data: dict[str, Any]) -> int:
    """How many refusals one recorded fact stands for (1 unless aggregated)."""
    count = data.get("count", 1) if data.get("aggregated") else 1
    return count if isinstance(count, int) and count > 0 else 1
