"""Bridges that die (kill -9) and stay dead while the others run on, with real processes.

Three `lighthouse serve --database-url … --node-id bN` on one fresh PostgreSQL database
with Redis, HAProxy in front (deploy/haproxy.cfg as shipped, the `Cluster` of
test_scaleout.py). What the dead bridge held is taken over by a live one: the deadline of
a request whose asking bridge died is still recorded, once; a push whose asking and
pushing bridges both died moves to the mailbox; `lighthouse repair --database-url` closes
only what dead bridges left; an SDK client whose session's bridge died gets a new session
through the balancer and goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.domain import TERMINAL_TYPES
from bridge.nodes import STALE_S
from bridge.routing import TAKEOVER_GRACE_S
from tests.e2e.test_scaleout import SCHEMA, Cluster, _accept, running_cluster
from tests.harness import lighthouse, wait_until

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs haproxy")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path, ("alice", "bob", "dave", "erin", "rex")) as c:
        yield c


def _args(to: str, request_id: str, timeout_s: float, **extra: Any) -> dict[str, Any]:
    return {
        "to": to,
        "message": "which way?",
        "schema": SCHEMA,
        "timeout_s": timeout_s,
        "request_id": request_id,
        **extra,
    }


async def _facts(c: Cluster, request_id: str) -> list[Any]:
    return [e for e in await c.events() if e.stream == f"request-{request_id}"]


async def _seen(c: Cluster, request_id: str, type_: str) -> bool:
    return any(f.type == type_ for f in await _facts(c, request_id))


async def _hold_ask(c: Cluster, url: str, args: dict[str, Any]) -> None:
    """An asker whose client dies with its bridge (its errors are the point)."""
    with contextlib.suppress(BaseException):
        async with c.client("alice", url) as alice:
            await alice.call_tool("ask", args)


def _verify(c: Cluster) -> None:
    out = lighthouse("verify", "--database-url", c.url, cwd=c.workdir, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


async def test_dead_askers_request_times_out_once_on_a_survivor(cluster: Cluster) -> None:
    """alice asks erin (no session: the mailbox) on b1 with a 4 s timeout; b1 is killed
    and stays dead. b2 — first of the live bridges in node order — records the timeout
    a grace after the deadline; b3 (next in turn) finds it closed. One terminal fact."""
    rid = "dead-asker"
    asker = asyncio.create_task(
        _hold_ask(cluster, cluster.bridges["b1"].mcp_url, _args("erin", rid, 4))
    )
    await wait_until(lambda: _seen(cluster, rid, "RequestCreated"), 10)
    cluster.bridges["b1"].kill()
    [created] = [f for f in await _facts(cluster, rid) if f.type == "RequestCreated"]
    deadline = created.data["deadline"]
    assert created.data["node"] == "b1"
    await wait_until(lambda: _seen(cluster, rid, "RequestTimedOut"), 4 + 2 * TAKEOVER_GRACE_S + 3)
    # b3's turn (one grace later) passes too: it must not add a second terminal fact
    await asyncio.sleep(2 * TAKEOVER_GRACE_S + 0.5)
    terminals = [f for f in await _facts(cluster, rid) if f.type in TERMINAL_TYPES]
    assert [t.type for t in terminals] == ["RequestTimedOut"]
    late = terminals[0].time - deadline
    assert TAKEOVER_GRACE_S - 0.1 <= late < TAKEOVER_GRACE_S + 2.0, late
    assert "outlived its deadline on bridge b1" in cluster.bridges["b2"].log_path.read_text()
    asker.cancel()
    await asyncio.gather(asker, return_exceptions=True)
    _verify(cluster)


async def test_push_whose_asking_and_pushing_bridges_both_died(cluster: Cluster) -> None:
    """alice on b1 asks bob, whose session is on b2; the push is out (bob does not answer)
    when b1 and b2 are killed. b3 sees both heartbeats go stale and moves the request to
    the mailbox (`bridge_gone`); bob comes back through HAProxy and answers it there."""
    b1, b2 = cluster.bridges["b1"], cluster.bridges["b2"]
    rid = "orphan-push"
    ready = asyncio.Event()

    async def bob_on_b2() -> None:
        async def never(ctx: Any, params: Any) -> Any:
            await asyncio.sleep(3600)

        with contextlib.suppress(BaseException):
            async with cluster.client("bob", b2.mcp_url, elicitation_callback=never) as bob:
                await bob.call_tool("list_agents", {})
                ready.set()
                await asyncio.sleep(3600)

    first_bob = asyncio.create_task(bob_on_b2())
    await asyncio.wait_for(ready.wait(), 10)
    await wait_until(lambda: b1.health()["node"]["remote_sessions"].get("b2", 0) > 0, 5)
    asker = asyncio.create_task(_hold_ask(cluster, b1.mcp_url, _args("bob", rid, 30)))
    await wait_until(lambda: _seen(cluster, rid, "RequestDelivered"), 10)
    b1.kill()
    b2.kill()
    killed = time.monotonic()
    await wait_until(lambda: _seen(cluster, rid, "RequestFellBack"), STALE_S + 8)
    assert time.monotonic() - killed < STALE_S + 4
    async with cluster.client("bob", cluster.lb_url) as bob:
        got = await bob.call_tool("wait_for_messages", {"timeout_s": 5})
        [item] = [m for m in got.structured_content["messages"] if m["kind"] == "request"]
        assert item["request_id"] == rid
        answered = await bob.call_tool(
            "respond",
            {"request_id": rid, "action": "accept", "content": {"answer": "late but here"}},
        )
        assert answered.is_error is False, answered.content
    facts = await _facts(cluster, rid)
    moves = [f for f in facts if f.type == "RequestFellBack"]
    assert [m.data["cause"] for m in moves] == ["bridge_gone"]
    assert [f.type for f in facts if f.type in TERMINAL_TYPES] == ["RequestAnswered"]
    for task in (asker, first_bob):
        task.cancel()
    await asyncio.gather(asker, first_bob, return_exceptions=True)
    _verify(cluster)


def _repair(c: Cluster, *extra: str) -> dict[str, Any]:
    out = lighthouse(
        "repair", "--database-url", c.url, "--json", *extra, cwd=c.workdir, timeout=120
    )
    return json.loads(out.stdout)


async def test_repair_beside_live_bridges_touches_only_the_dead_ones_work(
    cluster: Cluster,
) -> None:
    """Each bridge holds an open ask to rex and an open session; rex is revoked (repair
    expires requests to a revoked recipient, the bridges leave them to their deadline).
    b3 also asked bob, whose push is out on b2. b3 is killed. `repair --database-url`
    expires only b3's ask to rex and closes only b3's sessions; it names b1 and b2 for
    what they hold (b2: the push); a second run changes nothing."""
    rids = {node: f"to-rex-{node}" for node in cluster.bridges}
    b2, b3 = cluster.bridges["b2"], cluster.bridges["b3"]
    async with contextlib.AsyncExitStack() as stack:
        never = asyncio.Event()

        async def hold(ctx: Any, params: Any) -> Any:
            await never.wait()

        bob = await stack.enter_async_context(
            cluster.client("bob", b2.mcp_url, elicitation_callback=hold)
        )
        await bob.call_tool("list_agents", {})
        await wait_until(lambda: b3.health()["node"]["remote_sessions"].get("b2", 0) > 0, 5)
        for node, bridge in cluster.bridges.items():
            client = await stack.enter_async_context(cluster.client("alice", bridge.mcp_url))
            out = await client.call_tool("ask", _args("rex", rids[node], 300, wait=False))
            assert out.structured_content["status"] == "pending", out.content
            if node == "b3":
                out = await client.call_tool("ask", _args("bob", "pushed-on-b2", 300, wait=False))
                assert out.structured_content["path"] == "elicitation", out.content
        await wait_until(lambda: _seen(cluster, "pushed-on-b2", "RequestDelivered"), 10)
        revoke = lighthouse(
            "agents", "revoke", "rex", cwd=cluster.workdir, env=cluster.bridges["b1"].env
        )
        assert revoke.returncode == 0
        cluster.bridges["b3"].kill()
        b1 = cluster.bridges["b1"]
        await wait_until(
            lambda: not any(p["alive"] for p in b1.health()["node"]["peers"] if p["node"] == "b3"),
            STALE_S + 5,
        )
        await asyncio.sleep(0.5)  # by the database clock too

        dry = _repair(cluster, "--dry-run")
        real = _repair(cluster)
        again = _repair(cluster)
    for report in (dry, real, again):
        assert report["live_bridges"] == ["b1", "b2"]
        by_id = {r["request_id"]: r for r in report["requests"]}
        for node in ("b1", "b2"):
            left = by_id[rids[node]]
            assert (left["action"], left["reason"], left["node"]) == (
                "live_bridge",
                "asked_on_live_bridge",
                node,
            )
        pushed = by_id["pushed-on-b2"]
        assert (pushed["action"], pushed["reason"], pushed["node"]) == (
            "live_bridge",
            "pushed_by_live_bridge",
            "b2",
        )
    dry_b3 = next(r for r in dry["requests"] if r["request_id"] == rids["b3"])
    assert dry["status"] == "would_repair" and dry["appended"] == 0
    assert (dry_b3["action"], dry_b3["reason"], dry_b3["applied"]) == (
        "expire",
        "recipient_revoked",
        False,
    )
    assert dry["sessions_closed"] and all(s.startswith("b3.") for s in dry["sessions_closed"])
    assert real["status"] == "repaired"
    assert real["sessions_closed"] == dry["sessions_closed"]
    real_b3 = next(r for r in real["requests"] if r["request_id"] == rids["b3"])
    assert real_b3["action"] == "expire" and real_b3["applied"] is True
    assert again["status"] == "clean" and again["appended"] == 0
    assert again["sessions_closed"] == [] and again["counts"]["expire"] == 0
    assert again["counts"]["live_bridge"] == 3

    events = await cluster.events()
    for node, rid in rids.items():
        terminals = [
            e.type for e in events if e.stream == f"request-{rid}" and e.type in TERMINAL_TYPES
        ]
        assert terminals == (["RequestExpired"] if node == "b3" else []), node
    assert not [
        e for e in events if e.stream == "request-pushed-on-b2" and e.type in TERMINAL_TYPES
    ]
    by_repair = [
        e.data["session_id"]
        for e in events
        if e.type == "SessionClosed" and e.data["reason"] == "repair"
    ]
    assert sorted(by_repair) == sorted(real["sessions_closed"])  # b1's and b2's left open
    _verify(cluster)


async def test_sdk_client_behind_haproxy_gets_a_new_session_when_its_bridge_dies(
    cluster: Cluster,
) -> None:
    """alice and bob (elicitation) both hold sessions on one bridge through HAProxy; dave
    waits on another bridge. alice asks dave; while the ask waits, the sessions' bridge is
    killed. alice's client is told 502, finds its session gone (404), opens a new one and
    sends the ask again with its `request_id` — it re-attaches, no second request — and
    gets dave's answer. bob, idle, notices on his GET stream and has a new session by the
    time alice asks him; the push reaches him there."""
    async with contextlib.AsyncExitStack() as stack:
        alice = await stack.enter_async_context(cluster.client("alice", cluster.lb_url))
        await alice.call_tool("list_agents", {})
        node = alice.session_id.partition(".")[0]
        bob = None
        for _ in range(len(cluster.bridges)):  # round robin: one of the next three lands there
            candidate = cluster.client("bob", cluster.lb_url, elicitation_callback=_accept("ok"))
            await stack.enter_async_context(candidate)
            if candidate.session_id.partition(".")[0] == node:
                bob = candidate
                break
        assert bob is not None, "no bob session landed on alice's bridge"
        other = next(n for n in cluster.bridges if n != node)
        dave = await stack.enter_async_context(
            cluster.client("dave", cluster.bridges[other].mcp_url)
        )
        await dave.call_tool("list_agents", {})
        old_alice, old_bob = alice.session_id, bob.session_id

        asking = asyncio.create_task(alice.call_tool("ask", _args("dave", "through-lb", 30)))
        await wait_until(lambda: _seen(cluster, "through-lb", "RequestCreated"), 10)
        cluster.bridges[node].kill()
        got = await dave.call_tool("wait_for_messages", {"timeout_s": 10})
        [item] = [m for m in got.structured_content["messages"] if m["kind"] == "request"]
        await dave.call_tool(
            "respond",
            {"request_id": item["request_id"], "action": "accept", "content": {"answer": "s"}},
        )
        out = await asyncio.wait_for(asking, 30)
        assert out.is_error is False, out.content
        assert out.structured_content["status"] == "accepted"
        assert out.structured_content["request_id"] == "through-lb"
        assert alice.reconnects == 1 and alice.session_id != old_alice
        assert not alice.session_id.startswith(node + ".")

        await wait_until(lambda: bob.reconnects == 1, 10)  # its GET stream met the 404
        assert bob.session_id != old_bob and not bob.session_id.startswith(node + ".")
        bob_node = bob.session_id.partition(".")[0]
        await wait_until(
            lambda: (
                any(
                    b.health()["node"]["remote_sessions"].get(bob_node, 0) > 0
                    for n, b in cluster.bridges.items()
                    if n not in (node, bob_node)
                )
                or alice.session_id.startswith(bob_node + ".")
            ),
            5,
        )
        back = await alice.call_tool("ask", _args("bob", "after-renewal", 20))
        assert back.is_error is False, back.content
        assert back.structured_content["status"] == "accepted"
        assert back.structured_content["path"] == "elicitation"

    events = await cluster.events()
    created = [e for e in events if e.type == "RequestCreated"]
    assert [e.data["request_id"] for e in created] == ["through-lb", "after-renewal"]
    for rid in ("through-lb", "after-renewal"):
        terminals = [e for e in events if e.stream == f"request-{rid}" and e.type in TERMINAL_TYPES]
        assert len(terminals) == 1, rid
