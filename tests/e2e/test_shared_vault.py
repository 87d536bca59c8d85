"""Two bridges on one PostgreSQL store with **separate data dirs**: the vault is shared.

Real processes: `lighthouse serve --database-url …` in two working directories that share
nothing but the database and the key files every bridge must carry (copied once, as an
operator would). An agent added on bridge A signs in on bridge B; a rotation and a
revocation on A take effect on B within a second; `agents forget` on A erases the agent's
contents on B too; a bridge with another master key is refused before it writes anything.

A 2026-07-28 agent waiting on A is reachable from B: the bridges share who they saw waiting
(table `lh_modern_presence`, on the heartbeat tick), so a question asked on B is offered
on A as `input_required` and the log says `elicitation`, not a false `offline`; one never
taken ends once, by its deadline; the agent's flag off still sends it to the mailbox.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.attacks.conftest import RawClient, initialize_body
from tests.harness import (
    SCHEMA,
    Agent,
    BridgeProcess,
    answer_next_request,
    free_port,
    lighthouse,
)
from tests.pgtools import drop_created, fresh_database

SHARED_KEY_FILES = ("master.key", "chain.key", "checkpoint.key", "checkpoint.pub")
"""What every bridge of one store must carry (README "Running several bridges");
`admin.token` may differ per bridge, and the requestState key is in the shared vault."""
QUESTION = "where did the heron land"
FORMS = {"elicitation": {"form": {}}}  # what a 2026-07-28 client that takes forms declares


@pytest.fixture(scope="module", autouse=True)
def _drop_databases() -> Iterator[None]:
    yield
    drop_created()


def copy_key_dir(source: BridgeProcess, target: Path, *, replace: bool = False) -> None:
    """The key files every bridge must carry, from *source*'s key dir (as an operator
    copies them; `replace` overwrites an older copy, after `keys rotate-master`)."""
    keys = target / "lighthouse.db.keys"
    keys.mkdir(mode=0o700, exist_ok=replace)
    for name in SHARED_KEY_FILES:
        shutil.copy2(source.workdir / "lighthouse.db.keys" / name, keys / name)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BridgeProcess, ...]]:
    url = fresh_database("vault")
    extra = ("--database-url", url, "--key-grace", "0")
    a = BridgeProcess(tmp_path_factory.mktemp("bridge-a"), extra_args=extra).start()
    b = BridgeProcess(tmp_path_factory.mktemp("bridge-b"), extra_args=extra)
    try:
        copy_key_dir(a, b.workdir)
        b.start()
        yield a, b
    finally:
        for bridge in (a, b):
            if bridge.proc is not None:
                bridge.stop()


def _url(bridge: BridgeProcess) -> str:
    return bridge.extra_args[bridge.extra_args.index("--database-url") + 1]


def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> float:
    """Seconds until `predicate()` held (AssertionError after `timeout`)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.01)
    raise AssertionError(f"not seen within {timeout} s")


def add_on(a: BridgeProcess, b: BridgeProcess, name: str) -> Agent:
    """Register *name* through A's admin API; both test handles know its secret."""
    status, created = a.admin("POST", "/admin/agents", {"name": name})
    assert status == 201, created
    agent = Agent(created["agent"], created["key_id"], created["secret"])
    a.agents[name] = b.agents[name] = agent
    _until(lambda: any(x["agent"] == name for x in b.admin("GET", "/admin/agents")[1]["agents"]))
    return agent


def _question_of(bridge: BridgeProcess, asker: str) -> str:
    status, page = bridge.admin("GET", "/admin/events?type=RequestCreated&contents=open")
    assert status == 200, page
    [data] = [e["data"] for e in page["events"] if e["data"]["from"] == asker]
    return data["message"]


async def _ask(asking: BridgeProcess, answering: BridgeProcess, asker: str, to: str) -> dict:
    async with answering.client(to) as recipient, asking.client(asker) as caller:
        call = asyncio.create_task(
            caller.call_tool("ask", {"to": to, "message": QUESTION, "schema": SCHEMA})
        )
        await answer_next_request(recipient, "on the lighthouse roof")
        result = await call
    assert result.is_error is False, result
    return result.structured_content


async def test_an_agent_added_on_one_bridge_asks_through_the_other(pair) -> None:
    a, b = pair
    assert b.workdir != a.workdir and not (b.workdir / "lighthouse.db").exists()
    add_on(a, b, "alice")
    add_on(a, b, "bob")
    # alice signs on B (her secret only ever written by A), bob answers on A.
    answer = await _ask(b, a, "alice", "bob")
    assert answer["content"] == {"answer": "on the lighthouse roof"}
    # alice's data key was made by B when it sealed her question; A opens it from the vault.
    assert _question_of(a, "alice") == QUESTION


async def test_a_2026_question_offered_by_one_bridge_is_answered_through_the_other(pair) -> None:
    """The requestState A sealed opens on B: its key is in the shared vault, not a file."""
    a, b = pair
    assert not (b.workdir / "lighthouse.db.keys" / "request_state.key").exists()
    add_on(a, b, "gina")
    ivan = add_on(a, b, "ivan")
    on_a, on_b = _modern(a, ivan), _modern(b, ivan)
    await on_a.initialize(FORMS)
    await on_b.initialize(FORMS)
    args = {"timeout_s": 10, "max": 1}
    try:
        async with a.client("gina") as gina:  # asked where ivan waits: A offers, B takes
            waiting = asyncio.create_task(on_a.call_tool("wait_for_messages", args))
            await asyncio.sleep(0.3)  # ivan's wait is held on A
            call = asyncio.create_task(
                gina.call_tool("ask", {"to": "ivan", "message": QUESTION, "schema": SCHEMA})
            )
            offer = await waiting
            assert offer["resultType"] == "input_required", offer
            [(rid, _)] = offer["inputRequests"].items()
            answered = await on_b.call_tool(
                "wait_for_messages",
                args,
                inputResponses={rid: {"action": "accept", "content": {"answer": "B took it"}}},
                requestState=offer["requestState"],
            )
            assert answered["structuredContent"]["answered"], answered
            result = await call
    finally:
        on_a.close()
        on_b.close()
    assert result.is_error is False and result.structured_content["content"] == {
        "answer": "B took it"
    }


def _modern(bridge: BridgeProcess, agent: Agent) -> Any:
    """A raw 2026-07-28 client of *agent* on *bridge* (`benchmarks.light_load`)."""
    from benchmarks.light_load import MODERN_VERSION, McpClient, Target

    creds = {"name": agent.name, "key_id": agent.key_id, "secret": agent.secret}
    return McpClient(Target.of(bridge.mcp_url, signed=True, bare=False), creds, MODERN_VERSION)


async def _recipient_on(
    a: BridgeProcess, b: BridgeProcess, asker: str, name: str
) -> tuple[Any, Callable[[], Awaitable[None]]]:
    """*asker* and *name* added; a 2026-07-28 client of *name* on A that takes forms, and
    what waits until B has learnt of its next wait on A (shared on the heartbeat ticks,
    counted per node in B's `/health`)."""
    add_on(a, b, asker)
    client = _modern(a, add_on(a, b, name))
    await client.initialize(FORMS)
    node = a.health()["node"]["id"]

    def seen() -> int:
        return b.health()["node"]["remote_modern"].get(node, 0)

    # The count is per node, not per agent: an earlier test's agent may still be on its
    # way to B (shared on a later tick). Start from a count that held for three ticks.
    before, held_since = seen(), time.monotonic()
    while time.monotonic() - held_since < 3.0:
        await asyncio.sleep(0.2)
        if (now := seen()) != before:
            before, held_since = now, time.monotonic()

    async def shared() -> None:
        await asyncio.to_thread(_until, lambda: seen() > before)

    return client, shared


def _facts(bridge: BridgeProcess, kind: str, request_id: str) -> list[dict[str, Any]]:
    status, page = bridge.admin("GET", f"/admin/events?type={kind}")
    assert status == 200, page
    return [e["data"] for e in page["events"] if e["data"].get("request_id") == request_id]


async def test_a_question_asked_on_one_bridge_is_offered_where_the_recipient_waits(pair) -> None:
    a, b = pair
    xavi, shared = await _recipient_on(a, b, "yara", "xavi")
    args = {"timeout_s": 20, "max": 1}
    try:
        async with b.client("yara") as yara:
            waiting = asyncio.create_task(xavi.call_tool("wait_for_messages", args))
            await shared()
            call = asyncio.create_task(
                yara.call_tool("ask", {"to": "xavi", "message": QUESTION, "schema": SCHEMA})
            )
            offer = await asyncio.wait_for(waiting, 15)
            assert offer["resultType"] == "input_required", offer
            [(rid, asked)] = offer["inputRequests"].items()
            assert asked["params"]["message"] == QUESTION
            answered = await xavi.call_tool(  # the same call retried, with the answer
                "wait_for_messages",
                args,
                inputResponses={rid: {"action": "accept", "content": {"answer": "seaward"}}},
                requestState=offer["requestState"],
            )
            assert answered["structuredContent"]["answered"] == [
                {"request_id": rid, "status": "accepted"}
            ]
            result = await asyncio.wait_for(call, 10)
    finally:
        xavi.close()
    assert result.is_error is False, result
    assert result.structured_content["content"] == {"answer": "seaward"}
    assert result.structured_content["path"] == "elicitation"
    [routed] = _facts(b, "RequestRouted", rid)
    assert routed["path"] == "elicitation" and routed["reason"] == "eligible"
    assert "node" not in routed  # offered by whichever bridge's wait xavi holds
    assert _facts(b, "RequestFellBack", rid) == []
    [delivered] = _facts(a, "RequestDelivered", rid)
    assert delivered["path"] == "elicitation"


async def test_a_question_its_recipient_never_takes_ends_once_by_its_deadline(pair) -> None:
    """Asked within the window after the recipient's last wait on the other bridge: the
    elicitation path (as on one bridge), no `no_stream` fallback on the asking bridge for
    want of a session there, and one terminal fact although both bridges armed a timer."""
    a, b = pair
    xena, shared = await _recipient_on(a, b, "yuri", "xena")
    try:
        done = await xena.call_tool("wait_for_messages", {"timeout_s": 1.5, "max": 1})
        assert done["structuredContent"]["messages"] == []
    finally:
        xena.close()
    await shared()
    async with b.client("yuri") as yuri:
        result = await yuri.call_tool(
            "ask", {"to": "xena", "message": QUESTION, "schema": SCHEMA, "timeout_s": 3}
        )
    assert result.structured_content["status"] == "timeout", result
    rid = result.structured_content["request_id"]
    [routed] = _facts(b, "RequestRouted", rid)
    assert routed["path"] == "elicitation"
    assert _facts(b, "RequestFellBack", rid) == []
    await asyncio.sleep(0.5)  # the other bridge's timer fired too: its append lost
    assert len(_facts(a, "RequestTimedOut", rid)) == 1


async def test_the_recipients_flag_off_sends_it_to_the_mailbox_it_waits_on(pair) -> None:
    a, b = pair
    assert b.admin("POST", "/feature_flags", {"overrides": {"xiao": False}})[0] == 200
    xiao, shared = await _recipient_on(a, b, "yves", "xiao")
    _until(lambda: a.health()["flags"] == b.health()["flags"])
    try:
        async with b.client("yves") as yves:
            waiting = asyncio.create_task(
                xiao.call_tool("wait_for_messages", {"timeout_s": 20, "max": 1})
            )
            await shared()
            pending = await yves.call_tool(
                "ask", {"to": "xiao", "message": QUESTION, "schema": SCHEMA, "wait": False}
            )
            handed = await asyncio.wait_for(waiting, 15)
    finally:
        xiao.close()
        b.admin("POST", "/feature_flags", {"overrides": {"xiao": None}})
    rid = pending.structured_content["request_id"]
    assert handed["resultType"] == "complete", handed
    [item] = handed["structuredContent"]["messages"]
    assert item["request_id"] == rid
    [fell] = _facts(b, "RequestFellBack", rid)
    assert fell["path"] == "legacy" and fell["cause"] == "flag_off"


def test_rotation_and_revocation_on_one_bridge_hold_on_the_other_within_a_second(pair) -> None:
    a, b = pair
    old = add_on(a, b, "carol")
    raw = RawClient(b)

    def status_on_b(agent: Agent) -> int:
        request = raw.build("carol", initialize_body(), key_id=agent.key_id, secret=_secret(agent))
        return raw.send(request).status_code

    try:
        assert status_on_b(old) == 200
        status, rotated = a.admin("POST", "/admin/agents/carol/rotate", {})
        assert status == 200, rotated
        new = Agent("carol", rotated["key_id"], rotated["secret"])
        took = _until(lambda: status_on_b(new) == 200)
        assert took < 1.0, f"the new key signed in on B after {took:.2f} s"
        assert status_on_b(old) == 401  # grace 0: the rotated-out key is dead on B too
        status, _ = a.admin("POST", "/admin/agents/carol/revoke", {})
        assert status == 200
        took = _until(lambda: status_on_b(new) == 401)
        assert took < 1.0, f"the revocation reached B after {took:.2f} s"
    finally:
        raw.close()


def _secret(agent: Agent) -> bytes:
    from security import decode_secret

    return decode_secret(agent.secret)


async def test_forget_on_one_bridge_erases_on_the_other(pair) -> None:
    a, b = pair
    add_on(a, b, "dave")
    add_on(a, b, "erin")
    await _ask(a, a, "dave", "erin")  # dave's data key made and used on A
    assert _question_of(b, "dave") == QUESTION  # B opened it: the key is in B's cache now
    status, done = a.admin("POST", "/admin/agents/dave/forget", {"reason": "erasure #12"})
    assert status == 200, done
    took = _until(lambda: _question_of(b, "dave") == "[erased]")
    assert took < 1.0, f"B read dave's contents {took:.2f} s after the forget"
    assert _question_of(a, "dave") == "[erased]"
    with psycopg.connect(_url(a)) as conn:
        left = conn.execute("SELECT count(*) FROM key_vault WHERE key_id LIKE 'dk:dave:%'")
        assert left.fetchone() == (0,)
    b.stop()
    b.start()  # replayed with the key gone everywhere: erased, not a failure
    assert _question_of(b, "dave") == "[erased]"
    assert "does not open" not in b.log_path.read_text()


def test_a_bridge_with_another_master_key_is_refused(pair, tmp_path: Path) -> None:
    a, _ = pair
    copy_key_dir(a, tmp_path)
    key_file = tmp_path / "lighthouse.db.keys" / "master.key"
    key_file.write_bytes(base64.b64encode(os.urandom(32)) + b"\n")
    url = _url(a)
    with psycopg.connect(url) as conn:
        before = conn.execute("SELECT max(position) FROM events").fetchone()
    out = lighthouse(
        "serve", "--port", "1", "--database-url", url, cwd=tmp_path, check=False, timeout=60
    )
    assert out.returncode == 1, out.stderr
    assert "master key does not open the vault" in out.stderr
    assert "copy master.key" in out.stderr and "Traceback" not in out.stderr
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT max(position) FROM events").fetchone() == before
    key_file.unlink()
    out = lighthouse(
        "serve", "--port", "1", "--database-url", url, cwd=tmp_path, check=False, timeout=60
    )
    assert out.returncode == 1 and "is missing" in out.stderr and "Traceback" not in out.stderr
    assert not key_file.exists()  # never a new key beside the shared vault


def test_another_master_key_is_refused_by_a_vault_without_secrets(tmp_path: Path) -> None:
    url = fresh_database("vault")
    first = BridgeProcess(tmp_path / "a", extra_args=("--database-url", url))
    first.workdir.mkdir()
    first.start()
    first.stop()  # the vault is initialized (key check row) but holds no agent's secret
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT key_id FROM key_vault").fetchall()
        assert rows == [("rs:request_state",)]  # only the requestState key, made by `serve`
        assert conn.execute("SELECT count(*) FROM key_vault_check").fetchone() == (1,)
        before = conn.execute("SELECT max(position) FROM events").fetchone()
    second = tmp_path / "b"
    second.mkdir()
    copy_key_dir(first, second)
    (second / "lighthouse.db.keys" / "master.key").write_bytes(
        base64.b64encode(os.urandom(32)) + b"\n"
    )
    out = lighthouse(
        "serve", "--port", "1", "--database-url", url, cwd=second, check=False, timeout=60
    )
    assert out.returncode == 1 and "key check fails" in out.stderr, out.stderr
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT max(position) FROM events").fetchone() == before


def test_the_command_line_works_on_the_shared_vault(tmp_path: Path) -> None:
    """Offline commands with `--database-url` (no bridge at LIGHTHOUSE_URL): agents,
    contents check, forget and rotate-master act on the PostgreSQL vault."""
    url = fresh_database("vault")
    here = tmp_path / "operator"
    here.mkdir()
    env = {"LIGHTHOUSE_URL": f"http://127.0.0.1:{free_port()}"}  # nobody answers there

    def cli(*args: str, check: bool = True) -> Any:
        return lighthouse(*args, "--database-url", url, cwd=here, env=env, check=check)

    assert "applied migrations [1, 2, 3, 4]" in cli("migrate").stdout
    agents = {n: json.loads(cli("agents", "add", n).stdout) for n in ("alice", "bob")}
    assert [a["agent"] for a in json.loads(cli("agents", "list", "--json").stdout)["agents"]] == [
        "alice",
        "bob",
    ]
    bridge = BridgeProcess(tmp_path / "bridge", extra_args=("--database-url", url))
    bridge.workdir.mkdir()
    copy_key_dir(BridgeProcess(here), bridge.workdir)
    for name, created in agents.items():
        bridge.agents[name] = Agent(name, created["key_id"], created["secret"])
    bridge.start()
    try:
        asyncio.run(_ask(bridge, bridge, "alice", "bob"))
        refused = cli("keys", "rotate-master", check=False)
        assert refused.returncode == 1 and "bridges of this store are running" in refused.stderr
    finally:
        bridge.stop()
    report = json.loads(cli("contents", "check", "--json").stdout)
    assert report["sealed"] == 2 and report["failures"] == [] and report["erased"] == 0
    forgot = json.loads(cli("agents", "forget", "alice", "--reason", "erasure #13").stdout)
    assert forgot["erased_key_ids"][0].startswith("dk:alice:")
    report = json.loads(cli("contents", "check", "--json").stdout)
    assert report["erased"] == 1 and report["failures"] == []
    rotated = cli("keys", "rotate-master")
    # bob's secret and data key, alice's secret (her data key is gone), the requestState key
    assert "re-wrapped 4 key(s)" in rotated.stdout and "copy" in rotated.stdout
    out = lighthouse("serve", "--port", "1", "--database-url", url, cwd=bridge.workdir, check=False)
    assert out.returncode == 1 and "master key does not open the vault" in out.stderr
    copy_key_dir(BridgeProcess(here), bridge.workdir, replace=True)  # the new key, everywhere
    bridge.start()
    try:
        assert _question_of(bridge, "alice") == "[erased]"
    finally:
        bridge.stop()
    rotated_key = json.loads(cli("agents", "rotate-key", "bob").stdout)
    assert rotated_key["previous_key_ids"] == [agents["bob"]["key_id"]]
    assert json.loads(cli("agents", "revoke", "bob").stdout)["revoked"] is True


async def test_a_local_vault_of_the_previous_release_is_moved_at_start(tmp_path: Path) -> None:
    """A PostgreSQL deployment of the previous release kept its secrets in the local
    SQLite vault (`--db`); the first start of this release moves them and records it."""
    url = fresh_database("vault")
    bridge = BridgeProcess(tmp_path, extra_args=("--database-url", url))
    bridge.start()
    for name in ("alice", "bob"):
        status, created = bridge.admin("POST", "/admin/agents", {"name": name})
        assert status == 201
        bridge.agents[name] = Agent(name, created["key_id"], created["secret"])
    bridge.stop()
    # As the previous release left it: the rows in the local file, none in PostgreSQL.
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(  # that release kept the requestState key in a file
            "SELECT key_id, nonce, ciphertext, created FROM key_vault"
            " WHERE key_id <> 'rs:request_state'"
        ).fetchall()
        conn.execute("DELETE FROM key_vault")
        conn.execute("DELETE FROM key_vault_check")
    local = sqlite3.connect(bridge.db)
    local.execute(
        "CREATE TABLE key_vault (key_id TEXT PRIMARY KEY, nonce BLOB NOT NULL,"
        " ciphertext BLOB NOT NULL, created REAL NOT NULL)"
    )
    local.executemany("INSERT INTO key_vault VALUES (?, ?, ?, ?)", rows)
    local.commit()
    bridge.start()
    try:
        answer = await _ask(bridge, bridge, "alice", "bob")  # both sign in: secrets moved
        assert answer["content"] == {"answer": "on the lighthouse roof"}
        status, page = bridge.admin("GET", "/admin/events?type=VaultImported")
        [event] = page["events"]
        assert event["data"]["source"] == str(bridge.db)
        assert sorted(event["data"]["imported_key_ids"]) == sorted(r[0] for r in rows)
        assert local.execute("SELECT count(*) FROM key_vault").fetchone() == (0,)
        assert "moved 2 wrapped secret(s)" in bridge.log_path.read_text()
    finally:
        local.close()
        bridge.stop()
    bridge.start()  # once: nothing left to move, nothing recorded again
    try:
        _, page = bridge.admin("GET", "/admin/events?type=VaultImported")
        assert len(page["events"]) == 1
    finally:
        bridge.stop()
