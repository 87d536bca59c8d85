"""The SQLite backend: the shared conformance suite plus what only SQLite can show."""

from __future__ import annotations

from pathlib import Path

from events import EventStore, SqliteEventStore, StoreConfig
from tests.conformance.store_suite import EventStoreConformance


class TestSqliteConformance(EventStoreConformance):
    def make_config(self, tmp_path: Path, **overrides: object) -> StoreConfig:
        return StoreConfig(path=tmp_path / "events.db", **overrides)  # type: ignore[arg-type]

    async def open_store(self, config: StoreConfig) -> EventStore:
        return await SqliteEventStore.open(config)

    async def tamper(self, config: StoreConfig, *statements: str) -> None:
        _tamper(config, *statements)


# -- what only the SQLite file shows -----------------------------------------------------

import json  # noqa: E402
import sqlite3  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

from events import NewEvent, StoreError, StoreLocked  # noqa: E402
from events.schema import migrate_sqlite  # noqa: E402
from events.sqlite import migrate  # noqa: E402
from events.verify import VerifyReport  # noqa: E402

_suite = TestSqliteConformance()


async def _filled(tmp_path: Path, n: int = 20, **overrides: object) -> StoreConfig:
    config = _suite.make_config(tmp_path, **overrides)
    store = await SqliteEventStore.open(config)
    for i in range(n):
        await store.append(f"s{i % 4}", [NewEvent(type="T", data={"i": i}, actor="a")])
    await store.close()
    return config


def _tamper(config: StoreConfig, *statements: str) -> None:
    """Run `statements` past every append-only trigger (events, checkpoints, tree)."""
    conn = sqlite3.connect(config.path)
    triggers = conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall()
    for (trigger,) in triggers:
        conn.execute(f"DROP TRIGGER {trigger}")
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()


async def _verify(config: StoreConfig) -> VerifyReport:
    store = await SqliteEventStore.open(StoreConfig(path=config.path, readonly=True))
    try:
        return await _suite.verify(store, config)
    finally:
        await store.close()


def test_triggers_refuse_update_and_delete(tmp_path: Path) -> None:
    import asyncio

    config = asyncio.run(_filled(tmp_path, 3))
    conn = sqlite3.connect(config.path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE events SET actor = 'mallory' WHERE position = 1")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM events WHERE position = 3")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM checkpoints")
    conn.close()


@pytest.mark.parametrize(
    ("statements", "kind", "position"),
    [
        (["UPDATE events SET data = '{\"i\":99}' WHERE position = 7"], "edited", 7),
        (["UPDATE events SET actor = 'mallory' WHERE position = 3"], "edited", 3),
        (["UPDATE events SET digest = hash WHERE position = 5"], "edited", 5),
        (["DELETE FROM events WHERE position = 9"], "missing", 9),
        (
            [
                "UPDATE events SET position = -12 WHERE position = 12",
                "UPDATE events SET position = 12 WHERE position = 13",
                "UPDATE events SET position = 13 WHERE position = -12",
            ],
            "reordered",
            12,
        ),
        (
            ["UPDATE events SET prev_hash = 'ab' || substr(prev_hash, 3) WHERE position = 4"],
            "broken_link",
            4,
        ),
    ],
    ids=["edited-data", "edited-actor", "edited-digest", "missing", "reordered", "broken-link"],
)
async def test_verify_names_first_bad_position(
    tmp_path: Path, statements: list[str], kind: str, position: int
) -> None:
    config = await _filled(tmp_path)
    assert (await _verify(config)).ok
    _tamper(config, *statements)
    report = await _verify(config)
    assert not report.ok
    assert report.first is not None
    assert (report.first.kind, report.first.position) == (kind, position)


async def test_truncated_tail_caught_by_checkpoint_file(tmp_path: Path) -> None:
    config = await _filled(tmp_path, 20)
    # The attacker cuts the tail, the database checkpoints, and the sequence high-water mark:
    # only the checkpoint file outside the database still knows the log had 20 events.
    _tamper(
        config,
        "DELETE FROM events WHERE position > 15",
        "DELETE FROM checkpoints",
        "UPDATE sqlite_sequence SET seq = 15 WHERE name = 'events'",
    )
    report = await _verify(config)
    assert report.first is not None
    assert (report.first.kind, report.first.position) == ("truncated", 16)
    assert "covers 20 events" in report.first.detail


async def test_truncated_tail_refuses_writer_and_positions_are_not_reused(
    tmp_path: Path,
) -> None:
    config = await _filled(tmp_path, 10)
    _tamper(config, "DELETE FROM events WHERE position > 8")
    with pytest.raises(StoreError, match=r"positions 9\.\.10 were removed"):
        await SqliteEventStore.open(config)
    conn = sqlite3.connect(config.path)
    assert conn.execute("SELECT seq FROM sqlite_sequence WHERE name='events'").fetchone() == (10,)
    conn.close()


async def test_forged_checkpoint_in_file_is_reported(tmp_path: Path) -> None:
    config = await _filled(tmp_path, 5)
    lines = config.checkpoints.read_text().splitlines()
    forged = json.loads(lines[-1]) | {"size": 50}
    config.checkpoints.write_text("\n".join([*lines, json.dumps(forged)]) + "\n")
    report = await _verify(config)
    assert [p.kind for p in report.problems] == ["checkpoint_forged"]


async def test_key_mismatch_reported_by_verify(tmp_path: Path) -> None:
    config = await _filled(tmp_path, 3)
    config.chain_key_file.write_text("B" * 43 + "\n")
    report = await _verify(config)
    assert report.first is not None
    assert (report.first.kind, report.first.position) == ("key_mismatch", 0)


async def test_second_writer_gets_error_naming_holder(tmp_path: Path) -> None:
    config = _suite.make_config(tmp_path)
    first = await SqliteEventStore.open(config)
    try:
        with pytest.raises(StoreLocked, match=r"already open for writing by pid \d+"):
            await SqliteEventStore.open(config)
        reader = await SqliteEventStore.open(StoreConfig(path=config.path, readonly=True))
        await first.append("s", [NewEvent(type="T")])
        assert len(await reader.read_all()) == 1
        await reader.close()
    finally:
        await first.close()


def test_lock_held_by_another_process(tmp_path: Path) -> None:
    config = _suite.make_config(tmp_path)
    code = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from events import SqliteEventStore, StoreConfig\n"
        "async def main():\n"
        f"    s = await SqliteEventStore.open(StoreConfig(path=Path({str(config.path)!r})))\n"
        "    print('ready', flush=True)\n"
        "    sys.stdin.readline()\n"
        "    await s.close()\n"
        "asyncio.run(main())\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        import asyncio

        with pytest.raises(StoreLocked, match=f"pid {holder.pid}"):
            asyncio.run(SqliteEventStore.open(config))
    finally:
        holder.communicate("\n", timeout=30)


def test_migrations_apply_once_and_refuse_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    assert migrate(path) == [1, 2]
    assert migrate(path) == []
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO schema_version VALUES (999, 'future', 0)")
    conn.commit()
    with pytest.raises(StoreError, match="newer than this release"):
        migrate_sqlite(conn)
    conn.close()


# -- damage a writer refuses, and faults it survives ----------------------------------

import asyncio  # noqa: E402
import os  # noqa: E402
import stat  # noqa: E402

from events import StoreDamaged, StoreReadOnly  # noqa: E402
from events import sqlite as sqlite_backend  # noqa: E402


def _cut_like_a_lost_wal(config: StoreConfig, keep: int) -> None:
    """What a truncated WAL leaves: the rows, the checkpoints and the sequence after `keep`
    are gone from the database; only the checkpoint file outside still knows."""
    _tamper(
        config,
        f"DELETE FROM events WHERE position > {keep}",
        "DELETE FROM checkpoints",
        f"UPDATE sqlite_sequence SET seq = {keep} WHERE name = 'events'",
    )


async def test_writer_refuses_a_store_cut_below_the_checkpoint_file(tmp_path: Path) -> None:
    config = await _filled(tmp_path, 20)
    _cut_like_a_lost_wal(config, 15)
    with pytest.raises(StoreDamaged, match=r"covers 20 events but the store ends at 15") as err:
        await SqliteEventStore.open(config)
    assert err.value.kind == "truncated" and err.value.reason == "store_damaged"
    store = await SqliteEventStore.open(StoreConfig(path=config.path, accept_damage=True))
    try:  # accepted: new events continue after every position a signed checkpoint covers
        assert await store.append("s", [NewEvent(type="After")]) == [21]
    finally:
        await store.close()
    reopened = await SqliteEventStore.open(config)  # no longer refused: nothing is reused
    assert (await reopened.head()).position == 21
    await reopened.close()


async def test_writer_refuses_a_store_whose_checkpoint_file_is_gone(tmp_path: Path) -> None:
    config = await _filled(tmp_path, 5)
    os.remove(config.checkpoints)
    with pytest.raises(StoreDamaged, match=r"checkpoint file .* is missing") as err:
        await SqliteEventStore.open(config)
    assert err.value.kind == "checkpoint_file_missing"
    store = await SqliteEventStore.open(StoreConfig(path=config.path, accept_damage=True))
    await store.append("s", [NewEvent(type="After")])
    await store.close()
    assert config.checkpoints.exists()  # the close wrote a new checkpoint file


def test_store_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        config = StoreConfig(path=tmp_path / "new" / "deeper" / "events.db")

        async def run() -> None:
            store = await SqliteEventStore.open(config)
            await store.append("s", [NewEvent(type="T")])
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in config.path.parent.iterdir()}
            await store.close()
            assert modes["events.db-wal"] == modes["events.db-shm"] == 0o600, modes

        asyncio.run(run())
    finally:
        os.umask(old)
    for path in [config.path, config.checkpoints, config.chain_key_file, config.signing_key_file]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for directory in [config.path.parent, config.path.parent.parent, config.keys]:
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory


async def test_read_only_database_file_is_refused_at_open(tmp_path: Path) -> None:
    config = await _filled(tmp_path, 3)
    # root ignores permission bits, so make the file immutable, which binds root too
    if subprocess.run(["chattr", "+i", str(config.path)], capture_output=True).returncode:
        os.chmod(config.path, 0o444)
        if os.access(config.path, os.W_OK):
            pytest.skip("cannot make a file read-only here (no chattr, running as root)")
    try:
        with pytest.raises(StoreReadOnly, match="is not writable") as err:
            await SqliteEventStore.open(config)
        assert err.value.reason == "store_read_only"
    finally:
        subprocess.run(["chattr", "-i", str(config.path)], capture_output=True)
        os.chmod(config.path, 0o600)
    await (await SqliteEventStore.open(config)).close()  # the lock was released


async def test_wal_checkpointer_retries_after_errors_and_reports_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failures = {"left": 2}
    real = sqlite_backend._passive_checkpoint

    def flaky(conn: sqlite3.Connection) -> tuple[int, int, int]:
        if failures["left"]:
            failures["left"] -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return real(conn)

    monkeypatch.setattr(sqlite_backend, "_WAL_CHECKPOINT_S", 0.05)
    monkeypatch.setattr(sqlite_backend, "_passive_checkpoint", flaky)
    store = await SqliteEventStore.open(_suite.make_config(tmp_path))
    try:
        await store.append("s", [NewEvent(type="T")])
        for _ in range(100):
            if store.health()["status"] == "degraded":
                break
            await asyncio.sleep(0.02)
        health = store.health()
        assert health["reason"] == "store_full"
        assert health["failing"][0]["component"] == "wal_checkpoint"
        for _ in range(200):
            if store.health()["status"] == "ok" and store.wal.last_ok:
                break
            await asyncio.sleep(0.02)
        assert store.health()["status"] == "ok"
        assert store.wal.errors == 2 and store.wal.running
    finally:
        await store.close()


async def test_close_releases_the_store_when_the_final_checkpoint_fails(tmp_path: Path) -> None:
    config = _suite.make_config(tmp_path)
    store = await SqliteEventStore.open(config)
    await store.append("s", [NewEvent(type="T")])
    config.checkpoints.unlink(missing_ok=True)
    config.checkpoints.mkdir()  # appending to "the file" now fails with EISDIR
    await store.close()
    config.checkpoints.rmdir()
    other = await SqliteEventStore.open(dataclasses_replace(config, accept_damage=True))
    await other.close()


def dataclasses_replace(config: StoreConfig, **changes: object) -> StoreConfig:
    import dataclasses

    return dataclasses.replace(config, **changes)  # type: ignore[arg-type]


async def test_append_failures_degrade_health_and_it_recovers_by_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await SqliteEventStore.open(_suite.make_config(tmp_path))
    real = store._commit_sync
    broken = {"on": True}

    def commit(batch):  # type: ignore[no-untyped-def]
        if broken["on"]:
            exc = sqlite3.OperationalError("database or disk is full")
            return [sqlite_backend.store_error(exc, "append failed")] * len(batch)
        return real(batch)

    monkeypatch.setattr(store, "_commit_sync", commit)
    real_probe = store._probe

    async def probe() -> None:
        if broken["on"]:
            raise sqlite_backend.store_error(
                sqlite3.OperationalError("database or disk is full"), "probe"
            )
        await real_probe()

    monkeypatch.setattr(store, "_probe", probe)
    try:
        with pytest.raises(StoreError) as err:
            await store.append("s", [NewEvent(type="T")])
        assert err.value.reason == "store_full" and err.value.retry_after
        assert store.health()["status"] == "degraded"
        broken["on"] = False
        for _ in range(100):  # no append comes: the probe notices the store writes again
            if store.health()["status"] == "ok":
                break
            await asyncio.sleep(0.05)
        assert store.health()["status"] == "ok"
        assert await store.append("s", [NewEvent(type="T")]) == [1]
    finally:
        await store.close()


async def test_a_store_without_a_merkle_tree_gets_one_built_and_its_old_checkpoints_verify(
    tmp_path: Path,
) -> None:
    """A store written before the tree (no node rows, no tree checkpoints) is migrated."""
    from events import merkle
    from events.tlog import inclusion_proof, leaf_of, tree_root

    config = await _filled(tmp_path, n=45)
    conn = sqlite3.connect(config.path)
    for table in ("merkle_nodes", "tlog_checkpoints"):
        conn.execute(f"DROP TRIGGER {table}_no_delete")
        conn.execute(f"DELETE FROM {table}")
    conn.commit()
    conn.close()
    store = await SqliteEventStore.open(config)
    try:
        records = await store.read_all(1, limit=None)
        root = merkle.root_from_leaves([leaf_of(r) for r in records])
        assert await tree_root(store, 45) == root
        [cp] = await store.tree_checkpoints()  # signed at open over the rebuilt tree
        assert cp.size == 45
        proof = await inclusion_proof(store, 30, 45)
        merkle.verify_inclusion(leaf_of(records[30]), 30, 45, proof, root)
    finally:
        await store.close()
    report = await _verify(config)
    assert report.ok, report.problems
