"""SIGTERM is a drain: answers that arrive within the grace still reach their askers.

A real bridge process, official SDK clients: asks are pending on bob's (slow) elicitation
callback when the bridge gets SIGTERM. The bridge keeps serving answers, refuses new asks
with a retryable error, and exits within its grace; what could not finish is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path
from typing import Any

from mcp_types import ElicitResult

from tests.harness import SCHEMA, BridgeProcess, read_events

ASKS = 20


async def test_sigterm_lets_pending_answers_finish(tmp_path: Path) -> None:
    bridge = BridgeProcess(tmp_path, extra_args=("--shutdown-grace", "8"))
    bridge.add_agent("alice")
    bridge.add_agent("bob")
    bridge.start()
    called = 0

    async def slow(ctx: Any, params: Any) -> ElicitResult:
        nonlocal called
        called += 1
        await asyncio.sleep(2.0)
        return ElicitResult(action="accept", content={"answer": "done"})

    async def ask(alice: Any, i: int) -> Any:
        return await alice.call_tool(
            "ask", {"to": "bob", "message": f"q{i}", "schema": SCHEMA, "timeout_s": 30}
        )

    try:
        async with bridge.client("bob", elicitation_callback=slow), bridge.client("alice") as alice:
            asks = [asyncio.create_task(ask(alice, i)) for i in range(ASKS)]
            deadline = time.monotonic() + 20
            while called < ASKS and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert called == ASKS
            assert bridge.proc is not None
            stopped_at = time.monotonic()
            bridge.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            late = await ask(alice, 99)
            assert late.is_error and "bridge_stopping" in late.content[0].text
            results = await asyncio.gather(*asks)
        assert all(not r.is_error for r in results), results
        assert {r.structured_content["status"] for r in results} == {"accepted"}
        assert {r.structured_content["path"] for r in results} == {"elicitation"}
        code = bridge.proc.wait(15)
        took = time.monotonic() - stopped_at
        bridge.proc = None
    finally:
        if bridge.proc is not None:
            bridge.kill()
    assert code == 0
    assert took < 8 + 1.5, took
    assert "stopped after drain" in bridge.log_path.read_text()
    answered = await read_events(bridge.db, ["RequestAnswered"])
    assert len(answered) == ASKS


async def test_sigterm_moves_what_cannot_finish(tmp_path: Path) -> None:
    """Answers that will not come in time: the elicitations move to bob's mailbox, the
    stop is reported, and after a restart bob answers them there."""
    bridge = BridgeProcess(tmp_path, extra_args=("--shutdown-grace", "3"))
    bridge.add_agent("alice")
    bridge.add_agent("bob")
    bridge.start()
    called = asyncio.Event()

    async def never(ctx: Any, params: Any) -> ElicitResult:
        called.set()
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    stack = contextlib.AsyncExitStack()
    try:
        await stack.enter_async_context(bridge.client("bob", elicitation_callback=never))
        alice = await stack.enter_async_context(bridge.client("alice"))
        asking = asyncio.create_task(
            alice.call_tool("ask", {"to": "bob", "message": "q", "schema": SCHEMA, "timeout_s": 60})
        )
        await asyncio.wait_for(called.wait(), 10)
        assert bridge.proc is not None
        started = time.monotonic()
        bridge.proc.send_signal(signal.SIGTERM)
        # Blocking on purpose: once the bridge is gone the SDK clients cancel whatever
        # awaits inside their contexts, and the exit is what this test measures.
        code = bridge.proc.wait(10)
        took = time.monotonic() - started
        bridge.proc = None
        asking.cancel()
    finally:
        if bridge.proc is not None:
            bridge.kill()
        # The clients outlived the bridge: leaving them fails on their side, as it would
        # for any client of a stopped server; that is not what this test is about.
        with contextlib.suppress(BaseException):
            await stack.aclose()
    assert code == 0 and took < 3 + 1.5, took
    log = bridge.log_path.read_text()
    assert "1 moved to the mailbox" in log and "1 requests left open" in log
    [fell] = await read_events(bridge.db, ["RequestFellBack"])
    assert fell.data["cause"] == "drain"
    bridge.start()
    try:
        async with bridge.client("bob") as bob:
            got = await bob.call_tool("wait_for_messages", {"timeout_s": 5})
            [item] = got.structured_content["messages"]
            assert item["kind"] == "request" and item["message"] == "q"
    finally:
        bridge.stop()
