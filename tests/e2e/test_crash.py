"""Crash consistency: a real bridge under load, killed with SIGKILL, restarted, repaired.

Asker/answerer pairs keep `ask`s going over the legacy mailbox and over elicitation while
the process is killed at a random moment, several times. Whatever a client was told —
an `ask` result, a `respond` acknowledgement — must be in the log afterwards, no request
may be closed twice, and once repair has run and the deadlines have passed every request
must have exactly one terminal fact. Repair runs both ways: on the stopped store, and
through the restarted bridge's admin API.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from mcp_types import ElicitResult

from bridge.domain import REQUEST_ANSWERED, REQUEST_CREATED, STATUS_BY_TERMINAL, TERMINAL_TYPES
from tests.harness import SCHEMA, BridgeProcess, lighthouse, read_events

CYCLES = 3
ASK_TIMEOUT_S = 2.0
PAIRS = (("alice", "bob", "legacy"), ("carol", "dave", "elicitation"), ("erin", "bob", "legacy"))


@dataclass
class Acks:
    """What clients were told: the facts that must survive any crash."""

    asks: dict[str, str] = field(default_factory=dict)  # request id -> status returned
    responds: set[str] = field(default_factory=set)  # request ids `respond` accepted
    counts: dict[int, int] = field(default_factory=lambda: defaultdict(int))  # cycle -> asks


async def _quietly(work: Any) -> None:
    """A killed server surfaces as any transport error in the SDK; the worker just stops."""
    try:
        await work
    except asyncio.CancelledError:
        raise
    except BaseException:  # anyio raises BaseExceptionGroup
        return


async def _asker(b: BridgeProcess, name: str, to: str, acks: Acks, cycle: int) -> None:
    async with b.client(name) as client:
        n = 0
        while True:
            n += 1
            result = await client.call_tool(
                "ask",
                {
                    "to": to,
                    "message": f"{name} #{cycle}.{n}",
                    "schema": SCHEMA,
                    "timeout_s": ASK_TIMEOUT_S,
                },
            )
            if not result.is_error:
                out = result.structured_content
                acks.asks[out["request_id"]] = out["status"]
                acks.counts[cycle] += 1


async def _answer_mail(client: Any, acks: Acks, rng: random.Random) -> None:
    """Poll the mailbox; answer most requests, ignore some so they time out."""
    got = await client.call_tool("wait_for_messages", {"timeout_s": 1, "max": 10})
    for item in (got.structured_content or {}).get("messages", []):
        if item.get("kind") != "request" or rng.random() < 0.15:
            continue
        done = await client.call_tool(
            "respond",
            {"request_id": item["request_id"], "action": "accept", "content": {"answer": "mail"}},
        )
        if not done.is_error and done.structured_content["status"] == "accepted":
            acks.responds.add(item["request_id"])


def _elicitation_answer(rng: random.Random) -> Any:
    async def callback(ctx: Any, params: Any) -> ElicitResult:
        roll = rng.random()
        if roll < 0.1:
            await asyncio.sleep(ASK_TIMEOUT_S + 1)  # too late: the bridge times it out
        if roll < 0.2:
            return ElicitResult(action="decline")
        return ElicitResult(action="accept", content={"answer": "pushed"})

    return callback


async def _answerer(b: BridgeProcess, name: str, path: str, acks: Acks, seed: int) -> None:
    rng = random.Random(seed)
    kwargs = {"elicitation_callback": _elicitation_answer(rng)} if path == "elicitation" else {}
    async with b.client(name, **kwargs) as client:
        while True:  # a pending wait call also carries elicitation pushes
            await _answer_mail(client, acks, rng)


async def _load_then_kill(b: BridgeProcess, acks: Acks, cycle: int, rng: random.Random) -> None:
    """Run every pair until asks flow, then a little longer, then SIGKILL the bridge."""
    answerers = {(to, path) for _, to, path in PAIRS}
    tasks = [
        asyncio.create_task(_quietly(_answerer(b, to, path, acks, rng.randrange(1 << 30))))
        for to, path in sorted(answerers)
    ]
    await asyncio.sleep(0.3)
    tasks += [
        asyncio.create_task(_quietly(_asker(b, name, to, acks, cycle))) for name, to, _ in PAIRS
    ]
    deadline = time.monotonic() + 20
    while acks.counts[cycle] < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(rng.uniform(0.1, 1.5))
    await asyncio.to_thread(b.kill)
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks, timeout=15)


def _repair(b: BridgeProcess, *, offline: bool) -> dict[str, Any]:
    args = ("repair", "--json", *(("--db", str(b.db)) if offline else ()))
    return json.loads(lighthouse(*args, cwd=b.workdir, env=b.env).stdout)


def _terminals(events: list[Any]) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = defaultdict(list)
    for r in events:
        if r.type in TERMINAL_TYPES:
            found[r.data["request_id"]].append(r)
    return found


async def test_kill_restart_repair_loses_nothing(tmp_path: Path) -> None:
    rng = random.Random()
    b = BridgeProcess(tmp_path)
    for name in ("alice", "bob", "carol", "dave", "erin"):
        b.add_agent(name)
    acks, reports = Acks(), []
    try:
        for cycle in range(CYCLES):
            b.start()
            await _load_then_kill(b, acks, cycle, rng)
            if cycle % 2 == 0:  # repair the stopped store, then restart
                reports.append(("offline", _repair(b, offline=True)))
            else:  # restart, then repair through the admin API
                b.start()
                reports.append(("server", _repair(b, offline=False)))
                b.stop()
        b.start()
        await asyncio.sleep(ASK_TIMEOUT_S + 2)  # every deadline has passed
        final = _repair(b, offline=False)
        b.stop()
        offline_final = _repair(b, offline=True)
    finally:
        if b.proc is not None:
            b.kill()

    summary = [(kind, r["status"], r["counts"]) for kind, r in reports]
    print(f"acks per cycle {dict(acks.counts)}, responds {len(acks.responds)}, repairs {summary}")
    events = await read_events(b.db)
    terminals = _terminals(events)
    created = {r.data["request_id"] for r in events if r.type == REQUEST_CREATED}
    assert sum(acks.counts.values()) >= CYCLES * 3, "the load never got going"
    # nothing a client was told is lost, and it says what the client was told
    for request_id, status in acks.asks.items():
        assert request_id in terminals, f"acknowledged ask {request_id} has no terminal fact"
        assert STATUS_BY_TERMINAL[terminals[request_id][0].type] == status
    for request_id in acks.responds:
        assert terminals[request_id][0].type == REQUEST_ANSWERED
    # no request closed twice, and none left open
    twice = {rid: [r.type for r in rs] for rid, rs in terminals.items() if len(rs) > 1}
    assert not twice, f"requests with more than one terminal fact: {twice}"
    assert created == set(terminals), f"left open: {sorted(created - set(terminals))}"
    # repair found what the crashes left and resolved it; the final runs had nothing left
    found = sum(
        sum(r["counts"][k] for k in ("fall_back", "expire", "pending"))
        for kind, r in reports
        if kind == "offline"
    )
    assert found > 0, reports
    assert all(r["status"] in ("clean", "repaired") for _, r in reports)
    assert final["status"] in ("clean", "repaired") and final["state"]["open_requests"] == 0
    assert offline_final["counts"]["fall_back"] == offline_final["counts"]["expire"] == 0
    verify = lighthouse("verify", "--db", str(b.db), cwd=tmp_path, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr


async def test_repair_through_admin_api_is_authenticated(tmp_path: Path) -> None:
    b = BridgeProcess(tmp_path)
    b.add_agent("alice")
    b.start()
    try:
        status, body = b.admin("POST", "/admin/repair", {"dry_run": True})
        assert status == 200 and body["dry_run"] is True and body["status"] == "clean"
        bad_status, _ = b.admin("POST", "/admin/repair", {"dry_run": "yes"})
        assert bad_status == 400
        req = urllib.request.Request(b.url + "/admin/repair", data=b"{}", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=5)
        assert refused.value.code == 401
    finally:
        b.stop()
