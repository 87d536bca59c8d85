"""PostgreSQL out of reach for a few seconds under a running bridge: what clients see.

A real `lighthouse serve --database-url` reaches PostgreSQL through a TCP proxy the test
cuts and restores (the shared server is never touched). While it is cut, signed MCP
requests get JSON 503 with the reason and `Retry-After` (no 500, no half-written state),
`/health` says `degraded` — also for an agent whose secret the bridge must first read from
the shared vault; once it is restored the bridge serves again by itself. A database that
goes silent (connections open, no answers) delays only the requests that wait on it: the
secret-vault read of a request runs off the event loop, so everything else is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.attacks.conftest import (
    Agent,
    RawClient,
    initialize_body,
    jsonrpc_payload,
    tool_call_body,
)
from tests.harness import BridgeProcess, lighthouse
from tests.pgtools import drop_created, fresh_database

from .tcp_proxy import TcpProxy


@pytest.fixture(scope="module", autouse=True)
def _drop_databases() -> Iterator[None]:
    yield
    drop_created()


class ThreadedProxy:
    """The proxy on its own event loop: the bridge process must reach PostgreSQL while
    this test blocks on HTTP calls."""

    def __init__(self, port: int) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.proxy = self._run(TcpProxy("127.0.0.1", port).start())

    def _run(self, coro: object) -> TcpProxy:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)  # type: ignore[arg-type]

    def cut(self) -> None:
        self._run(self.proxy.cut())

    def restore(self) -> None:
        self._run(self.proxy.restore())

    def stall(self) -> None:
        self.loop.call_soon_threadsafe(self.proxy.stall)

    def close(self) -> None:
        self._run(self.proxy.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def _until(predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s")


def _bob_added_elsewhere(bridge: BridgeProcess, url: str, tmp_path: Path) -> None:
    """bob is added by another process (the CLI on the database directly): the bridge learns
    of him from the log and has never read his secret from the shared vault."""
    added = lighthouse("agents", "add", "bob", "--database-url", url, cwd=tmp_path)
    bob = json.loads(added.stdout)
    bridge.agents["bob"] = Agent(bob["agent"], bob["key_id"], bob["secret"])
    _until(
        lambda: any(a["agent"] == "bob" for a in bridge.admin("GET", "/admin/agents")[1]["agents"]),
        5,
    )


@contextlib.contextmanager
def bridge_behind_proxy(
    tmp_path: Path, label: str
) -> Iterator[tuple[str, ThreadedProxy, BridgeProcess, RawClient]]:
    """A bridge whose PostgreSQL (store and vault) is reached through a proxy the test
    controls; the database URL without the proxy, for the CLI."""
    url = fresh_database(label)
    proxy = ThreadedProxy(5432)
    via = url.replace(":5432/", f":{proxy.proxy.port}/")
    bridge = BridgeProcess(tmp_path, extra_args=("--database-url", via)).start()
    raw = RawClient(bridge)
    try:
        yield url, proxy, bridge, raw
    finally:
        raw.close()
        proxy.close()  # links drop: any wait of the bridge on the database ends, it can stop
        if bridge.proc is not None:
            bridge.stop()


def test_unreachable_postgres_is_503_with_a_reason_and_recovers(tmp_path: Path) -> None:
    with bridge_behind_proxy(tmp_path, "outage") as (url, proxy, bridge, raw):
        status, created = bridge.admin("POST", "/admin/agents", {"name": "alice"})
        assert status == 201
        bridge.agents["alice"] = Agent(created["agent"], created["key_id"], created["secret"])
        _bob_added_elsewhere(bridge, url, tmp_path)
        session = raw.open_session("alice")
        listing = tool_call_body("list_agents", {})
        assert raw.post("alice", listing, session=session).status_code == 200

        proxy.cut()
        refused = raw.post("alice", listing, session=session)
        assert refused.status_code == 503, refused.text
        assert refused.json()["reason"] == "store_unavailable"
        assert int(refused.headers["retry-after"]) >= 1
        assert "Traceback" not in refused.text
        # bob's secret must come from the vault, which is out of reach: 503, not a 500.
        unread = raw.post("bob", initialize_body())
        assert unread.status_code == 503, unread.text
        assert unread.json()["reason"] == "store_unavailable"
        health = bridge.health()
        assert health["status"] == "degraded" and health["reason"] == "store_unavailable"

        proxy.restore()

        def serving() -> bool:
            response = raw.post("alice", listing, session=session)
            return response.status_code == 200 and "result" in jsonrpc_payload(response)

        _until(serving, timeout=30)
        _until(lambda: raw.post("bob", initialize_body()).status_code == 200, timeout=30)
        _until(lambda: bridge.health()["status"] == "ok", timeout=30)


def test_a_silent_database_delays_only_the_requests_that_wait_on_it(tmp_path: Path) -> None:
    with bridge_behind_proxy(tmp_path, "silent") as (url, proxy, bridge, raw):
        _bob_added_elsewhere(bridge, url, tmp_path)
        proxy.stall()
        waited: dict[str, Any] = {}

        def bob_signs_in() -> None:
            started = time.monotonic()
            response = raw.post("bob", initialize_body())
            waited.update(status=response.status_code, body=response.text)
            waited["s"] = time.monotonic() - started

        caller = threading.Thread(target=bob_signs_in)
        caller.start()
        time.sleep(0.5)  # bob's request is now reading his secret from the silent vault
        assert caller.is_alive()
        slowest = 0.0
        while caller.is_alive():
            started = time.monotonic()
            with urllib.request.urlopen(bridge.url + "/metrics", timeout=5) as scraped:
                assert scraped.status == 200
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.2)
        caller.join()
        assert slowest < 0.5, f"/metrics took {slowest:.2f} s while the vault was silent"
        # bob is told to retry (the vault read is given up, not waited on forever)
        assert waited["status"] == 503, waited
        assert json.loads(waited["body"])["reason"] == "store_unavailable"
        assert "Traceback" not in waited["body"] and waited["s"] < 15
