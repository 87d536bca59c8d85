"""Sealing and opening against a shared (PostgreSQL) vault never read it on the event loop:
data keys not cached come from the vault's worker thread (bridge/vault_io.py), a key that
cannot be had is answered from memory afterwards, and a vault out of reach is no verdict.

Real pieces: the machine's PostgreSQL vault, a SQLite event store, the bridge's Log and
Sealer. Every row read of the vault records the thread it ran on."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bridge.domain import MESSAGE_SENT
from bridge.log import Log
from bridge.sealing import UNREADABLE, Sealer, SealError
from events import SqliteEventStore, StoreConfig, StoreError
from events.postgres import migrate
from security import DataKeys
from security.pgvault import PostgresSecretVault
from tests.pgtools import ADMIN_URL, drop_created, fresh_database
from tests.security.vault_suite import write_key

STREAM = "mailbox-bob"


@pytest.fixture(scope="module", autouse=True)
def _drop_databases() -> Iterator[None]:
    yield
    drop_created()


def sql(url: str, query: str, *params: object) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(query, params or None)


class WatchedVault(PostgresSecretVault):
    """The PostgreSQL vault, noting the thread of every row it reads."""

    fetched_on: list[threading.Thread]

    def _fetch(self, key_id: str) -> tuple[bytes, bytes] | None:
        self.fetched_on.append(threading.current_thread())
        return super()._fetch(key_id)


class Place:
    """One store and one shared vault; `bridge()` is another bridge's view of them, with
    nothing cached (as a bridge that never read these keys). The store is SQLite, one
    writer, so the views share its handle: only the vault matters here."""

    def __init__(self, tmp_path: Path) -> None:
        self.url = fresh_database("seal_off_loop")
        self.key = write_key(tmp_path, os.urandom(32))
        self.db = tmp_path / "store.db"
        self.opened: list[Any] = []
        self.seal_failures = 0

    async def bridge(self) -> tuple[Log, WatchedVault, Sealer]:
        if not self.opened:
            await migrate(self.url)
            self.opened.append(await SqliteEventStore.open(StoreConfig(path=self.db)))
        store = self.opened[0]
        vault = WatchedVault.open(self.url, self.key, fresh_install=True)
        vault.fetched_on = []

        def failed() -> None:
            self.seal_failures += 1

        sealer = Sealer(store.store_id, DataKeys(vault), on_seal_failure=failed)
        self.opened.append(vault)
        return Log(store, [], sealer=sealer), vault, sealer

    async def close(self) -> None:
        for thing in reversed(self.opened):
            result = thing.close()
            if asyncio.iscoroutine(result):
                await result


async def _alice_writes(log: Log, content: str) -> None:
    await log.append_events(STREAM, "alice", [(MESSAGE_SENT, {"to": "bob", "content": content})])


async def test_a_data_key_row_that_is_missing_is_read_once_off_the_loop(tmp_path: Path) -> None:
    place = Place(tmp_path)
    try:
        writer, written_by, _ = await place.bridge()
        await _alice_writes(writer, "hello bob")
        assert written_by.fetched_on == []  # made here: cached as it was stored
        sql(place.url, "DELETE FROM key_vault WHERE key_id LIKE 'dk:alice:%%'")

        reader, vault, sealer = await place.bridge()
        for _ in range(3):
            [record] = await reader.read_stream(STREAM)
            assert record.data["content"] == UNREADABLE
        assert len(vault.fetched_on) == 1, "the missing row is asked for once"
        assert vault.fetched_on[0].name.startswith("lighthouse-vault")  # its own thread
        [key_id] = {f.reason.split()[2] for f in sealer.failures}
        assert key_id.startswith("dk:alice:")
        assert [f.reason for f in sealer.failures] == [f"data key {key_id} is not in the vault"] * 3
    finally:
        await place.close()


async def test_an_author_without_a_readable_key_fails_the_append_off_the_loop(
    tmp_path: Path,
) -> None:
    """alice's data key row no longer decrypts (copied from another key's row): her next
    content, on a bridge that has not cached the key, is refused as a seal failure — the
    vault read in its thread — and nothing is appended."""
    place = Place(tmp_path)
    try:
        writer, _, _ = await place.bridge()
        await _alice_writes(writer, "hello bob")
        await writer.append_events("mailbox-alice", "carol", [(MESSAGE_SENT, {"content": "hi"})])
        sql(
            place.url,
            "UPDATE key_vault SET (nonce, ciphertext) = (SELECT nonce, ciphertext FROM key_vault"
            " WHERE key_id LIKE 'dk:carol:%%') WHERE key_id LIKE 'dk:alice:%%'",
        )
        other, vault, _ = await place.bridge()
        with pytest.raises(SealError, match=r"MessageSent: secret of dk:alice:\S+ does not"):
            await _alice_writes(other, "again")
        assert place.seal_failures == 1
        assert vault.fetched_on and threading.current_thread() not in vault.fetched_on
        assert len(await other.read_stream(STREAM)) == 1  # nothing written
    finally:
        await place.close()


async def test_a_vault_out_of_reach_is_no_verdict_on_a_record(tmp_path: Path) -> None:
    """The database refuses connections while a bridge first reads alice's key: the read is
    the store's 503 (`StoreError`), not an unreadable record, and once the database is back
    the same record opens."""
    place = Place(tmp_path)
    name = place.url.rsplit("/", 1)[1]
    try:
        writer, _, _ = await place.bridge()
        await _alice_writes(writer, "hello bob")
        reader, vault, sealer = await place.bridge()
        sql(ADMIN_URL, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        terminate = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s"
        sql(ADMIN_URL, terminate, name)
        with pytest.raises(StoreError):
            await reader.read_stream(STREAM)
        assert sealer.failures == []
        sql(ADMIN_URL, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await asyncio.sleep(1.1)  # the vault's backoff after a failed connection
        [record] = await reader.read_stream(STREAM)
        assert record.data["content"] == "hello bob"
        assert threading.current_thread() not in vault.fetched_on
    finally:
        sql(ADMIN_URL, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await place.close()
