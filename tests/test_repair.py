"""Consistency repair on stores with crafted histories: what it appends, and what it refuses.

Histories are written through the bridge's own log (as a crashed bridge would have left
them), then repair runs on the stopped store; assertions are on the events in the file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest

from bridge.app import open_bridge
from bridge.config import Settings
from bridge.domain import (
    DAMAGE_ACCEPTED,
    REPAIR_COMPLETED,
    REQUEST_ANSWERED,
    REQUEST_CREATED,
    REQUEST_EXPIRED,
    REQUEST_FELL_BACK,
    REQUEST_ROUTED,
    SESSION_CLOSED,
    SESSION_OPENED,
    TERMINAL_TYPES,
    request_stream,
    session_stream,
)
from bridge.repair import RepairReport, rebuild, render, repair_store
from events import Record, SqliteEventStore, StoreConfig
from tests.harness import SCHEMA, lighthouse, read_events

HOUR = 3600.0


@dataclasses.dataclass
class Crafted:
    """A stopped store with a known set of open and closed requests."""

    db: Path
    ids: dict[str, str]

    @property
    def config(self) -> StoreConfig:
        return Settings(db=self.db).store_config()


async def _ask_facts(
    log: Any, recipient: str, path: str | None, deadline: float, *, terminal: str | None = None
) -> str:
    """Append what `Router.ask` appends (created + routed), and optionally a terminal fact."""
    rid = uuid.uuid4().hex
    created = {
        "request_id": rid,
        "from": "alice",
        "to": recipient,
        "recipient": recipient,
        "message": "q?",
        "schema": SCHEMA,
        "timeout_s": 5.0,
        "deadline": deadline,
    }
    facts: list[tuple[str, dict[str, Any]]] = [(REQUEST_CREATED, created)]
    if path == "elicitation":
        routed = {"request_id": rid, "recipient": recipient, "path": path, "reason": "eligible"}
        facts.append((REQUEST_ROUTED, routed))
    elif path == "legacy":
        fell = {"request_id": rid, "recipient": recipient, "path": path, "cause": "flag_off"}
        facts.append((REQUEST_FELL_BACK, fell))
    if terminal is not None:
        facts.append((terminal, {"request_id": rid, "by": recipient, "content": {"answer": "x"}}))
    await log.append_events(request_stream(rid), "alice", facts, expected_version=0)
    return rid


async def _craft(tmp_path: Path) -> Crafted:
    """Every kind of open request a crash can leave, plus a stale session."""
    db = tmp_path / "lighthouse.db"
    bridge = await open_bridge(Settings(db=db))
    try:
        for name in ("alice", "bob", "carol"):
            await bridge.agents.add(name, [], [], "test")
        await bridge.agents.revoke("carol", "test")
        log, later, past = bridge.log, time.time() + HOUR, time.time() - 1
        ids = {
            "elicitation_live": await _ask_facts(log, "bob", "elicitation", later),
            "elicitation_late": await _ask_facts(log, "bob", "elicitation", past),
            "elicitation_revoked": await _ask_facts(log, "carol", "elicitation", later),
            "legacy_live": await _ask_facts(log, "bob", "legacy", later),
            "legacy_late": await _ask_facts(log, "bob", "legacy", past),
            "never_routed": await _ask_facts(log, "bob", None, later),
            "answered": await _ask_facts(
                log, "bob", "elicitation", past, terminal=REQUEST_ANSWERED
            ),
        }
        await log.record(
            session_stream("s1"),
            SESSION_OPENED,
            {"agent": "bob", "session_id": "s1", "protocol": "2025-11-25", "elicitation": True},
            actor="bob",
        )
    finally:
        await bridge.close()
    return Crafted(db, ids)


def _stream(events: list[Record], rid: str) -> list[str]:
    return [r.type for r in events if r.stream == request_stream(rid)]


async def _head(db: Path) -> tuple[int, str]:
    store = await SqliteEventStore.open(StoreConfig(path=db, readonly=True))
    try:
        head = await store.head()
        return head.position, head.hash
    finally:
        await store.close()


async def test_repair_resolves_each_kind_of_open_request(tmp_path: Path) -> None:
    crafted = await _craft(tmp_path)
    ids = crafted.ids
    report = await repair_store(crafted.config)

    assert report.status == "repaired" and report.chain_ok and not report.dry_run
    by_id = {r.request_id: r for r in report.requests}
    assert set(by_id) == set(ids.values()) - {ids["answered"]}
    assert (by_id[ids["elicitation_live"]].action, by_id[ids["elicitation_live"]].reason) == (
        "fall_back",
        "orphaned_elicitation",
    )
    assert by_id[ids["never_routed"]].action == "fall_back"
    assert by_id[ids["elicitation_late"]].reason == "deadline_passed"
    assert by_id[ids["legacy_late"]].action == "expire"
    assert by_id[ids["elicitation_revoked"]].reason == "recipient_revoked"
    assert by_id[ids["legacy_live"]].action == "pending"
    assert all(r.applied for r in report.requests if r.action in ("fall_back", "expire"))
    assert report.sessions_closed == ["s1"]
    assert report.counts() == {
        "fall_back": 2,
        "expire": 3,
        "pending": 1,
        "in_flight": 0,
        "live_bridge": 0,
        "skipped": 0,
        "sessions_closed": 1,
    }
    assert report.state is not None and report.state.open_requests == 6
    assert report.state.agents == 3 and report.state.revoked_agents == 1

    events = await read_events(crafted.db)
    assert _stream(events, ids["elicitation_live"])[-1] == REQUEST_FELL_BACK
    for key in ("elicitation_late", "legacy_late", "elicitation_revoked"):
        assert _stream(events, ids[key])[-1] == REQUEST_EXPIRED, key
    assert _stream(events, ids["legacy_live"]) == [REQUEST_CREATED, REQUEST_FELL_BACK]
    assert _stream(events, ids["answered"])[-1] == REQUEST_ANSWERED
    fell = [r for r in events if r.type == REQUEST_FELL_BACK and r.actor == "repair"]
    assert {r.data["cause"] for r in fell} == {"repair"}
    assert {r.data["request_id"] for r in fell} == {ids["elicitation_live"], ids["never_routed"]}
    assert [r.type for r in events if r.stream == session_stream("s1")][-1] == SESSION_CLOSED
    [done] = [r for r in events if r.type == REPAIR_COMPLETED]
    assert done.data["counts"]["expire"] == 3 and len(done.data["expired"]) == 3
    assert events[-1].type == REPAIR_COMPLETED
    assert report.appended == 2 + 3 + 1 + 1 and report.head_after == events[-1].position


async def test_fallen_back_requests_land_in_the_mailbox(tmp_path: Path) -> None:
    crafted = await _craft(tmp_path)
    await repair_store(crafted.config)
    store = await SqliteEventStore.open(StoreConfig(path=crafted.db, readonly=True))
    try:
        snap = await rebuild(store)
    finally:
        await store.close()
    queued = set(snap.mailboxes.box("bob").items)
    ids = crafted.ids
    assert {ids["elicitation_live"], ids["never_routed"], ids["legacy_live"]} <= queued
    assert ids["legacy_late"] not in queued
    assert set(snap.requests.open) == {
        ids["elicitation_live"],
        ids["never_routed"],
        ids["legacy_live"],
    }
    assert all(snap.requests.open[i].path == "legacy" for i in snap.requests.open)


async def test_dry_run_appends_nothing(tmp_path: Path) -> None:
    crafted = await _craft(tmp_path)
    before = await _head(crafted.db)
    checkpoints = (tmp_path / "lighthouse.db.checkpoints").read_bytes()
    report = await repair_store(crafted.config, dry_run=True)
    assert report.dry_run and report.status == "would_repair"
    assert report.counts()["expire"] == 3 and report.counts()["fall_back"] == 2
    assert not any(r.applied for r in report.requests) and report.appended == 0
    assert await _head(crafted.db) == before
    assert (tmp_path / "lighthouse.db.checkpoints").read_bytes() == checkpoints


async def test_second_run_is_a_no_op(tmp_path: Path) -> None:
    crafted = await _craft(tmp_path)
    first = await repair_store(crafted.config)
    assert first.status == "repaired"
    head = await _head(crafted.db)
    second = await repair_store(crafted.config)
    assert second.status == "clean" and second.appended == 0
    assert second.counts()["pending"] == 3
    assert second.counts()["expire"] == second.counts()["fall_back"] == 0
    assert second.sessions_closed == []
    assert await _head(crafted.db) == head
    assert len(await read_events(crafted.db, [REPAIR_COMPLETED])) == 1


async def test_clean_store_gets_no_repair_event(tmp_path: Path) -> None:
    db = tmp_path / "lighthouse.db"
    bridge = await open_bridge(Settings(db=db))
    try:
        await bridge.agents.add("alice", [], [], "test")
    finally:
        await bridge.close()
    head = await _head(db)
    report = await repair_store(Settings(db=db).store_config())
    assert report.status == "clean" and not report.dry_run
    assert await _head(db) == head


def _tamper(db: Path, *statements: str) -> None:
    conn = sqlite3.connect(db)
    for trigger in ("events_no_update", "events_no_delete", "checkpoints_no_delete"):
        conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()


async def _edited(tmp_path: Path) -> Crafted:
    crafted = await _craft(tmp_path)
    rid = crafted.ids["legacy_live"]
    _tamper(
        crafted.db,
        "UPDATE events SET actor = 'mallory' "
        f"WHERE stream = '{request_stream(rid)}' AND type = '{REQUEST_CREATED}'",
    )
    return crafted


async def test_broken_chain_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    crafted = await _edited(tmp_path)
    head = await _head(crafted.db)
    report = await repair_store(crafted.config)
    assert report.status == "refused" and report.damage == "refused"
    assert not report.chain_ok and report.problems[0].kind == "edited"
    assert report.requests == [] and report.appended == 0
    assert await _head(crafted.db) == head
    assert "DAMAGED" in render(report, "test")


async def test_accept_damage_records_it_and_proceeds(tmp_path: Path) -> None:
    crafted = await _edited(tmp_path)
    report = await repair_store(crafted.config, accept_damage=True)
    assert report.status == "repaired" and report.damage == "accepted"
    [accepted] = await read_events(crafted.db, [DAMAGE_ACCEPTED])
    assert [p["kind"] for p in accepted.data["problems"]] == ["edited"]
    assert accepted.data["problems"][0]["position"] == report.problems[0].position
    assert report.counts()["expire"] == 3
    head = await _head(crafted.db)
    # the damage is on record now: later runs, with or without the flag, change nothing
    again = await repair_store(crafted.config, accept_damage=True)
    plain = await repair_store(crafted.config)
    assert again.damage == plain.damage == "previously_accepted"
    assert again.status == plain.status == "clean"
    assert await _head(crafted.db) == head


async def test_cut_tail_is_refused(tmp_path: Path) -> None:
    crafted = await _craft(tmp_path)
    head = await _head(crafted.db)
    _tamper(crafted.db, f"DELETE FROM events WHERE position > {head[0] - 2}")
    report = await repair_store(crafted.config)
    assert report.status == "refused"
    assert "truncated" in {p.kind for p in report.problems}
    if "accept_damage" not in {f.name for f in dataclasses.fields(StoreConfig)}:
        from events import StoreError

        with pytest.raises(StoreError, match="accept_damage"):
            await repair_store(crafted.config, accept_damage=True)
        assert (await _head(crafted.db))[0] == head[0] - 2
    else:  # once the store can open a cut store for writing (see the repair report)
        accepted = await repair_store(crafted.config, accept_damage=True)
        assert accepted.damage == "accepted" and accepted.status == "repaired"
        [event] = await read_events(crafted.db, [DAMAGE_ACCEPTED])
        assert event.data["cut"] == {"after": head[0] - 2, "through": head[0]}
        # the cut stays a gap (positions are never reused); the old checkpoint's mismatch
        # and the gap are covered by the accepted damage
        again = await repair_store(crafted.config)
        assert again.damage == "previously_accepted" and again.status == "clean"


async def test_cli_exit_codes_and_json(tmp_path: Path) -> None:
    crafted = await _craft(tmp_path)
    db = str(crafted.db)
    dry = lighthouse("repair", "--db", db, "--dry-run", "--json", cwd=tmp_path)
    out = json.loads(dry.stdout)
    assert out["status"] == "would_repair" and out["counts"]["expire"] == 3
    table = lighthouse("repair", "--db", db, cwd=tmp_path)
    assert "re-routed to legacy" in table.stdout and crafted.ids["legacy_late"] in table.stdout
    assert "repaired" in table.stdout
    assert table.stderr == ""  # piped: no progress output
    again = json.loads(lighthouse("repair", "--db", db, "--json", cwd=tmp_path).stdout)
    assert again["status"] == "clean" and again["appended"] == 0
    assert msgspec.convert(again, RepairReport).counts() == again["counts"]  # one shape
    _tamper(crafted.db, "UPDATE events SET actor = 'mallory' WHERE position = 1")
    refused = lighthouse("repair", "--db", db, cwd=tmp_path, check=False)
    assert refused.returncode == 1 and "DAMAGED" in refused.stdout
    accepted = lighthouse("repair", "--db", db, "--accept-damage", "--json", cwd=tmp_path)
    assert json.loads(accepted.stdout)["damage"] == "accepted"
    missing = lighthouse("repair", "--db", str(tmp_path / "nope.db"), cwd=tmp_path, check=False)
    assert missing.returncode == 3 and "no store" in missing.stderr


# -- inside a running bridge (the admin route's path) --------------------------------------


async def test_live_bridge_leaves_its_own_elicitations_and_settles_expired_asks(
    tmp_path: Path,
) -> None:
    """Requests the router still owns (an asker waiting in this process) are not orphans;
    one past its deadline is closed the way the router would close it, and the waiting
    asker gets that result."""
    from bridge.repair import repair_bridge

    crafted = await _craft(tmp_path)
    bridge = await open_bridge(Settings(db=crafted.db))
    try:
        loop = asyncio.get_running_loop()
        owned = bridge.requests.open[crafted.ids["elicitation_live"]]
        owned.answer = loop.create_future()
        late = bridge.requests.open[crafted.ids["legacy_late"]]
        late.answer = loop.create_future()
        head = (await bridge.store.head()).position
        report = await repair_bridge(bridge, session_boundary=head)
        by_id = {r.request_id: r for r in report.requests}
        assert by_id[owned.request_id].action == "in_flight"
        assert owned.request_id in bridge.requests.open and not owned.closing
        assert by_id[late.request_id].action == "expire" and by_id[late.request_id].applied
        assert late.answer.done() and late.answer.result()["status"] == "timeout"
        assert late.request_id in bridge.requests.closed
        assert report.sessions_closed == ["s1"] and report.drift == []
        # the router's own timer firing afterwards cannot close it a second time
        await bridge.router._expire(late)
    finally:
        await bridge.close()
    terminals = [
        r for r in await read_events(crafted.db) if r.stream == request_stream(late.request_id)
    ]
    assert [r.type for r in terminals][-1] == REQUEST_EXPIRED
    assert sum(r.type in TERMINAL_TYPES for r in terminals) == 1


async def test_concurrent_resolution_wins_and_repair_skips(tmp_path: Path) -> None:
    """Between planning and appending, the bridge answers a request: repair's append is
    refused by `expected_version` and reported as skipped — never a second terminal."""
    from bridge.repair import plan_repair, run_repair

    crafted = await _craft(tmp_path)
    bridge = await open_bridge(Settings(db=crafted.db))
    try:
        plan = await plan_repair(bridge.store, bridge.store.config, bridge=bridge)
        rid = crafted.ids["legacy_late"]
        await bridge.log.record(
            request_stream(rid), REQUEST_ANSWERED, {"request_id": rid, "by": "bob"}, actor="bob"
        )
        report = await run_repair(plan, bridge.log, bridge=bridge)
    finally:
        await bridge.close()
    [skipped] = [r for r in report.requests if r.request_id == rid]
    assert (skipped.action, skipped.reason, skipped.applied) == (
        "skipped",
        "changed_meanwhile",
        False,
    )
    types = [r.type for r in await read_events(crafted.db) if r.stream == request_stream(rid)]
    assert types[-1] == REQUEST_ANSWERED and sum(t in TERMINAL_TYPES for t in types) == 1
    assert report.counts()["expire"] == 2  # the other two still expired
