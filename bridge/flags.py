"""The elicitation flag: event-sourced state, strict validation, sticky rollout.

Evaluation order follows mature flag systems: kill switch first, then a per-agent override,
then the rollout bucket; anything unexpected evaluates to the legacy path, which always
works. An agent's bucket is murmur3(flag name + agent) mod 100, the scheme Unleash uses, so
it is the same on every bridge instance and across restarts, and raising the percentage
only ever adds agents.
"""

from __future__ import annotations

import logging
from typing import Any, Final

import mmh3
import msgspec

from .domain import FLAG_CHANGED, Fact

FLAG_NAME: Final = "elicitation"
_KEYS: Final = ("elicitation_enabled", "rollout_percent", "overrides", "force")
log = logging.getLogger(__name__)


class FlagState(msgspec.Struct, frozen=True, kw_only=True):
    elicitation_enabled: bool = True
    rollout_percent: int = 100
    overrides: dict[str, bool] = msgspec.field(default_factory=dict)
    force: bool = False

    def to_dict(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)


class FlagError(ValueError):
    """A flag change that names a bad field; `field` says which."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class StaleFlagVersion(Exception):
    def __init__(self, expected: int, actual: int) -> None:
        super().__init__(f"flags are at version {actual}, change was based on {expected}")
        self.expected = expected
        self.actual = actual


def bucket(agent: str, flag: str = FLAG_NAME) -> int:
    """The agent's stable rollout bucket in [0, 100)."""
    return mmh3.hash(f"{flag}:{agent}", seed=0, signed=False) % 100


def routes_to_elicitation(state: FlagState, agent: str) -> bool:
    """The evaluation itself, for any state: the router's, or a change being previewed."""
    if not state.elicitation_enabled:
        return False
    override = state.overrides.get(agent)
    if override is not None:
        return override
    return bucket(agent) < state.rollout_percent


def parse_change(body: object, current: FlagState) -> FlagState:
    """Validate a requested change against the current state; raise FlagError naming the field.

    Fields not given keep their current value, except `force`, which applies to this
    change only; `overrides` merges into the map (an override set to null removes it).
    """
    if not isinstance(body, dict):
        raise FlagError("body", "must be a JSON object")
    unknown = sorted(set(body) - set(_KEYS) - {"reason"})
    if unknown:
        raise FlagError(unknown[0], "unknown field")
    new = current.to_dict()
    new["force"] = False  # force belongs to one change, it is not a standing setting
    for key in ("elicitation_enabled", "force"):
        if key in body:
            if not isinstance(body[key], bool):
                raise FlagError(key, "must be true or false")
            new[key] = body[key]
    if "rollout_percent" in body:
        value = body["rollout_percent"]
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
            raise FlagError("rollout_percent", "must be an integer from 0 to 100")
        new["rollout_percent"] = value
    if "overrides" in body:
        new["overrides"] = _parse_overrides(body["overrides"], current.overrides)
    if "reason" in body and not isinstance(body["reason"], str):
        raise FlagError("reason", "must be a string")
    return msgspec.convert(new, FlagState)


def _parse_overrides(value: object, current: dict[str, bool]) -> dict[str, bool]:
    if not isinstance(value, dict):
        raise FlagError("overrides", "must be an object of agent name to true/false/null")
    merged = dict(current)
    for agent, setting in value.items():
        if not isinstance(agent, str) or not agent or len(agent) > 128:
            raise FlagError("overrides", f"agent name {agent!r} is not valid")
        if setting is None:
            merged.pop(agent, None)
        elif isinstance(setting, bool):
            merged[agent] = setting
        else:
            raise FlagError(f"overrides.{agent}", "must be true, false or null")
    return merged


class Flags:
    """Projection of `FlagChanged` events plus the evaluation used by the router."""

    def __init__(self) -> None:
        self.state = FlagState()
        self.version = 0
        self.changed_by: str | None = None
        self.changed_at: float | None = None
        self._listeners: list = []

    def apply(self, fact: Fact) -> None:
        if fact.type != FLAG_CHANGED:
            return
        previous = self.state
        self.state = msgspec.convert(fact.data["new"], FlagState)
        self.version += 1
        self.changed_by, self.changed_at = fact.actor, fact.time
        for listener in self._listeners:
            listener(previous, self.state)

    def on_change(self, listener) -> None:
        """Called synchronously after each change (the router stops in-flight on `force`)."""
        self._listeners.append(listener)

    def elicitation_for(self, agent: str) -> bool:
        """Whether new requests to `agent` may take the elicitation path."""
        try:
            return routes_to_elicitation(self.state, agent)
        except Exception:  # any evaluation failure must degrade to the path that always works
            log.exception("flag evaluation failed; routing %s to legacy", agent)
            return False

    def public(self) -> dict[str, Any]:
        """What `/health` may show anyone who can reach it: the global switch and rollout,
        not per-agent overrides or who changed them (those are for `/feature_flags`)."""
        return {
            "elicitation_enabled": self.state.elicitation_enabled,
            "rollout_percent": self.state.rollout_percent,
            "version": self.version,
        }

    def describe(self) -> dict[str, Any]:
        return {
            **self.state.to_dict(),
            "version": self.version,
            "changed_by": self.changed_by,
            "changed_at": self.changed_at,
        }
