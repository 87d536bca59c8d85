"""bridge.audit: queries, the security report, verifiable exports and their offline check.

Stores are real SQLite stores; the live tests run a real bridge process and real signed
(or deliberately unsigned / replayed) HTTP requests; the CLI runs as a subprocess.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mcp_types import ElicitResult

from bridge.audit import AuditQuery, StoreSource, parse_time, security_report
from bridge.audit_export import verify_export, write_export
from bridge.audit_redact import RedactionError
from events import NewEvent, SqliteEventStore, StoreConfig
from security.keys import decode_secret
from security.signatures import sign_request
from tests.harness import (
    SCHEMA,
    BridgeProcess,
    answer_next_request,
    read_events,
    running_bridge,
    wait_until,
)

T0 = 1_790_000_000.0  # fixed event times make the time filters exact


# -- a store with known content ----------------------------------------------------------


def _events() -> list[tuple[str, NewEvent]]:
    """20 request events (alice asks bob or carol), then security and flag events."""
    out: list[tuple[str, NewEvent]] = []
    for i in range(20):
        rid = f"r{i % 4}"
        recipient = "bob" if i % 2 == 0 else "carol"
        out.append(
            (
                f"request-{rid}",
                NewEvent(
                    type="RequestCreated" if i < 4 else "RequestAnswered",
                    actor="alice" if i < 4 else recipient,
                    data={"request_id": rid, "from": "alice", "recipient": recipient, "i": i},
                    time=T0 + i,
                ),
            )
        )
    out.append(
        (
            "security",
            NewEvent(
                type="AuthRejected",
                actor="mallory",
                data={"reason": "replayed_nonce", "agent": "mallory", "remote": "10.0.0.9"},
                time=T0 + 20,
            ),
        )
    )
    out.append(
        (
            "flags",
            NewEvent(
                type="FlagChanged",
                actor="ops-jane",
                data={"old": {}, "new": {"elicitation_enabled": False}, "reason": "incident"},
                time=T0 + 21,
            ),
        )
    )
    return out


async def _make_store(db: Path, *, tail: int = 0) -> SqliteEventStore:
    """Append the known events, checkpoint, then `tail` events left uncovered; stays open."""
    store = await SqliteEventStore.open(
        StoreConfig(path=db, checkpoint_interval=0, checkpoint_every=1_000_000)
    )
    for stream, event in _events():
        await store.append(stream, [event])
    await store.checkpoint()
    for i in range(tail):
        await store.append(
            "operations", [NewEvent(type="DrainStarted", actor="ops", time=T0 + 30 + i)]
        )
    return store


@pytest.fixture
async def db(tmp_path: Path) -> Path:
    path = tmp_path / "audit.db"
    store = await _make_store(path)
    await store.close()
    return path


@pytest.fixture
def public_key(db: Path) -> bytes:
    return (db.parent / "audit.db.keys" / "checkpoint.pub").read_bytes()


async def _query(db: Path, **filters: Any) -> list[int]:
    source = await StoreSource.open(db)
    try:
        page = await source.page(AuditQuery(**filters))
        return [r.position for r in page.events]
    finally:
        await source.close()


# -- queries -----------------------------------------------------------------------------


def test_parse_time_accepts_iso_and_unix() -> None:
    assert parse_time("1790000000") == T0
    assert parse_time("1790000000.5") == T0 + 0.5
    moment = "2026-09-21T14:13:20Z"
    assert parse_time(moment) == parse_time("2026-09-21T14:13:20+00:00") == T0
    assert parse_time("2026-09-21T14:13:20") == T0  # naive means UTC
    with pytest.raises(ValueError, match="neither ISO-8601 nor unix seconds"):
        parse_time("yesterday", "--since")


async def test_agent_filter_matches_actor_or_any_agent_in_data(db: Path) -> None:
    carol = await _query(db, agent="carol")
    assert carol == [i + 1 for i in range(20) if i % 2 == 1]  # recipient, or actor of answers
    alice = await _query(db, agent="alice")
    assert alice == list(range(1, 21))  # actor of the asks, `from` of every request event
    assert await _query(db, agent="mallory") == [21]  # actor and data.agent
    assert await _query(db, agent="ops-jane") == [22]
    assert await _query(db, agent="nobody") == []


async def test_type_stream_and_request_filters(db: Path) -> None:
    assert await _query(db, types=("RequestCreated",)) == [1, 2, 3, 4]
    assert await _query(db, types=("AuthRejected", "FlagChanged")) == [21, 22]
    assert await _query(db, stream="flags") == [22]
    assert await _query(db, request_id="r1") == [2, 6, 10, 14, 18]
    assert await _query(db, request_id="r1", agent="bob") == []  # r1 went to carol
    assert await _query(db, request_id="r1", types=("RequestCreated",)) == [2]


async def test_time_and_position_ranges(db: Path) -> None:
    assert await _query(db, since=T0 + 18) == [19, 20, 21, 22]
    assert await _query(db, until=T0 + 2) == [1, 2, 3]  # inclusive
    iso = "2026-09-21T14:13:25Z"  # T0 + 5
    assert await _query(db, since=parse_time(iso), until=T0 + 6) == [6, 7]
    assert await _query(db, from_position=5, to_position=8) == [5, 6, 7, 8]
    assert await _query(db, from_position=20, agent="carol") == [20]


async def test_paging_by_position_returns_every_match_once(db: Path) -> None:
    source = await StoreSource.open(db)
    seen: list[int] = []
    query = AuditQuery(agent="bob", limit=3)
    try:
        while True:
            page = await source.page(query)
            assert len(page.events) <= 3
            seen += [r.position for r in page.events]
            if page.next_position is None:
                break
            query = replace(query, from_position=page.next_position)
    finally:
        await source.close()
    assert seen == [i + 1 for i in range(20) if i % 2 == 0]


async def test_store_source_reads_beside_an_open_writer(tmp_path: Path) -> None:
    store = await _make_store(tmp_path / "live.db", tail=2)
    try:
        assert await _query(tmp_path / "live.db", types=("DrainStarted",)) == [23, 24]
    finally:
        await store.close()


def test_security_report_groups_by_reason_agent_and_lists_flag_changes() -> None:
    from events import Record

    def rec(position: int, type_: str, actor: str, **data: Any) -> Record:
        return Record(
            position=position,
            stream="security",
            version=position,
            event_id=str(position),
            type=type_,
            time=T0,
            actor=actor,
            data=data,
            prev_hash="",
            hash="",
            digest="",
        )

    report = security_report(
        [
            rec(1, "AuthRejected", "anonymous", reason="bad_signature", agent=None),
            rec(2, "AuthRejected", "eve", reason="replayed_nonce", agent="eve", remote="1.2.3.4"),
            rec(3, "AuthRejected", "eve", reason="replayed_nonce", agent="eve", remote="1.2.3.4"),
            rec(4, "RateLimited", "bob", scope="agent", agent="bob", retry_after=1.0),
            rec(5, "AdminAuthFailed", "anonymous", reason="invalid_token", remote="1.2.3.4"),
            rec(6, "FlagChanged", "ops", old={}, new={"elicitation_enabled": False}, reason="x"),
        ]
    )
    assert report["auth_rejections"]["total"] == 3
    assert report["auth_rejections"]["by_reason"] == {"replayed_nonce": 2, "bad_signature": 1}
    assert {"reason": "replayed_nonce", "agent": "eve", "count": 2} in report["auth_rejections"][
        "by_reason_and_agent"
    ]
    assert report["replays"] == {"total": 2, "by_agent": {"eve": 2}, "by_remote": {"1.2.3.4": 2}}
    assert report["rate_limited"]["by_agent"] == {"bob": 1}
    assert report["admin_auth_failures"]["by_reason"] == {"invalid_token": 1}
    assert [(f["actor"], f["reason"]) for f in report["flag_changes"]] == [("ops", "x")]


# -- exports -----------------------------------------------------------------------------


async def _export(db: Path, out: Path, query: AuditQuery | None = None, **options: Any) -> Any:
    source = await StoreSource.open(db)
    try:
        return await write_export(source, query or AuditQuery(), out, **options)
    finally:
        await source.close()


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write(path: Path, lines: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def _problems(path: Path, key: bytes) -> list[str]:
    report = verify_export(path, key)
    return [p.kind for p in report.problems]


async def test_full_export_verifies_with_the_public_key_only(
    db: Path, public_key: bytes, tmp_path: Path
) -> None:
    out = tmp_path / "export.jsonl"
    summary = await _export(db, out)
    assert (summary.first, summary.last, summary.records, summary.covered_to) == (1, 22, 22, 22)
    lines = _lines(out)
    assert lines[0]["format"] == "lighthouse-audit-export" and lines[0]["checkpoints"]
    assert all("digest" in ln and "hash" in ln and "prev_digest" in ln for ln in lines[1:-1])
    assert lines[-1] == {"end": True, "records": 22, "matched": 22}
    # nothing but the export and the public key: move the store and its keys away
    (db.parent / "audit.db.keys").rename(tmp_path / "elsewhere")
    report = verify_export(out, public_key)
    assert report.ok, report.problems
    assert (report.first, report.last, report.covered_to, report.uncovered) == (1, 22, 22, 0)


async def test_records_after_the_last_checkpoint_are_reported_not_covered(tmp_path: Path) -> None:
    db = tmp_path / "tail.db"
    store = await _make_store(db, tail=3)
    try:
        out = tmp_path / "export.jsonl"
        await _export(db, out)
    finally:
        await store.close()
    key = (tmp_path / "tail.db.keys" / "checkpoint.pub").read_bytes()
    report = verify_export(out, key)
    assert report.ok and report.covered_to == 22 and report.last == 25 and report.uncovered == 3
    assert "3 records after position 22 are not covered by a checkpoint" in report.describe()


async def test_contiguous_filtered_export_proves_which_records_match(
    db: Path, public_key: bytes, tmp_path: Path
) -> None:
    out = tmp_path / "bob.jsonl"
    summary = await _export(db, out, AuditQuery(agent="bob"), contiguous=True)
    assert summary.matched == 10 and summary.first == 1
    report = verify_export(out, public_key)
    assert report.ok and report.matched == 10 and report.selector == {"agent": "bob"}
    lines = _lines(out)
    # hiding a matching record by flagging it as not matching is detected
    flipped = next(i for i, ln in enumerate(lines) if ln.get("match") is True)
    lines[flipped]["match"] = False
    _write(out, lines)
    assert "match_flag" in _problems(out, public_key)
    # and so is dropping it from the file
    lines[flipped]["match"] = True
    _write(out, [ln for i, ln in enumerate(lines) if i != flipped])
    assert "missing" in _problems(out, public_key)


async def test_verify_detects_tampering(db: Path, public_key: bytes, tmp_path: Path) -> None:
    out = tmp_path / "export.jsonl"
    await _export(db, out)
    original = _lines(out)
    damaged = tmp_path / "damaged.jsonl"

    def check(lines: list[dict[str, Any]], kind: str) -> None:
        _write(damaged, lines)
        kinds = _problems(damaged, public_key)
        assert kind in kinds, (kind, kinds)
        assert not verify_export(damaged, public_key).ok

    edited = [dict(ln) for ln in original]
    edited[5] = {**edited[5], "data": {**edited[5]["data"], "recipient": "mallory"}}
    check(edited, "edited")

    check(original[:5] + original[6:], "missing")  # a deleted record

    swapped = list(original)
    swapped[5], swapped[6] = swapped[6], swapped[5]
    check(swapped, "reordered")

    shifted = [{**ln, "position": ln["position"] - 1} for ln in original[6:-1]]
    renumbered = [*original[:5], *shifted, original[-1]]
    check(renumbered, "edited")  # a deletion hidden by renumbering breaks the digests

    check(original[:15], "truncated")  # the tail before the checkpoint is gone

    header = dict(original[0])
    cp = dict(header["checkpoints"][-1])
    cp["size"], cp["head_digest"] = 15, original[15]["digest"]  # claim a shorter signed log
    check([{**header, "checkpoints": [cp]}, *original[1:]], "checkpoint_forged")

    sig = bytearray(base64.b64decode(header["checkpoints"][-1]["signature"]))
    sig[0] ^= 1
    cp = {**header["checkpoints"][-1], "signature": base64.b64encode(bytes(sig)).decode()}
    check([{**header, "checkpoints": [cp]}, *original[1:]], "checkpoint_forged")

    check([{**header, "checkpoints": []}, *original[1:]], "not_covered")


async def test_wrong_public_key_fails(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "export.jsonl"
    await _export(db, out)
    other = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    report = verify_export(out, other)
    assert not report.ok
    assert report.problems[0].kind == "checkpoint_forged"
    assert "wrong key" in report.problems[0].detail


# -- redacted exports --------------------------------------------------------------------

SECRET = "the heron ledger is under the third lantern"


@pytest.fixture
async def contents(tmp_path: Path) -> tuple[Path, bytes]:
    """A store of questions in clear (as before encryption) between records without
    contents, and its checkpoint public key."""
    db = tmp_path / "contents.db"
    store = await SqliteEventStore.open(
        StoreConfig(path=db, checkpoint_interval=0, checkpoint_every=1_000_000)
    )
    try:
        for i in range(6):
            rid = f"r{i}"
            created = {"request_id": rid, "from": "alice", "recipient": "bob", "to": "bob"}
            created |= {"message": f"{SECRET} #{i}", "schema": SCHEMA}
            routed = {"request_id": rid, "recipient": "bob", "path": "legacy"}
            await store.append(
                f"request-{rid}",
                [
                    NewEvent(type="RequestCreated", actor="alice", data=created, time=T0 + i),
                    NewEvent(type="RequestRouted", actor="alice", data=routed, time=T0 + i),
                ],
            )
        await store.checkpoint()
    finally:
        await store.close()
    return db, (tmp_path / "contents.db.keys" / "checkpoint.pub").read_bytes()


async def test_redacted_export_verifies_and_an_edited_clear_field_is_caught(
    contents: tuple[Path, bytes], tmp_path: Path
) -> None:
    db, key = contents
    out = tmp_path / "redacted.jsonl"
    summary = await _export(db, out, redact=True)
    assert summary.records == 12 and "contents left out" in summary.describe()
    assert SECRET not in out.read_text() and "heron" not in out.read_text()
    lines = _lines(out)
    assert lines[0]["redacted"] is True
    redacted_lines = [i for i, ln in enumerate(lines) if "redaction" in ln]
    assert [lines[i]["type"] for i in redacted_lines] == ["RequestCreated"] * 6
    assert lines[redacted_lines[0]]["data"]["redacted"] == {
        "fields": ["message", "schema"],
        "size": lines[redacted_lines[0]]["data"]["redacted"]["size"],
    }
    (tmp_path / "contents.db.keys").rename(tmp_path / "elsewhere")  # public key only
    with pytest.raises(RedactionError, match=r"checkpoint\.key is missing"):
        await _export(db, tmp_path / "nokey.jsonl", redact=True)  # no key, no attestation
    assert not list(tmp_path.glob("nokey*"))  # and no partial file
    report = verify_export(out, key)
    assert report.ok, report.problems
    assert report.redacted == 6 and report.tree_root is not None  # the tree checked too
    assert "6 records are redacted: their contents are not in the file" in report.describe()

    damaged = tmp_path / "damaged.jsonl"
    line = redacted_lines[2]
    position = lines[line]["position"]

    def problems(edit: dict[str, Any]) -> list[tuple[int, str, str]]:
        copy = [dict(ln) for ln in lines]
        copy[line] = {**copy[line], **edit}
        _write(damaged, copy)
        found = verify_export(damaged, key).problems
        return [(p.position, p.kind, p.detail) for p in found]

    for edit in (
        {"actor": "mallory"},
        {"time": T0 + 99},
        {"data": {**lines[line]["data"], "recipient": "mallory"}},
        {"redaction": {**lines[line]["redaction"], "leaf": lines[line + 2]["redaction"]["leaf"]}},
    ):
        found = problems(edit)
        assert found and found[0][:2] == (position, "edited"), (edit, found)
        assert f"redacted record {position}: its clear fields" in found[0][2]
    # the message put back beside its redaction is refused too
    back = problems({"data": {**lines[line]["data"], "message": "x"}})
    assert (position, "edited") in [(p, k) for p, k, _ in back]
    # a redacted record's digest is pinned by the next record's recomputed link
    digest = problems({"digest": "0" * 64})
    assert (position + 1, "broken_link") in [(p, k) for p, k, _ in digest]


async def test_redacted_inclusion_export_verifies_and_catches_an_edited_field(
    contents: tuple[Path, bytes], tmp_path: Path
) -> None:
    db, key = contents
    out = tmp_path / "r2.jsonl"
    summary = await _export(db, out, AuditQuery(request_id="r2"), redact=True)
    assert summary.inclusion and summary.records == 2
    assert SECRET not in out.read_text()
    report = verify_export(out, key)
    assert report.ok and report.redacted == 1, report.problems
    lines = _lines(out)
    [line] = [i for i, ln in enumerate(lines) if "redaction" in ln]
    lines[line]["actor"] = "mallory"
    _write(out, lines)
    [problem] = verify_export(out, key).problems
    assert (problem.position, problem.kind) == (lines[line]["position"], "edited")


# -- the command line --------------------------------------------------------------------


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "LIGHTHOUSE_URL": "http://127.0.0.1:9", **(env or {})},
        timeout=60,
    )


def test_cli_export_and_verify_on_a_store_file(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli-export.jsonl"
    done = _cli("audit", "export", "--db", str(db), "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "exported 22 records" in done.stdout and done.stderr == ""  # no progress when piped
    pem = tmp_path / "pub.pem"
    key = _cli("audit", "pubkey", "--db", str(db), cwd=tmp_path)
    assert key.stdout.startswith("-----BEGIN PUBLIC KEY-----")
    pem.write_text(key.stdout)
    ok = _cli("audit", "verify-export", str(out), "--public-key", str(pem), cwd=tmp_path)
    assert ok.returncode == 0 and ok.stdout.startswith("OK: 22 records"), ok.stdout + ok.stderr

    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:3] + lines[4:]) + "\n")
    bad = _cli("audit", "verify-export", str(out), "--public-key", str(pem), cwd=tmp_path)
    assert bad.returncode == 1 and bad.stdout.startswith("FAILED at position 3: missing")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("audit", "--db", "missing.db"), 3, "no store at missing.db"),
        (("audit", "verify-export", "nope.jsonl", "--public-key", "pub.pem"), 2, "no export"),
        (("audit", "--db", "missing.db", "--since", "soon"), 1, "neither ISO-8601"),
    ],
)
def test_cli_errors_are_one_line(
    tmp_path: Path, args: tuple[str, ...], code: int, message: str
) -> None:
    done = _cli(*args, cwd=tmp_path)
    assert done.returncode == code
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_cli_rejects_a_key_that_is_not_a_public_key(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "e.jsonl"
    _cli("audit", "export", "--db", str(db), "--out", str(out), cwd=tmp_path)
    done = _cli("audit", "verify-export", str(out), "--public-key", str(db), cwd=tmp_path)
    assert done.returncode == 2 and "not an Ed25519 public key" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_table_and_jsonl(db: Path, tmp_path: Path) -> None:
    table = _cli("audit", "--db", str(db), "--type", "FlagChanged", cwd=tmp_path)
    rows = table.stdout.splitlines()
    assert rows[0].split()[:5] == ["POSITION", "TIME", "TYPE", "ACTOR", "STREAM"]
    assert "FlagChanged" in rows[1] and "ops-jane" in rows[1] and len(rows) == 2
    jsonl = _cli(
        "audit",
        "--db",
        str(db),
        "--agent",
        "carol",
        "--since",
        "2026-09-21T14:13:30Z",
        "--format",
        "jsonl",
        cwd=tmp_path,
    )
    events = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert [e["position"] for e in events] == [12, 14, 16, 18, 20]
    assert all(e["digest"] and e["hash"] for e in events)


# -- a live bridge -----------------------------------------------------------------------


@pytest.fixture
def live(tmp_path: Path) -> Iterator[BridgeProcess]:
    with running_bridge(tmp_path, {"alice": (), "bob": ("--role", "expert")}) as b:
        yield b


async def _ask_bob(bridge: BridgeProcess) -> str:
    async def answer(ctx: Any, params: Any) -> ElicitResult:
        return ElicitResult(action="accept", content={"answer": "42"})

    async with (
        bridge.client("bob", elicitation_callback=answer),
        bridge.client("alice") as alice,
    ):
        result = await alice.call_tool(
            "ask", {"to": "bob", "message": "audit me", "schema": SCHEMA, "timeout_s": 10}
        )
    return result.structured_content["request_id"]


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def make_rejections(bridge: BridgeProcess) -> None:
    """An unsigned POST, a replayed signed POST and a bad admin token: all refused."""
    body = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
    json_headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
    }
    assert _post(bridge.mcp_url, body, json_headers) == 401
    alice = bridge.agents["alice"]
    signed = sign_request(
        "POST",
        "/mcp",
        "",
        {},
        body,
        alice.key_id,
        decode_secret(alice.secret),
        nonce="n-" + str(time.time()),
    )
    _post(bridge.mcp_url, body, {**json_headers, **signed})  # first use: authenticated
    assert _post(bridge.mcp_url, body, {**json_headers, **signed}) == 401  # replay
    request = urllib.request.Request(
        bridge.url + "/admin/events", headers={"Authorization": "Bearer not-the-token"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401


async def test_admin_events_filters_and_pages_on_a_live_bridge(live: BridgeProcess) -> None:
    request_id = await _ask_bob(live)
    status, page = live.admin("GET", f"/admin/events?request={request_id}")
    assert status == 200
    types = [e["type"] for e in page["events"]]
    assert types[0] == "RequestCreated" and types[-1] == "RequestAnswered"
    assert page["next_position"] is None and page["head"] >= page["events"][-1]["position"]
    status, bob = live.admin("GET", f"/admin/events?agent=bob&request={request_id}")
    assert [e["type"] for e in bob["events"]] == types  # bob is recipient/actor of each
    status, first = live.admin("GET", f"/admin/events?request={request_id}&limit=1")
    assert len(first["events"]) == 1
    status, rest = live.admin(
        "GET", f"/admin/events?request={request_id}&from_position={first['next_position']}"
    )
    assert [e["type"] for e in first["events"] + rest["events"]] == types
    status, error = live.admin("GET", "/admin/events?since=tomorrow")
    assert status == 400 and error["field"] == "since"
    status, error = live.admin("GET", "/admin/events?limit=0")
    assert status == 400 and error["field"] == "limit"


async def test_cli_audit_uses_the_running_bridge_and_the_file_beside_it(
    live: BridgeProcess,
) -> None:
    request_id = await _ask_bob(live)
    via_api = _cli(
        "audit", "--request", request_id, "--format", "jsonl", cwd=live.workdir, env=live.env
    )
    assert via_api.returncode == 0, via_api.stderr
    via_file = _cli(
        "audit",
        "--db",
        str(live.db),
        "--request",
        request_id,
        "--format",
        "jsonl",
        cwd=live.workdir,
    )
    assert via_file.returncode == 0, via_file.stderr
    assert via_api.stdout == via_file.stdout and via_api.stdout.count("\n") >= 4


async def test_security_report_counts_real_rejections(live: BridgeProcess) -> None:
    since = time.time() - 1
    make_rejections(live)
    status, _ = live.admin(
        "POST",
        "/feature_flags",
        {"rollout_percent": 50, "reason": "canary"},
        headers={"X-Lighthouse-Operator": "ops-jane"},
    )
    assert status == 200

    async def recorded() -> bool:
        return len(await read_events(live.db, ["AdminAuthFailed"])) >= 1

    await wait_until(recorded)
    done = _cli(
        "audit",
        "security",
        "--since",
        str(since),
        "--format",
        "json",
        cwd=live.workdir,
        env=live.env,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    rejected = report["auth_rejections"]["by_reason"]
    assert rejected.get("replayed_nonce") == 1 and sum(rejected.values()) == 2
    assert report["replays"]["by_agent"] == {"alice": 1}
    assert report["admin_auth_failures"]["by_reason"] == {"invalid_token": 1}
    assert [(f["actor"], f["reason"]) for f in report["flag_changes"]] == [("ops-jane", "canary")]
    table = _cli("audit", "security", "--db", str(live.db), cwd=live.workdir)
    assert "replay attempts (replayed_nonce): 1" in table.stdout
    assert "failed admin logins: 1" in table.stdout


async def test_export_from_a_live_bridge_verifies_after_shutdown(live: BridgeProcess) -> None:
    await _ask_bob(live)
    out = live.workdir / "live-export.jsonl"
    done = _cli("audit", "export", "--out", str(out), cwd=live.workdir, env=live.env)
    assert done.returncode == 0, done.stderr
    pem = live.workdir / "pub.pem"
    pem.write_text(_cli("audit", "pubkey", cwd=live.workdir, env=live.env).stdout)
    assert pem.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    # the CLI has the bridge sign its head before exporting: the ask is covered at once
    # (records appended after that signature would be reported as not covered)
    report = verify_export(out, pem.read_bytes())
    answered = await read_events(live.db, ["RequestAnswered"])
    assert report.covered_to >= answered[-1].position, report.problems
    live.stop()
    after = live.workdir / "after.jsonl"
    done = _cli("audit", "export", "--db", str(live.db), "--out", str(after), cwd=live.workdir)
    assert done.returncode == 0, done.stderr
    report = verify_export(after, pem.read_bytes())
    assert report.ok and report.uncovered == 0, report.problems


async def test_a_request_made_a_moment_ago_exports_with_its_proofs(live: BridgeProcess) -> None:
    """Seconds after an ask, before the periodic checkpoint: the CLI's export and the
    console's download both prove every record of it (each signs the head first)."""
    request_id = await _ask_bob(live)
    history = [e for e in await read_events(live.db) if e.data.get("request_id") == request_id]
    pem = _cli("audit", "pubkey", cwd=live.workdir, env=live.env).stdout.encode()
    out = live.workdir / "request.jsonl"
    done = _cli(
        "audit", "export", "--request", request_id, "--out", str(out),
        cwd=live.workdir, env=live.env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    request = urllib.request.Request(
        f"{live.url}/admin/console/export?request={request_id}",
        headers={"Authorization": f"Bearer {live.admin_token}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        downloaded = live.workdir / "download.jsonl"
        downloaded.write_bytes(response.read())
    for export in (out, downloaded):
        report = verify_export(export, pem)
        assert report.ok, report.describe()
        assert report.to_json()["matched"] == len(history) >= 3


async def test_redacted_export_from_a_live_bridge_holds_no_contents_nor_ciphertext(
    live: BridgeProcess,
) -> None:
    note, question, answer = "pier nine at dawn", "which crate holds the heron", "crate-4471"
    async with live.client("bob") as bob, live.client("alice") as alice:
        await alice.call_tool("send_message", {"to": "bob", "content": note})
        asked = await alice.call_tool(
            "ask", {"to": "bob", "message": question, "schema": SCHEMA, "wait": False}
        )
        await answer_next_request(bob, answer)
    rid = asked.structured_content["request_id"]
    status, _ = live.admin("POST", "/admin/tlog/checkpoint")  # signed now, not in 10 s
    assert status == 200
    status, body = live.admin("GET", "/admin/events?contents=stored&attest=true")
    assert status == 400 and body["field"] == "attest"
    pem = live.workdir / "pub.pem"
    pem.write_text(_cli("audit", "pubkey", cwd=live.workdir, env=live.env).stdout)
    sealed = await read_events(
        live.db, ["MessageSent", "RequestCreated", "RequestAnswered"], opened=False
    )
    ciphertexts = [r.data["sealed"]["ct"] for r in sealed] + [
        r.data["sealed"]["nonce"] for r in sealed
    ]

    def redacted_export(*args: str) -> Path:
        out = live.workdir / f"redacted-{len(list(live.workdir.glob('redacted-*')))}.jsonl"
        env = live.env if live.proc is not None else None
        done = _cli(
            "audit", "export", "--redact", *args, "--out", str(out), cwd=live.workdir, env=env
        )
        assert done.returncode == 0, done.stderr
        text = out.read_text()
        for secret in (note, question, answer, *ciphertexts):
            assert secret not in text
        assert '"ct"' not in text and '"nonce"' not in text
        return out

    def verify(out: Path) -> subprocess.CompletedProcess:
        return _cli("audit", "verify-export", str(out), "--public-key", str(pem), cwd=live.workdir)

    through_api = redacted_export()  # the running bridge attests with its checkpoint key
    ok = verify(through_api)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "3 records are redacted" in ok.stdout
    lines = _lines(through_api)
    flipped = next(i for i, ln in enumerate(lines) if ln.get("type") == "RequestCreated")
    lines[flipped]["actor"] = "carol"  # who asked: a clear field of a redacted record
    _write(through_api, lines)
    bad = verify(through_api)
    position = lines[flipped]["position"]
    assert bad.returncode == 1
    assert bad.stdout.startswith(f"FAILED at position {position}: edited: redacted record")

    full = live.workdir / "full.jsonl"
    assert (
        _cli("audit", "export", "--out", str(full), cwd=live.workdir, env=live.env).returncode == 0
    )
    assert ciphertexts[0] in full.read_text()  # without --redact: records as stored
    live.stop()
    from_file = redacted_export("--db", str(live.db))  # attested with the key beside it
    assert verify(from_file).returncode == 0
    one = redacted_export("--db", str(live.db), "--request", rid)  # inclusion proofs
    checked = verify(one)
    assert checked.returncode == 0 and "2 records are redacted" in checked.stdout, checked.stdout


def test_export_refuses_a_record_whose_stored_bytes_were_edited(db: Path, tmp_path: Path) -> None:
    """A whitespace edit decodes to the same value, so a re-encoded export would verify:
    the export hashes what is stored and refuses instead."""
    import sqlite3

    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER events_no_update")
    conn.execute("UPDATE events SET data = CAST(data AS BLOB) || X'20' WHERE position = 5")
    conn.commit()
    conn.close()
    out = tmp_path / "edited.jsonl"
    done = _cli("audit", "export", "--db", str(db), "--out", str(out), cwd=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "record at 5 does not match its digest" in done.stderr
    assert not out.exists() and not out.with_name(out.name + ".partial").exists()
