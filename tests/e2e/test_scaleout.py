"""Three bridges on one PostgreSQL store behind HAProxy (deploy/haproxy.cfg, as shipped).

Real processes throughout: three `lighthouse serve --database-url … --node-id bN`, Redis for
nonces and limits, Debian's HAProxy in front, official SDK clients (`bridge.client.connect`)
in both modes. Agents on different bridges ask each other; a flag flipped on one bridge
routes new asks to legacy on all; one bridge is killed with SIGKILL while asks are in
flight, and the system goes on without losing an acknowledged answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp.types import ElicitResult

from bridge.client import connect
from bridge.config import Settings
from bridge.domain import TERMINAL_TYPES
from tests.harness import Agent, BridgeProcess, free_port, lighthouse, wait_until
from tests.pgtools import drop_created, fresh_database

REDIS_URL = os.environ.get("LIGHTHOUSE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
NODES = ("b1", "b2", "b3")

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs haproxy")


class Cluster:
    def __init__(self, workdir: Path, url: str) -> None:
        self.workdir = workdir
        self.url = url
        self.lb_port = free_port()
        self.nginx_port = free_port()
        prefix = f"lh-test-{uuid.uuid4().hex}:"
        self.args = (
            "--database-url",
            url,
            "--redis-url",
            REDIS_URL,
            "--redis-prefix",
            prefix,
            "--allowed-host",
            f"127.0.0.1:{self.lb_port}",
            "--allowed-host",
            f"127.0.0.1:{self.nginx_port}",
        )
        self.bridges = {
            node: BridgeProcess(workdir, extra_args=(*self.args, "--node-id", node))
            for node in NODES
        }
        self.haproxy: subprocess.Popen[bytes] | None = None
        self.agents: dict[str, Agent] = {}

    @property
    def lb_url(self) -> str:
        return f"http://127.0.0.1:{self.lb_port}/mcp"

    def start(self) -> Cluster:
        for bridge in self.bridges.values():
            bridge.start()
        env = {
            **os.environ,
            "LH_LISTEN": f"127.0.0.1:{self.lb_port}",
            "LH_PUBLIC_HOST": f"127.0.0.1:{self.lb_port}",
            **{
                f"LH_BRIDGE_{i}": f"127.0.0.1:{b.port}"
                for i, b in enumerate(self.bridges.values(), 1)
            },
        }
        log = open(self.workdir / "haproxy.log", "ab")  # noqa: SIM115 - closed with the process
        self.haproxy = subprocess.Popen(
            ["haproxy", "-db", "-f", str(DEPLOY / "haproxy.cfg")], env=env, stdout=log, stderr=log
        )
        return self

    def stop(self) -> None:
        if self.haproxy is not None:
            self.haproxy.kill()
            self.haproxy.wait(10)
        for bridge in self.bridges.values():
            if bridge.proc is not None:
                bridge.stop(timeout=30)

    def add_agent(self, name: str) -> Agent:
        agent = self.bridges["b1"].add_agent(name)
        self.agents[name] = agent
        return agent

    def client(self, name: str, url: str, **kwargs: Any) -> Any:
        agent = self.agents[name]
        return connect(url, agent.key_id, agent.secret, **kwargs)

    async def events(self) -> list[Any]:
        from events.postgres import PostgresEventStore

        settings = Settings(db=self.workdir / "lighthouse.db", database_url=self.url)
        store = await PostgresEventStore.open(settings.store_config(readonly=True))
        try:
            return await store.read_all(1, limit=None)
        finally:
            await store.close()


@contextlib.contextmanager
def running_cluster(workdir: Path, agents: tuple[str, ...]) -> Iterator[Cluster]:
    """Three bridges on a fresh database behind HAProxy, `agents` registered; stopped and
    the database dropped afterwards."""
    c = Cluster(workdir, fresh_database("scaleout"))
    try:
        c.start()
        for name in agents:
            c.add_agent(name)
        # every bridge knows every agent (the registry follows the log) and its peers
        for bridge in c.bridges.values():
            _until(lambda b=bridge: len(b.health()["node"]["peers"]) == 2, 10)
            _until(lambda b=bridge: _knows(b, agents[-1]), 10)
        _until(lambda: _lb_up(c), 10)
        yield c
    finally:
        c.stop()
        drop_created()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(
        tmp_path_factory.mktemp("scaleout"), ("alice", "bob", "carol", "dave", "erin")
    ) as c:
        yield c


def _knows(bridge: BridgeProcess, agent: str) -> bool:
    _, listed = bridge.admin("GET", "/admin/agents")
    return any(a["agent"] == agent for a in listed["agents"])


def _lb_up(c: Cluster) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{c.lb_port}/health", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def _until(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _accept(answer: str, delay: float = 0.0) -> Any:
    async def callback(ctx: Any, params: Any) -> ElicitResult:
        if delay:
            await asyncio.sleep(delay)
        return ElicitResult(action="accept", content={"answer": answer})

    return callback


async def _ask(client: Any, to: str, timeout_s: float = 30) -> dict[str, Any]:
    result = await client.call_tool(
        "ask", {"to": to, "message": "which way?", "schema": SCHEMA, "timeout_s": timeout_s}
    )
    assert result.is_error is False, result.content
    return result.structured_content


def _stream(events: list[Any], request_id: str) -> list[Any]:
    return [e for e in events if e.stream == f"request-{request_id}"]


async def _remote_session_seen(c: Cluster, on: str, agent_node: str) -> None:
    await wait_until(
        lambda: c.bridges[on].health()["node"]["remote_sessions"].get(agent_node, 0) > 0, 5
    )


async def test_elicitation_across_bridges(cluster: Cluster) -> None:
    """alice on b1 asks bob, whose session (with its GET stream) is on b2: b2 pushes."""
    b1, b2 = cluster.bridges["b1"], cluster.bridges["b2"]
    async with cluster.client("bob", b2.mcp_url, elicitation_callback=_accept("north")) as bob:
        await bob.call_tool("list_agents", {})
        await _remote_session_seen(cluster, "b1", "b2")
        async with cluster.client("alice", b1.mcp_url) as alice:
            out = await _ask(alice, "bob")
    assert out["status"] == "accepted" and out["path"] == "elicitation"
    assert out["content"] == {"answer": "north"}
    facts = _stream(await cluster.events(), out["request_id"])
    types = [f.type for f in facts]
    assert types == ["RequestCreated", "RequestRouted", "RequestDelivered", "RequestAnswered"]
    assert facts[1].data["node"] == "b2"  # the asking bridge named the pusher
    assert facts[2].data["session_id"].startswith("b2.")  # and only b2 pushed


async def test_modern_caller_through_haproxy_asks_a_session_elsewhere(cluster: Cluster) -> None:
    """carol speaks 2026-07-28 (sessionless, balanced over all three bridges) and asks
    bob, whose session is on b3; then bob asks carol back, who waits through HAProxy."""
    b3 = cluster.bridges["b3"]
    async with (
        cluster.client("bob", b3.mcp_url, elicitation_callback=_accept("east")) as bob,
        cluster.client(
            "carol", cluster.lb_url, mode="2026-07-28", elicitation_callback=_accept("west")
        ) as carol,
    ):
        await bob.call_tool("list_agents", {})
        for on in ("b1", "b2"):
            await _remote_session_seen(cluster, on, "b3")
        asked = [await _ask(carol, "bob") for _ in range(3)]  # round robin: every bridge
        assert all(o["status"] == "accepted" and o["path"] == "elicitation" for o in asked)
        assert all(o["content"] == {"answer": "east"} for o in asked)
        # bob asks carol: her wait calls reach any bridge; the mailbox follows the log
        waiter = asyncio.create_task(_drain_waits(carol, 15))
        back = await _ask(bob, "carol", timeout_s=20)
        waiter.cancel()
    assert back["status"] == "accepted" and back["content"] == {"answer": "west"}
    events = await cluster.events()
    for o in asked:
        routed = [f for f in _stream(events, o["request_id"]) if f.type == "RequestRouted"]
        assert routed[0].data["node"] == "b3"


async def _drain_waits(client: Any, seconds: float) -> None:
    """A 2026-07-28 agent's loop: hold wait_for_messages, answer what it hands out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        got = await client.call_tool("wait_for_messages", {"timeout_s": 2})
        for item in got.structured_content.get("messages", []):
            if item.get("kind") == "request":
                await client.call_tool(
                    "respond",
                    {
                        "request_id": item["request_id"],
                        "action": "accept",
                        "content": {"answer": "west"},
                    },
                )


async def test_legacy_mailbox_across_bridges(cluster: Cluster) -> None:
    """dave (no elicitation) on b3; alice asks on b1; dave's wait on b3 hands it out."""
    b1, b3 = cluster.bridges["b1"], cluster.bridges["b3"]
    async with cluster.client("dave", b3.mcp_url) as dave:
        await dave.call_tool("list_agents", {})
        await _remote_session_seen(cluster, "b1", "b3")
        async with cluster.client("alice", b1.mcp_url) as alice:
            asking = asyncio.create_task(_ask(alice, "dave"))
            got = await dave.call_tool("wait_for_messages", {"timeout_s": 10})
            [item] = [m for m in got.structured_content["messages"] if m["kind"] == "request"]
            await dave.call_tool(
                "respond",
                {"request_id": item["request_id"], "action": "accept", "content": {"answer": "s"}},
            )
            out = await asking
    assert out["status"] == "accepted" and out["path"] == "legacy"
    assert out["request_id"] == item["request_id"]


async def test_flag_flip_on_one_bridge_routes_new_asks_to_legacy_on_all(
    cluster: Cluster,
) -> None:
    b1, b2, b3 = (cluster.bridges[n] for n in NODES)
    async with cluster.client("bob", b2.mcp_url, elicitation_callback=_accept("up")) as bob:
        await bob.call_tool("list_agents", {})
        await _remote_session_seen(cluster, "b1", "b2")
        status, _ = b3.admin("POST", "/feature_flags", {"elicitation_enabled": False})
        assert status == 200
        try:
            for bridge in (b1, b2):
                _until(lambda b=bridge: not b.health()["flags"]["elicitation_enabled"], 1.0)
            async with cluster.client("alice", b1.mcp_url) as alice:
                asking = asyncio.create_task(_ask(alice, "bob"))
                got = await bob.call_tool("wait_for_messages", {"timeout_s": 10})
                [item] = [m for m in got.structured_content["messages"] if m["kind"] == "request"]
                await bob.call_tool(
                    "respond",
                    {
                        "request_id": item["request_id"],
                        "action": "accept",
                        "content": {"answer": "down"},
                    },
                )
                out = await asking
        finally:
            b3.admin("POST", "/feature_flags", {"elicitation_enabled": True})
            for bridge in (b1, b2):
                _until(lambda b=bridge: b.health()["flags"]["elicitation_enabled"], 5)
    assert out["path"] == "legacy" and out["content"] == {"answer": "down"}
    routed = [f for f in _stream(await cluster.events(), out["request_id"]) if "Fell" in f.type]
    assert routed and routed[0].data["cause"] == "flag_off"


@pytest.mark.skipif(shutil.which("nginx") is None, reason="needs nginx")
async def test_nginx_maps_the_session_prefix_to_its_bridge(cluster: Cluster) -> None:
    """deploy/nginx.conf as shipped (only its addresses rewritten): every request of a
    2025-era session, its GET stream included, reaches the bridge its id names."""
    conf = (
        (DEPLOY / "nginx.conf")
        .read_text()
        .replace("127.0.0.1:8765", f"127.0.0.1:{cluster.nginx_port}")
    )
    for i, bridge in enumerate(cluster.bridges.values(), 1):
        conf = conf.replace(f"127.0.0.1:870{i}", f"127.0.0.1:{bridge.port}")
    prefix = cluster.workdir / "nginx"
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    (prefix / "nginx.conf").write_text(conf)
    with open(prefix / "nginx.log", "ab") as log:
        nginx = subprocess.Popen(
            ["nginx", "-p", str(prefix), "-c", "nginx.conf", "-g", "daemon off;"],
            stdout=log,
            stderr=log,
        )
    url = f"http://127.0.0.1:{cluster.nginx_port}/mcp"
    try:
        await wait_until(lambda: _port_open(cluster.nginx_port), 10)
        async with (
            cluster.client("bob", url, elicitation_callback=_accept("via nginx")) as bob,
            cluster.client("alice", url) as alice,
        ):
            await bob.call_tool("list_agents", {})
            outs = [await _ask(alice, "bob") for _ in range(2)]
    finally:
        nginx.terminate()
        nginx.wait(10)
    assert all(o["path"] == "elicitation" and o["content"] == {"answer": "via nginx"} for o in outs)
    events = await cluster.events()
    for o in outs:
        facts = {f.type: f for f in _stream(events, o["request_id"])}
        node = facts["RequestRouted"].data["node"]
        assert facts["RequestDelivered"].data["session_id"].startswith(node + ".")


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def test_kill_one_bridge_under_load(cluster: Cluster) -> None:
    """Asks from b1 to bob on b3 are in flight (bob takes 1.5 s to answer) when b3 is
    killed. They fall back (`bridge_gone`), bob reconnects through HAProxy and answers
    from the mailbox; no acknowledged answer is lost, no request gets two terminal facts."""
    b1, b3 = cluster.bridges["b1"], cluster.bridges["b3"]
    ready = asyncio.Event()

    async def bob_on_b3() -> None:
        """bob's first client: it dies with its bridge (its errors are the point)."""
        with contextlib.suppress(BaseException):
            async with cluster.client(
                "bob", b3.mcp_url, elicitation_callback=_accept("slow", delay=1.5)
            ) as bob:
                await bob.call_tool("list_agents", {})
                ready.set()
                await asyncio.sleep(3600)

    first_bob = asyncio.create_task(bob_on_b3())
    await asyncio.wait_for(ready.wait(), 10)
    await _remote_session_seen(cluster, "b1", "b3")
    results: list[dict[str, Any]] = []
    errors: list[str] = []

    async with cluster.client("alice", b1.mcp_url) as alice:

        async def one() -> None:
            try:
                results.append(await _ask(alice, "bob", timeout_s=40))
            except Exception as exc:
                errors.append(repr(exc))

        asks = [asyncio.create_task(one()) for _ in range(8)]
        await asyncio.sleep(0.5)  # the pushes are out, the answers not yet
        b3.kill()
        # bob comes back through the balancer (b3 is out of the rotation) in legacy mode
        async with cluster.client("bob", cluster.lb_url) as bob2:
            deadline = time.monotonic() + 30
            while len(results) + len(errors) < len(asks) and time.monotonic() < deadline:
                got = await bob2.call_tool("wait_for_messages", {"timeout_s": 2})
                for item in got.structured_content["messages"]:
                    if item["kind"] == "request":
                        await bob2.call_tool(
                            "respond",
                            {
                                "request_id": item["request_id"],
                                "action": "accept",
                                "content": {"answer": "again"},
                            },
                        )
        await asyncio.gather(*asks)
    first_bob.cancel()
    with contextlib.suppress(BaseException):
        await first_bob
    assert not errors, errors
    assert len(results) == len(asks) and all(r["status"] == "accepted" for r in results)
    events = await cluster.events()
    positions = [e.position for e in events]
    assert positions == list(range(1, len(events) + 1))  # one gap-free log
    for r in results:  # every acknowledged answer is in the log, once
        facts = _stream(events, r["request_id"])
        terminals = [f for f in facts if f.type in TERMINAL_TYPES]
        assert len(terminals) == 1, [f.type for f in facts]
    terminal_counts = Counter(e.data["request_id"] for e in events if e.type in TERMINAL_TYPES)
    assert max(terminal_counts.values()) == 1
    causes = {e.data.get("cause") for e in events if e.type == "RequestFellBack"}
    assert "bridge_gone" in causes or "session_gone" in causes or "transport_error" in causes

    # b3 comes back: it closes the sessions that died with it and adopts only its own
    b3.start()
    await wait_until(lambda: b3.health()["node"]["behind_head"] == 0, 10)
    events = await cluster.events()
    restart_closed = [
        e for e in events if e.type == "SessionClosed" and e.data.get("reason") == "bridge_restart"
    ]
    assert restart_closed and all(e.data["session_id"].startswith("b3.") for e in restart_closed)

    verify = lighthouse("verify", "--database-url", cluster.url, cwd=cluster.workdir, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    repair = lighthouse(
        "repair", cwd=cluster.workdir, env={"LIGHTHOUSE_URL": b1.url}, check=False, timeout=120
    )
    assert repair.returncode == 0, repair.stdout + repair.stderr
    verify = lighthouse("verify", "--database-url", cluster.url, cwd=cluster.workdir, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    # with every bridge stopped, repair works on the PostgreSQL store directly
    for bridge in cluster.bridges.values():
        bridge.stop(timeout=30)
    nobody = {"LIGHTHOUSE_URL": f"http://127.0.0.1:{free_port()}"}
    direct = lighthouse(
        "repair", "--database-url", cluster.url, cwd=cluster.workdir, env=nobody, check=False
    )
    assert direct.returncode == 0, direct.stdout + direct.stderr
    assert "PostgreSQL" in direct.stdout
    verify = lighthouse("verify", "--database-url", cluster.url, cwd=cluster.workdir, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
