"""Agent registry operations: register, rotate a key, revoke, forget — each an event, no
secrets.

The secret is shown once to the operator and kept only encrypted in the vault; the log
records that a key with this id was issued, rotated or revoked, never its material.
`forget` erases what an agent wrote by destroying its data keys (crypto-shredding): the
ciphertext stays in the hash chain, so the log still verifies, but reads as ``[erased]``.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Iterable
from typing import Any

from security import KeyRegistry, SecretVault, decode_secret, generate_secret, new_key_id

from .display import printable
from .domain import (
    AGENT_FORGOTTEN,
    AGENT_KEY_ISSUED,
    AGENT_KEY_ROTATED,
    AGENT_REGISTERED,
    AGENT_REVOKED,
    agent_stream,
)
from .log import Log
from .vault_io import on_vault

# fullmatch, not match with `$`: `$` also matches before a trailing newline ("bob\n").
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class AgentError(ValueError):
    """An agent operation that cannot be done; the message says why."""


def _check_labels(kind: str, values: list[str]) -> list[str]:
    for value in values:
        if not _NAME.fullmatch(value):
            raise AgentError(f"{kind} {value!r}: use letters, digits, '.', '_' or '-'")
    return sorted(set(values))


class AgentService:
    def __init__(self, log: Log, registry: KeyRegistry, vault: SecretVault, grace_s: float) -> None:
        self.log = log
        self.registry = registry
        self.vault = vault
        self.grace_s = grace_s

    async def add(
        self, name: str, roles: list[str], capabilities: list[str], actor: str
    ) -> dict[str, str]:
        if not _NAME.fullmatch(name or ""):
            raise AgentError(f"agent name {name!r}: 1-64 letters, digits, '.', '_' or '-'")
        # "Bob" beside "bob" reads as the same agent in every table and log line.
        twin = next(
            (a for a in self.registry.agents if a != name and a.casefold() == name.casefold()),
            None,
        )
        if twin is not None:
            raise AgentError(f"agent name {name!r} differs from existing {twin!r} only by case")
        existing = self.registry.agents.get(name)
        if existing is not None and not existing.revoked:
            raise AgentError(f"agent {name!r} already exists; use rotate-key for a new key")
        roles, capabilities = (
            _check_labels("role", roles),
            _check_labels("capability", capabilities),
        )
        secret, key_id = generate_secret(), new_key_id()
        store = functools.partial(self.vault.put, key_id, decode_secret(secret))
        await on_vault(self.vault, store, "storing a new key")  # before the event: never live
        await self.log.append_events(
            agent_stream(name),
            actor,
            [  # without its secret
                (AGENT_REGISTERED, {"agent": name, "roles": roles, "capabilities": capabilities}),
                (AGENT_KEY_ISSUED, {"agent": name, "key_id": key_id, "issued_at": time.time()}),
            ],
        )
        return {"agent": name, "key_id": key_id, "secret": secret}

    async def rotate(self, name: str, actor: str) -> dict[str, Any]:
        info = self._live(name)
        active = self.registry.active_key_ids(name)
        secret, key_id = generate_secret(), new_key_id()
        store = functools.partial(self.vault.put, key_id, decode_secret(secret))
        await on_vault(self.vault, store, "storing a new key")
        grace_until = time.time() + self.grace_s
        await self.log.append_events(
            agent_stream(name),
            actor,
            [
                (
                    AGENT_KEY_ROTATED,
                    {
                        "agent": name,
                        "old_key_id": old,
                        "new_key_id": key_id,
                        "grace_until": grace_until,
                    },
                )
                for old in active
            ]
            or [(AGENT_KEY_ISSUED, {"agent": name, "key_id": key_id, "issued_at": time.time()})],
        )
        return {
            "agent": info.agent,
            "key_id": key_id,
            "secret": secret,
            "previous_key_ids": active,
            "previous_valid_until": grace_until,
        }

    async def revoke(self, name: str, actor: str) -> dict[str, Any]:
        info = self._live(name)
        await self.log.append_events(
            agent_stream(name),
            actor,
            [
                (AGENT_REVOKED, {"agent": name, "at": time.time()}),
            ],
        )
        return {"agent": info.agent, "revoked": True, "key_ids": list(info.key_ids)}

    async def forget(
        self,
        name: str,
        reason: str,
        actor: str,
        *,
        open_requests: Iterable[str] = (),
        force: bool = False,
    ) -> dict[str, Any]:
        """Destroy the agent's data keys after recording that (and why) they are destroyed.

        The event comes first: if destroying failed afterwards the fact still says what was
        meant, and running forget again finishes it. `open_requests` are requests the agent
        asked or must answer; erasing their contents mid-flight is refused unless forced.

        Applying the fact (here, and on every bridge that follows the shared log) erases
        what running projections already hold, not only what a restart would re-read:
        queued mailbox items, open requests' questions, answers read back from the log
        all read ``[erased]`` at once. With `force`, the agent's open requests stay open
        with their question erased: the recipient sees that it was asked, not what, and
        can decline (an accept is refused, `question_erased`) or let it time out; an
        elicitation form already shown to it cannot be recalled. Requests the agent
        must answer stay answerable. What the agent writes after this is new content
        under a new data key, not erased. Contents stored in clear before encryption
        existed cannot be erased (`lighthouse migrate` counts them).
        """
        sealer = self.log.sealer
        if sealer is None:
            raise AgentError("contents are not encrypted in this store; nothing to erase")
        if not isinstance(reason, str) or not reason.strip():
            raise AgentError("--reason is required: say why this agent's contents are erased")
        if len(reason) > 500:
            raise AgentError("reason: at most 500 characters")
        listed = functools.partial(sealer.keys.key_ids, name)
        key_ids = await on_vault(self.vault, listed, "listing data keys")
        if name not in self.registry.agents and not key_ids:
            raise AgentError(f"no agent named {name!r}")
        if not key_ids:
            raise AgentError(f"agent {name!r} has no contents to erase (forgotten already?)")
        pending = sorted(open_requests)
        if pending and not force:
            shown = ", ".join(pending[:5]) + (" …" if len(pending) > 5 else "")
            raise AgentError(
                f"agent {name!r} has {len(pending)} open request(s) ({shown}); wait for them "
                "to close or use --force"
            )
        data = {
            "agent": name,
            "reason": printable(reason.strip()),
            "key_ids": key_ids,
            "open_requests": pending,
            "forced": bool(pending),
        }
        position = await self.log.record(agent_stream(name), AGENT_FORGOTTEN, data, actor=actor)
        destroy = functools.partial(sealer.keys.destroy, key_ids)
        destroyed = await on_vault(self.vault, destroy, "destroying data keys")
        return {"agent": name, "erased_key_ids": destroyed, "position": position}

    def list(self) -> list[dict[str, Any]]:
        return [
            {
                "agent": a.agent,
                "roles": a.roles,
                "capabilities": a.capabilities,
                "revoked": a.revoked,
                "active_key_ids": self.registry.active_key_ids(a.agent),
            }
            for a in sorted(self.registry.agents.values(), key=lambda a: a.agent)
        ]

    def _live(self, name: str) -> Any:
        info = self.registry.agents.get(name)
        if info is None:
            raise AgentError(f"no agent named {name!r}")
        if info.revoked:
            raise AgentError(f"agent {name!r} is revoked")
        return info


class RegistryProjection:
    """Adapts `security.KeyRegistry` (which knows nothing of our Fact type) to the log."""

    def __init__(self, registry: KeyRegistry) -> None:
        self.registry = registry

    def apply(self, fact: Any) -> None:
        if fact.type in KeyRegistry.EVENT_TYPES:
            self.registry.apply(fact.type, fact.data)


def open_requests_of(open_requests: Iterable[Any], agent: str) -> list[str]:
    """Ids of open requests the agent asked or must answer (what forget waits for)."""
    return [r.request_id for r in open_requests if agent in (r.caller, r.recipient)]
