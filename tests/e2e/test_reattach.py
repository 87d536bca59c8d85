"""An asker whose call dies still gets its answer (issue 10, part 1), with real processes:
asks left pending, the bridge killed with SIGKILL, repair run, the bridge restarted, the
recipient answering from its mailbox, and the asker — in a new client session — collecting
each answer by `get_request` or by re-asking with its `request_id`."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

from bridge.domain import REQUEST_CREATED, TERMINAL_TYPES
from tests.harness import SCHEMA, BridgeProcess, lighthouse, read_events

IDS = [f"job-{n}" for n in range(5)]


def _ask_args(request_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "to": "bob",
        "message": f"question {request_id}",
        "schema": SCHEMA,
        "timeout_s": 300,
        "request_id": request_id,
        **extra,
    }


async def _leave_asks_pending(b: BridgeProcess) -> None:
    """Four asks with wait=false, one whose waiting call dies with the process."""
    async with b.client("alice") as alice:
        for request_id in IDS[:4]:
            out = (
                await alice.call_tool("ask", _ask_args(request_id, wait=False))
            ).structured_content
            assert out["status"] == "pending" and out["path"] == "legacy", out
        waiting = asyncio.create_task(alice.call_tool("ask", _ask_args(IDS[4])))
        await asyncio.sleep(1.0)
        assert not waiting.done()
        b.kill()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(waiting, 10)


async def test_asks_survive_kill_9_and_a_new_session_collects_every_answer(
    tmp_path: Path,
) -> None:
    b = BridgeProcess(tmp_path)
    b.add_agent("alice")
    b.add_agent("bob")
    b.start()
    try:
        with contextlib.suppress(BaseException):  # the client's exit sees a dead server
            await _leave_asks_pending(b)
        assert b.proc is None
        repaired = lighthouse("repair", "--db", str(b.db), "--json", cwd=tmp_path)
        report = json.loads(repaired.stdout)
        left_open = {r["request_id"]: r["reason"] for r in report["requests"]}
        assert left_open == dict.fromkeys(IDS, "in_mailbox"), report
        assert all(r["action"] == "pending" for r in report["requests"])
        text = lighthouse("repair", "--db", str(b.db), cwd=tmp_path).stdout
        assert all(request_id in text for request_id in IDS)  # the human report lists them
        b.start()
        async with b.client("bob") as bob:
            got = (await bob.call_tool("wait_for_messages", {"timeout_s": 10})).structured_content
            requests = [m for m in got["messages"] if m["kind"] == "request"]
            assert sorted(m["request_id"] for m in requests) == IDS
            for m in requests:
                done = await bob.call_tool(
                    "respond",
                    {
                        "request_id": m["request_id"],
                        "action": "accept",
                        "content": {"answer": f"answer to {m['request_id']}"},
                    },
                )
                assert not done.is_error, done.content
        async with b.client("alice") as alice:  # a new session of the asker
            for request_id in IDS[:4]:
                view = await alice.call_tool("get_request", {"request_id": request_id})
                out = view.structured_content
                assert out["status"] == "accepted", out
                assert out["content"] == {"answer": f"answer to {request_id}"}
            again = (await alice.call_tool("ask", _ask_args(IDS[4]))).structured_content
            assert again["status"] == "accepted"
            assert again["content"] == {"answer": f"answer to {IDS[4]}"}
        async with b.client("bob") as bob:  # the recipient may read it too
            view = await bob.call_tool("get_request", {"request_id": IDS[0]})
            assert view.structured_content["status"] == "accepted"
    finally:
        if b.proc is not None:
            b.stop()
    events = await read_events(b.db)
    created = Counter(r.data["request_id"] for r in events if r.type == REQUEST_CREATED)
    terminal = Counter(r.data["request_id"] for r in events if r.type in TERMINAL_TYPES)
    assert created == dict.fromkeys(IDS, 1)
    assert terminal == dict.fromkeys(IDS, 1)
    audit = lighthouse(
        "audit", "--db", str(b.db), "--request", IDS[4], "--format", "jsonl", cwd=tmp_path
    )
    life = [json.loads(line)["type"] for line in audit.stdout.splitlines() if line.strip()]
    assert life[0] == "RequestCreated" and life[-1] == "RequestAnswered", life
    assert "RequestDelivered" in life


async def test_foreign_reader_and_reused_id_get_clear_errors(tmp_path: Path) -> None:
    b = BridgeProcess(tmp_path)
    for name in ("alice", "bob", "carol"):
        b.add_agent(name)
    b.start()
    try:
        async with b.client("alice") as alice, b.client("carol") as carol:
            await alice.call_tool("ask", _ask_args("mine", wait=False))
            foreign = await carol.call_tool("get_request", {"request_id": "mine"})
            unknown = await carol.call_tool("get_request", {"request_id": "nothing"})
            assert foreign.is_error and unknown.is_error
            assert foreign.content[0].text == unknown.content[0].text
            stolen = await carol.call_tool("ask", _ask_args("mine", wait=False))
            assert stolen.is_error and "already used" in stolen.content[0].text
            changed = await alice.call_tool(
                "ask", _ask_args("mine", wait=False, message="something else")
            )
            assert changed.is_error and "different arguments" in changed.content[0].text
            bad = await alice.call_tool("ask", _ask_args("bad id!", wait=False))
            assert bad.is_error and "request_id" in bad.content[0].text
    finally:
        b.stop()
    created = await read_events(b.db, [REQUEST_CREATED])
    assert [r.data["request_id"] for r in created] == ["mine"]
