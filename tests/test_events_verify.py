"""`verify` checks the bytes as stored, survives damaged pages and catches index damage.

Each test edits the SQLite file the way an attacker with file access would (triggers
dropped, or raw bytes of a page overwritten) and asserts the kind and position verify
reports.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from events import NewEvent, SqliteEventStore, StoreConfig, StoreCorrupt
from events.chain import CheckpointSigner
from events.note import TreeHead
from events.tlog import (
    TreeCheckpoint,
    TreeCheckpointFile,
    origin_of,
    sign_tree_head,
    tree_checkpoint_path,
)
from events.verify import VerifyReport, verify_with_config

DATA = {"a": 1, "b": "café", "n": 1.5, "s": "x y"}
CANONICAL = b'{"a":1,"b":"caf\xc3\xa9","n":1.5,"s":"x y"}'


async def _filled(tmp_path: Path, n: int = 30) -> StoreConfig:
    config = StoreConfig(path=tmp_path / "events.db")
    store = await SqliteEventStore.open(config)
    for i in range(n):
        data = DATA if i == 9 else {"i": i, "tag": f"t{i:04d}"}
        await store.append(f"s{i % 3}", [NewEvent(type=f"Type{i % 2}", data=data, actor="a")])
    await store.close()
    return config


async def _verify(config: StoreConfig) -> VerifyReport:
    ro = StoreConfig(path=config.path, readonly=True)
    store = await SqliteEventStore.open(ro)
    try:
        return await verify_with_config(store, config)
    finally:
        await store.close()


def _sql(config: StoreConfig, statement: str, params: tuple[object, ...] = ()) -> None:
    """One statement past the append-only triggers of the table it changes."""
    conn = sqlite3.connect(config.path)
    for trigger in ("events_no_update", "merkle_nodes_no_update", "merkle_nodes_no_delete"):
        conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    conn.execute(statement, params)
    conn.commit()
    conn.close()


def _set_data(config: StoreConfig, position: int, data: bytes) -> None:
    _sql(config, "UPDATE events SET data = ? WHERE position = ?", (data, position))


async def test_stored_data_is_the_canonical_bytes(tmp_path: Path) -> None:
    config = await _filled(tmp_path)
    conn = sqlite3.connect(config.path)
    assert conn.execute("SELECT data FROM events WHERE position = 10").fetchone() == (CANONICAL,)
    conn.close()
    assert (await _verify(config)).ok


@pytest.mark.parametrize(
    "edited",
    [
        CANONICAL + b" ",  # trailing whitespace
        CANONICAL.replace(b'"a":1,', b'"a": 1,'),  # inner whitespace
        b'{"b":"caf\xc3\xa9","a":1,"n":1.5,"s":"x y"}',  # key order
        CANONICAL.replace(b"caf\xc3\xa9", b"caf\\u00e9"),  # escaped unicode
        CANONICAL.replace(b"x y", b"x\\u0020y"),  # escaped ASCII
        CANONICAL.replace(b"1.5", b"1.50"),  # number format
        CANONICAL.replace(b"1.5", b"15e-1"),  # exponent form
        CANONICAL.replace(b'"a":1', b'"a":1.0'),  # int as float
    ],
    ids=[
        "trailing-space",
        "inner-space",
        "key-order",
        "escaped-unicode",
        "escaped-ascii",
        "trailing-zero",
        "exponent",
        "int-as-float",
    ],
)
async def test_every_byte_edit_that_decodes_the_same_is_caught(
    tmp_path: Path, edited: bytes
) -> None:
    config = await _filled(tmp_path)
    _set_data(config, 10, edited)
    report = await _verify(config)
    assert not report.ok
    assert [(p.position, p.kind) for p in report.problems] == [(10, "edited")]


async def test_stored_as_text_instead_of_blob_is_still_hashed_as_stored(tmp_path: Path) -> None:
    config = await _filled(tmp_path)
    conn = sqlite3.connect(config.path)
    conn.execute("DROP TRIGGER IF EXISTS events_no_update")
    conn.execute("UPDATE events SET data = CAST(data AS TEXT) || ' ' WHERE position = 4")
    conn.commit()
    conn.close()
    report = await _verify(config)
    assert [(p.position, p.kind) for p in report.problems] == [(4, "edited")]


async def test_undecodable_record_is_reported_at_its_position_and_verify_goes_on(
    tmp_path: Path,
) -> None:
    config = await _filled(tmp_path)
    _set_data(config, 5, b'{"i":5,\x00\x01\x02\x03}')
    _set_data(config, 20, b"[not json")
    report = await _verify(config)
    assert [(p.position, p.kind) for p in report.problems] == [(5, "edited"), (20, "edited")]
    assert report.records_checked == 30
    store = await SqliteEventStore.open(StoreConfig(path=config.path, readonly=True))
    try:  # readers name the record instead of failing with a bare JSON error
        with pytest.raises(StoreCorrupt, match="position 5 cannot be decoded"):
            await store.read_all(1, limit=10)
    finally:
        await store.close()


def _page_of(path: Path, root_name: str) -> tuple[int, int]:
    """(offset, size) of the root page of a table or index in the (checkpointed) file."""
    conn = sqlite3.connect(path)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    root = conn.execute(
        "SELECT rootpage FROM sqlite_master WHERE name = ?", (root_name,)
    ).fetchone()
    conn.close()
    return (root[0] - 1) * page_size, page_size


def _overwrite(path: Path, offset: int, size: int, needle: bytes, replacement: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        page = fh.read(size)
        at = page.find(needle)
        assert at >= 0, f"{needle!r} not in the page"
        fh.seek(offset + at)
        fh.write(replacement)


async def test_an_edited_record_is_not_blamed_on_the_tree_above_it(tmp_path: Path) -> None:
    config = await _filled(tmp_path, 40)  # tree notes at 40; nodes 4/0, 4/1, 5/0
    _set_data(config, 20, b'{"i":99,"tag":"t0019"}')
    report = await _verify(config)
    # 4/1 and 5/0 cover position 20 and the note's root covers it: the record is the damage
    assert [(p.position, p.kind) for p in report.problems] == [(20, "edited")]
    assert report.tree_nodes_checked == 1


async def test_corrupted_bytes_in_a_table_page_are_edited_records(tmp_path: Path) -> None:
    config = await _filled(tmp_path, 10)
    offset, size = _page_of(config.path, "events")
    # 8 bytes of the payload of record i=6 (position 7) overwritten in the file itself
    _overwrite(config.path, offset, size, b'"tag":"t0006"', b'"tag"\x7f\x00\x01\xff\xfe\xfd\xfc"')
    report = await _verify(config)
    assert (7, "edited") in [(p.position, p.kind) for p in report.problems]
    assert report.records_checked == 10


async def test_index_page_corruption_is_caught(tmp_path: Path) -> None:
    config = await _filled(tmp_path, 10)
    offset, size = _page_of(config.path, "events_type_position")
    # The index now files one Type1 record under "Typf1": lookups by type drop it.
    _overwrite(config.path, offset, size, b"Type1", b"Typf1")
    report = await _verify(config)
    kinds = {p.kind for p in report.problems}
    assert "index_mismatch" in kinds and "integrity" in kinds, report.problems
    mismatch = next(p for p in report.problems if p.kind == "index_mismatch")
    assert "events_type_position" in mismatch.detail and "'Type1'" in mismatch.detail


async def test_missing_checkpoint_file_is_damage(tmp_path: Path) -> None:
    config = await _filled(tmp_path, 5)
    os.remove(config.checkpoints)
    report = await _verify(config)
    assert [(p.position, p.kind) for p in report.problems] == [(0, "checkpoint_file_missing")]


async def test_fresh_store_without_checkpoints_needs_no_file(tmp_path: Path) -> None:
    config = StoreConfig(path=tmp_path / "events.db", checkpoint_every=10**9)
    store = await SqliteEventStore.open(config)
    await store.append("s", [NewEvent(type="T")])
    await store._close_backend()  # no final checkpoint: nothing was ever written to the file
    store._closed = True
    assert not config.checkpoints.exists()
    assert (await _verify(config)).ok


def test_cli_progress_goes_to_stderr_only_when_asked(tmp_path: Path) -> None:
    import asyncio
    import subprocess
    import sys

    config = asyncio.run(_filled(tmp_path, 12))

    def verify(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bridge.cli", "verify", "--db", str(config.path), *extra],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    quiet = verify()
    assert quiet.returncode == 0 and quiet.stderr == ""  # not a TTY: no progress
    assert quiet.stdout.startswith("OK: 12 events")
    shown = verify("--progress")
    assert shown.returncode == 0 and shown.stdout == quiet.stdout
    assert "verifying: 12/12 (100%" in shown.stderr


# -- the transparency log (the kinds both backends report are in tests/conformance) --------


async def _big(tmp_path: Path, n: int) -> StoreConfig:
    """`n` events in batches of 100 (several verify pages; a tree note every 1000)."""
    config = StoreConfig(path=tmp_path / "events.db", checkpoint_interval=0)
    store = await SqliteEventStore.open(config)
    for start in range(0, n, 100):
        await store.append(
            "s", [NewEvent(type="T", data={"i": i}) for i in range(start, start + 100)]
        )
    await store.close()
    return config


async def test_tree_damage_across_pages_is_found_with_its_positions(tmp_path: Path) -> None:
    config = await _big(tmp_path, 12_000)  # pages of 5000: node 13/0 completes in the second
    assert (await _verify(config)).ok
    wrong = "(SELECT hash FROM merkle_nodes WHERE level = 4 AND idx = 0)"
    _sql(config, f"UPDATE merkle_nodes SET hash = {wrong} WHERE level = 13 AND idx = 0")
    _sql(config, f"UPDATE merkle_nodes SET hash = {wrong} WHERE level = 4 AND idx = 700")
    _sql(config, "DELETE FROM merkle_nodes WHERE level = 5 AND idx = 300")
    report = await _verify(config)
    assert [(p.position, p.kind, p.detail) for p in report.problems] == [
        (
            1,
            "tree_node_mismatch",
            "stored Merkle node 13/0 (positions 1..8192) does not match the records: "
            "proofs through it are wrong",
        ),
        (9601, "tree_node_missing", "Merkle node 5/300 (positions 9601..9632) is not stored"),
        (
            11201,
            "tree_node_mismatch",
            "stored Merkle node 4/700 (positions 11201..11216) does not match the records: "
            "proofs through it are wrong",
        ),
    ]
    assert report.tree_notes_checked == 12


def _break_leaf_page_holding(path: Path, value: bytes) -> None:
    """Make the table leaf page that stores `value` malformed (its page type byte zeroed),
    as a bad sector would: every read through that page fails."""
    data = path.read_bytes()
    conn = sqlite3.connect(path)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    at = data.find(value)
    while at >= 0 and data[at - at % page_size] not in (0x0A, 0x0D):  # a leaf page
        at = data.find(value, at + 1)
    assert at >= 0, "value not on a leaf page"
    with open(path, "r+b") as fh:
        fh.seek(at - at % page_size)
        fh.write(b"\x00")


async def test_a_damaged_page_of_tree_nodes_is_reported_and_the_rest_judged(
    tmp_path: Path,
) -> None:
    config = await _big(tmp_path, 12_000)
    wrong = "(SELECT hash FROM merkle_nodes WHERE level = 4 AND idx = 0)"
    _sql(config, f"UPDATE merkle_nodes SET hash = {wrong} WHERE level = 4 AND idx = 100")
    _sql(config, f"UPDATE merkle_nodes SET hash = {wrong} WHERE level = 4 AND idx = 700")
    conn = sqlite3.connect(config.path)
    (node,) = conn.execute("SELECT hash FROM merkle_nodes WHERE level = 4 AND idx = 400").fetchone()
    conn.close()
    _break_leaf_page_holding(config.path, node)
    report = await _verify(config)  # before: the first lookup through the page aborted verify
    kinds = [(p.position, p.kind) for p in report.problems if p.kind != "integrity"]
    unreadable = [p for p in report.problems if p.kind == "unreadable"]
    assert len(unreadable) == 1, report.problems
    first, last = map(int, unreadable[0].detail.split("positions ")[1].split(" ")[0].split(".."))
    assert first <= 6401 and last >= 6416  # node 4/400 is among the nodes that cannot be read
    assert first > 1616 and last < 11201  # ... and only the nodes of the damaged page
    assert unreadable[0].detail.endswith(
        "cannot be read: read failed: database disk image is malformed"
    )
    assert kinds == [
        (1601, "tree_node_mismatch"),
        (first, "unreadable"),
        (11201, "tree_node_mismatch"),
    ]
    assert report.records_checked == 12_000
    assert report.tree_notes_checked == 12


async def test_unreadable_stored_tree_notes_leave_the_file_notes_judged(tmp_path: Path) -> None:
    config = await _big(tmp_path, 3000)  # notes at 1000, 2000, 3000, also in the file
    conn = sqlite3.connect(config.path)
    (note,) = conn.execute("SELECT note FROM tlog_checkpoints WHERE size = 2000").fetchone()
    conn.close()
    _break_leaf_page_holding(config.path, note.encode())
    forged = _signed_note(config, await _store_id(config), 1500, bytes(32))
    TreeCheckpointFile(tree_checkpoint_path(config.checkpoints)).append(forged)
    report = await _verify(config)
    # the store's copies are unreadable, so the file's are not reported as removed from it
    assert [(p.position, p.kind) for p in report.problems if p.kind != "integrity"] == [
        (0, "unreadable"),
        (1500, "tree_root_mismatch"),
    ]
    assert report.problems[-1].detail.startswith("tree note at size 1500 in the file signs root")
    assert next(p for p in report.problems if p.kind == "unreadable").detail == (
        "the stored tree notes cannot be read: read failed: database disk image is malformed"
    )


def _signed_note(config: StoreConfig, store_id: str, size: int, root: bytes) -> TreeCheckpoint:
    """A note the store's own key signs over `root`: what a stolen key or a bug would sign."""
    origin = origin_of(store_id)
    signer = CheckpointSigner.load(config.signing_key_file, create=False).note_signer(origin)
    return TreeCheckpoint(size, sign_tree_head(signer, TreeHead(origin, size, root)))


async def _store_id(config: StoreConfig) -> str:
    store = await SqliteEventStore.open(StoreConfig(path=config.path, readonly=True))
    await store.close()
    return store.store_id


async def test_a_validly_signed_note_over_another_root_is_reported(tmp_path: Path) -> None:
    config = await _filled(tmp_path, 30)
    forged = _signed_note(config, await _store_id(config), 20, bytes(32))
    TreeCheckpointFile(tree_checkpoint_path(config.checkpoints)).append(forged)
    report = await _verify(config)
    assert [(p.position, p.kind) for p in report.problems] == [(20, "tree_root_mismatch")]
    assert report.problems[0].detail.startswith(
        "tree note at size 20 in the file signs root AAAAAAAA"
    )


async def test_a_tree_note_beyond_the_log_is_a_cut_tail(tmp_path: Path) -> None:
    config = await _filled(tmp_path, 30)
    later = _signed_note(config, await _store_id(config), 45, bytes(32))
    TreeCheckpointFile(tree_checkpoint_path(config.checkpoints)).append(later)
    report = await _verify(config)
    assert [(p.position, p.kind, p.detail) for p in report.problems] == [
        (31, "truncated", "a signed tree note covers 45 events; the store ends at 30")
    ]


def test_cli_reports_tree_damage_with_exit_code_1(tmp_path: Path) -> None:
    import asyncio
    import subprocess
    import sys

    config = asyncio.run(_filled(tmp_path, 40))

    def verify() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bridge.cli", "verify", "--db", str(config.path)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )

    ok = verify()
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Merkle tree (3 stored nodes) and 1 signed tree notes hold" in ok.stdout
    _sql(config, "UPDATE merkle_nodes SET hash = zeroblob(32) WHERE level = 4 AND idx = 1")
    bad = verify()
    assert bad.returncode == 1
    assert bad.stdout == (
        "FAILED at position 17: tree_node_mismatch: stored Merkle node 4/1 (positions 17..32) "
        "does not match the records: proofs through it are wrong\n"
    )
