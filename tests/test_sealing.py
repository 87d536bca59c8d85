"""The encoding stage (bridge/sealing.py, through bridge/log.py): contents sealed on append,
opened on replay, bound to their place, erasable by key destruction; real SQLite store."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from bridge.domain import AGENT_FORGOTTEN, Fact
from bridge.log import Log
from bridge.sealing import ERASED, UNREADABLE, Sealer, SealError, redacted
from events import ANY_VERSION, NewEvent, SqliteEventStore, StoreConfig
from events.verify import verify_with_config
from security import DataKeys, MasterKeyError, SQLiteSecretVault

QUESTION = "what is the launch code for project zebra"
ANSWER = "the code is purple-elephant-42"


class Facts:
    def __init__(self) -> None:
        self.seen: list[Fact] = []

    def apply(self, fact: Fact) -> None:
        self.seen.append(fact)

    def of(self, type_: str) -> list[dict[str, Any]]:
        return [f.data for f in self.seen if f.type == type_]


class Env:
    def __init__(self, tmp: Path) -> None:
        self.db = tmp / "store.db"
        self.master = os.urandom(32)
        self.failures: list[Any] = []
        self.seal_failures = 0

    async def open(self, master: bytes | None = None) -> tuple[Log, Facts, SqliteEventStore]:
        store = await SqliteEventStore.open(StoreConfig(path=self.db))
        self.vault = SQLiteSecretVault(self.db, master or self.master)
        self.vault.check()

        def failed_seal() -> None:
            self.seal_failures += 1

        sealer = Sealer(
            store.store_id,
            DataKeys(self.vault),
            on_seal_failure=failed_seal,
            on_open_failure=self.failures.append,
        )
        facts = Facts()
        log = Log(store, [facts], sealer=sealer)
        await log.replay()
        return log, facts, store

    async def close(self, store: SqliteEventStore) -> None:
        self.vault.close()
        await store.close()


def _created(request_id: str, message: str = QUESTION) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "from": "alice",
        "to": "bob",
        "recipient": "bob",
        "message": message,
        "schema": {"type": "object", "properties": {"answer": {"type": "string"}}},
        "timeout_s": 10,
    }


async def _ask_and_answer(log: Log, request_id: str, message: str = QUESTION) -> None:
    stream = f"request-{request_id}"
    await log.append(
        stream,
        [NewEvent(type="RequestCreated", data=_created(request_id, message), actor="alice")],
        expected_version=0,
    )
    await log.record(stream, "RequestRouted", {"request_id": request_id}, actor="alice")
    await log.record(
        stream,
        "RequestAnswered",
        {"request_id": request_id, "by": "bob", "content": {"answer": ANSWER}},
        actor="bob",
    )


def _raw(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in db.parent.iterdir() if p.is_file())


async def test_contents_are_sealed_in_the_store_and_open_on_replay(tmp_path: Path) -> None:
    env = Env(tmp_path)
    log, facts, store = await env.open()
    await _ask_and_answer(log, "r1")
    live = facts.of("RequestCreated")[0]
    assert live["message"] == QUESTION  # projections get plaintext at once
    stored = {r.type: r for r in await store.read_all(1, limit=None)}
    created = stored["RequestCreated"]
    assert "message" not in created.data and "schema" not in created.data
    assert created.data["from"] == "alice" and created.data["request_id"] == "r1"  # clear
    assert created.data["sealed"]["fields"] == ["message", "schema"]
    assert created.data["sealed"]["size"] > len(QUESTION)
    assert created.data["sealed"]["key"].startswith("dk:alice:")
    assert stored["RequestAnswered"].data["sealed"]["key"].startswith("dk:bob:")
    await env.close(store)
    raw = _raw(env.db)
    assert QUESTION.encode() not in raw and ANSWER.encode() not in raw

    _, facts2, store2 = await env.open()
    assert facts2.of("RequestCreated")[0]["message"] == QUESTION
    assert facts2.of("RequestCreated")[0]["schema"]["type"] == "object"
    assert facts2.of("RequestAnswered")[0]["content"] == {"answer": ANSWER}
    assert env.failures == []
    assert (
        await verify_with_config(store2, store2.config)
    ).ok  # the chain covers the ciphertext; no content key
    await env.close(store2)


async def test_moved_ciphertext_is_reported_by_position_and_others_open(tmp_path: Path) -> None:
    env = Env(tmp_path)
    log, _, store = await env.open()
    for rid in ("r1", "r2", "r3"):
        await _ask_and_answer(log, rid, message=f"{QUESTION} {rid}")
    rows = {
        r.data["request_id"]: r
        for r in await store.read_all(1, limit=None, types=["RequestCreated"])
    }
    await env.close(store)
    source, target = rows["r1"], rows["r2"]
    moved = {**target.data, "sealed": source.data["sealed"]}  # r1's ciphertext in r2's record
    conn = sqlite3.connect(env.db)
    conn.execute("DROP TRIGGER IF EXISTS events_no_update")
    conn.execute(
        "UPDATE events SET data = ? WHERE position = ?",
        (json.dumps(moved, sort_keys=True, separators=(",", ":")), target.position),
    )
    conn.commit()
    conn.close()

    _, facts, store = await env.open()
    assert [f.position for f in env.failures] == [target.position]
    assert "does not decrypt here" in env.failures[0].reason
    by_id = {d["request_id"]: d for d in facts.of("RequestCreated")}
    assert by_id["r2"]["message"] == UNREADABLE
    assert by_id["r1"]["message"] == f"{QUESTION} r1"  # the others are not stopped
    assert by_id["r3"]["message"] == f"{QUESTION} r3"
    await env.close(store)


async def test_forget_erases_one_agents_contents_and_the_chain_verifies(tmp_path: Path) -> None:
    env = Env(tmp_path)
    log, _, store = await env.open()
    await _ask_and_answer(log, "r1")
    ids = log.sealer.keys.key_ids("alice")
    await log.record(
        "agent-alice", AGENT_FORGOTTEN, {"agent": "alice", "reason": "gdpr", "key_ids": ids}
    )
    assert log.sealer.keys.destroy(ids) == ids
    await env.close(store)

    _, facts, store = await env.open()
    created = facts.of("RequestCreated")[0]
    assert created["message"] == ERASED and created["schema"] == ERASED
    assert created["from"] == "alice"  # who talked to whom stays
    assert facts.of("RequestAnswered")[0]["content"] == {"answer": ANSWER}  # bob's: untouched
    assert env.failures == []  # erased is not a failure
    assert (await verify_with_config(store, store.config)).ok
    await env.close(store)


async def test_events_written_before_encryption_stay_readable(tmp_path: Path) -> None:
    env = Env(tmp_path)
    store = await SqliteEventStore.open(StoreConfig(path=env.db))
    plain = Log(store, [])
    await plain.append(
        "request-old", [NewEvent(type="RequestCreated", data=_created("old"), actor="alice")]
    )
    await store.close()
    _, facts, store = await env.open()
    assert facts.of("RequestCreated")[0]["message"] == QUESTION
    assert redacted("RequestCreated", facts.of("RequestCreated")[0])["redacted"]["fields"] == [
        "message",
        "schema",
    ]
    assert env.failures == []
    await env.close(store)


async def test_any_version_append_reseals_when_the_stream_moved(tmp_path: Path) -> None:
    env = Env(tmp_path)
    log, _, store = await env.open()
    await _ask_and_answer(log, "r1")
    await store.append("request-r1", [NewEvent(type="Other", actor="x")])  # behind the Log
    await log.append(
        "request-r1",
        [
            NewEvent(
                type="AnswerRejected", data={"request_id": "r1", "content": "late"}, actor="carol"
            )
        ],
        expected_version=ANY_VERSION,
    )
    await env.close(store)
    _, facts, store = await env.open()
    assert facts.of("AnswerRejected")[0]["content"] == "late"
    assert env.failures == []
    await env.close(store)


async def test_encryption_failure_fails_the_append_and_writes_nothing(tmp_path: Path) -> None:
    env = Env(tmp_path)
    log, _, store = await env.open()
    env.vault.close()  # the vault cannot make alice's first key
    with pytest.raises(SealError):
        await log.append(
            "request-r1", [NewEvent(type="RequestCreated", data=_created("r1"), actor="alice")]
        )
    assert env.seal_failures == 1
    assert await store.read_all(1, limit=None) == []
    await store.close()


async def test_wrong_master_key_is_refused(tmp_path: Path) -> None:
    env = Env(tmp_path)
    log, _, store = await env.open()
    await _ask_and_answer(log, "r1")
    await env.close(store)
    with pytest.raises(MasterKeyError, match="does not open the vault"):
        await env.open(master=os.urandom(32))


async def test_rotate_master_rewraps_without_touching_events(tmp_path: Path) -> None:
    env = Env(tmp_path)
    log, _, store = await env.open()
    await _ask_and_answer(log, "r1")
    before = [r.data for r in await store.read_all(1, limit=None)]
    new = os.urandom(32)
    assert env.vault.rewrap(new) == 2
    await env.close(store)
    with pytest.raises(MasterKeyError):
        SQLiteSecretVault(env.db, env.master).check()
    _, facts, store = await env.open(master=new)
    assert [r.data for r in await store.read_all(1, limit=None)] == before
    assert facts.of("RequestCreated")[0]["message"] == QUESTION
    await env.close(store)
