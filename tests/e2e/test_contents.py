"""Contents at rest, end to end: a real bridge process, SDK clients, the CLI as a user runs it.

A stolen database (and its WAL and nonce files) shows who talked to whom, not what was
said; `agents forget` erases one agent's contents while `verify` still passes; a wrong
master key stops the bridge with a clear message instead of a silent new key.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from bridge.sealing import ERASED
from tests.harness import SCHEMA, BridgeProcess, answer_next_request, lighthouse, read_events

QUESTION = "which vault holds the zebra-orchid prototype"
ANSWER = "vault-seven-under-the-lighthouse"
NOTE = "the orchid crates leave at dawn from pier nine"


def _strings(path: Path) -> str:
    """What `strings` finds in a file (the tool itself when installed)."""
    if shutil.which("strings"):
        return subprocess.run(
            ["strings", "-n", "6", str(path)], capture_output=True, text=True
        ).stdout
    raw = path.read_bytes()
    return "\n".join(p.decode() for p in __import__("re").findall(rb"[\x20-\x7e]{6,}", raw))


async def _ask_answered(bridge: BridgeProcess) -> dict:
    async with bridge.client("bob") as bob, bridge.client("alice") as alice:
        asking = asyncio.create_task(
            alice.call_tool(
                "ask", {"to": "bob", "message": QUESTION, "schema": SCHEMA, "timeout_s": 20}
            )
        )
        got = await bob.call_tool("wait_for_messages", {"timeout_s": 15})
        [item] = [m for m in got.structured_content["messages"] if m["kind"] == "request"]
        assert item["message"] == QUESTION  # the recipient reads it through the tools
        await bob.call_tool(
            "respond",
            {"request_id": item["request_id"], "action": "accept", "content": {"answer": ANSWER}},
        )
        result = await asking
    assert result.is_error is False
    assert result.structured_content["content"] == {"answer": ANSWER}  # and the asker
    return result.structured_content


async def test_database_wal_and_nonces_hold_no_contents(bridge: BridgeProcess) -> None:
    await _ask_answered(bridge)
    files = [
        p for p in bridge.workdir.iterdir() if p.is_file() and p.name.startswith("lighthouse.db")
    ]
    assert any(p.name.endswith("-wal") for p in files), files  # the WAL is checked too
    assert any(".nonces" in p.name for p in files), files
    for path in files:
        text = _strings(path)
        assert QUESTION not in text and ANSWER not in text, path
        assert "zebra-orchid" not in text and "vault-seven" not in text, path
    created = await read_events(bridge.db, ["RequestCreated"], opened=False)
    assert created[0].data["from"] == "alice" and created[0].data["to"] == "bob"  # who/whom
    assert created[0].data["sealed"]["size"] > 0


async def test_forget_erases_and_verify_still_passes(bridge: BridgeProcess) -> None:
    await _ask_answered(bridge)
    env = bridge.env
    out = lighthouse("agents", "forget", "alice", cwd=bridge.workdir, env=env, check=False)
    assert out.returncode == 2 and "--reason" in out.stderr  # a reason is required
    done = lighthouse(
        "agents", "forget", "alice", "--reason", "erasure request #7", cwd=bridge.workdir, env=env
    )
    assert json.loads(done.stdout)["erased_key_ids"][0].startswith("dk:alice:")
    again = lighthouse(
        "agents", "forget", "alice", "--reason", "twice", cwd=bridge.workdir, env=env, check=False
    )
    assert again.returncode == 1 and "no contents to erase" in again.stderr
    [forgotten] = await read_events(bridge.db, ["AgentForgotten"])
    assert forgotten.data["reason"] == "erasure request #7" and forgotten.actor != "alice"
    bridge.stop()
    db = ("--db", str(bridge.db))
    verify = lighthouse("verify", *db, cwd=bridge.workdir, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    check = lighthouse("contents", "check", *db, "--json", cwd=bridge.workdir)
    report = json.loads(check.stdout)
    assert report["erased"] == 1 and report["failures"] == []  # alice's question only
    assert report["sealed"] >= 2
    bridge.start()  # replayed with the key gone: alice's question reads [erased], no failure
    assert "does not open" not in bridge.log_path.read_text()


async def queue_and_answer(bob: Any, alice: Any) -> tuple[str, str]:
    """bob asks alice, who answers (a closed request holding alice's answer); then alice
    sends bob a note and asks him something he has not read yet (both in his mailbox).
    Returns (bob's request id, alice's open request id)."""
    asked = await bob.call_tool(
        "ask", {"to": "alice", "message": "where?", "schema": SCHEMA, "wait": False}
    )
    answered = asked.structured_content["request_id"]
    await answer_next_request(alice, ANSWER)
    got = await bob.call_tool("get_request", {"request_id": answered, "wait_s": 5})
    assert got.structured_content["content"] == {"answer": ANSWER}
    await alice.call_tool("send_message", {"to": "bob", "content": NOTE})
    pending = await alice.call_tool(
        "ask", {"to": "bob", "message": QUESTION, "schema": SCHEMA, "wait": False}
    )
    return answered, pending.structured_content["request_id"]


def erased_view(items: list[dict[str, Any]], answer: dict[str, Any]) -> bool:
    """What bob is handed after alice's forget: her note, her question and her answer all
    read [erased], and none of their text is anywhere in it."""
    text = json.dumps([items, answer])
    if NOTE in text or QUESTION in text or ANSWER in text:
        return False
    from_alice = {m["kind"]: m for m in items if m["from"] == "alice"}
    return (
        from_alice.get("message", {}).get("content") == ERASED
        and from_alice.get("request", {}).get("message") == ERASED
        and from_alice["request"]["schema"] == ERASED
        and answer["content"] == ERASED
    )


async def test_forget_erases_what_a_running_bridge_hands_out(bridge: BridgeProcess) -> None:
    async with bridge.client("bob") as bob, bridge.client("alice") as alice:
        answered, pending = await queue_and_answer(bob, alice)
    forget = ("agents", "forget", "alice", "--reason", "erasure request #9")
    refused = lighthouse(*forget, cwd=bridge.workdir, env=bridge.env, check=False)
    assert refused.returncode == 1 and "--force" in refused.stderr  # alice's ask is open
    lighthouse(*forget, "--force", cwd=bridge.workdir, env=bridge.env)
    async with bridge.client("bob") as bob:  # the same bridge process, never restarted
        got = await bob.call_tool("wait_for_messages", {"timeout_s": 5})
        answer = await bob.call_tool("get_request", {"request_id": answered})
        items = got.structured_content["messages"]
        assert erased_view(items, answer.structured_content), (items, answer)
        accept = await bob.call_tool(
            "respond", {"request_id": pending, "action": "accept", "content": {"answer": "?"}}
        )
        assert accept.is_error and "question_erased" in accept.content[0].text
        declined = await bob.call_tool("respond", {"request_id": pending, "action": "decline"})
        assert declined.structured_content["status"] == "declined"


async def test_forget_refuses_while_the_agent_has_open_requests(bridge: BridgeProcess) -> None:
    async with bridge.client("alice") as alice:
        asking = asyncio.create_task(
            alice.call_tool(
                "ask", {"to": "bob", "message": QUESTION, "schema": SCHEMA, "timeout_s": 20}
            )
        )
        status, body = 0, {}
        for _ in range(100):  # until the request is open
            status, body = bridge.admin("POST", "/admin/agents/alice/forget", {"reason": "x"})
            if status == 409 and "open request" in body["message"]:
                break
            await asyncio.sleep(0.05)
        assert status == 409 and "open request" in body["message"] and "--force" in body["message"]
        asking.cancel()
    status, body = bridge.admin("POST", "/admin/agents/alice/forget", {"reason": ""})
    assert status == 409 and "reason" in body["message"]
    status, body = bridge.admin("POST", "/admin/agents/nobody/forget", {"reason": "x"})
    assert status == 409 and "no agent" in body["message"]


def test_wrong_or_missing_master_key_refuses_to_start(tmp_path: Path) -> None:
    bridge = BridgeProcess(tmp_path)
    bridge.add_agent("alice")
    key_file = tmp_path / "lighthouse.db.keys" / "master.key"
    original = key_file.read_bytes()
    key_file.write_bytes(base64.b64encode(os.urandom(32)) + b"\n")
    db = ("--db", str(bridge.db))
    out = lighthouse("serve", "--port", "1", *db, cwd=tmp_path, check=False, timeout=60)
    assert out.returncode == 1
    assert "master key does not open the vault" in out.stderr
    assert "Traceback" not in out.stderr
    key_file.unlink()
    out = lighthouse("serve", "--port", "1", *db, cwd=tmp_path, check=False, timeout=60)
    assert out.returncode == 1 and "is missing" in out.stderr and "Traceback" not in out.stderr
    assert not key_file.exists()  # never a silent new key
    key_file.write_bytes(original)
    os.chmod(key_file, 0o600)
    rotated = lighthouse("keys", "rotate-master", *db, cwd=tmp_path)
    assert "no event changed" in rotated.stdout
    assert key_file.read_bytes() != original
    bridge.start()
    assert bridge.health()  # the rotated key opens the vault
    bridge.stop()


async def test_audit_opens_contents_for_operators_and_records_it(bridge: BridgeProcess) -> None:
    await _ask_answered(bridge)
    args = ("audit", "--type", "RequestCreated", "--format", "jsonl")
    stored = lighthouse(*args, cwd=bridge.workdir, env=bridge.env).stdout
    assert QUESTION not in stored and '"ct"' in stored  # as stored: ciphertext only
    opened = lighthouse(*args, "--contents", cwd=bridge.workdir, env=bridge.env).stdout
    [event] = [json.loads(line) for line in opened.splitlines()]
    assert event["data"]["message"] == QUESTION
    [read] = await read_events(bridge.db, ["ContentsRead"])
    assert read.data["positions"] == [event["position"]] and read.data["count"] == 1
    redacted = lighthouse(*args, "--redact", cwd=bridge.workdir, env=bridge.env).stdout
    assert QUESTION not in redacted and '"ct"' not in redacted and '"size"' in redacted
    assert len(await read_events(bridge.db, ["ContentsRead"])) == 1  # redacted: no read
    bridge.stop()
    direct = lighthouse(
        *args, "--contents", "--db", str(bridge.db), cwd=bridge.workdir, check=False
    )
    assert direct.returncode != 0 and "running bridge" in direct.stderr
