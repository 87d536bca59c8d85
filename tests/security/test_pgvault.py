"""The PostgreSQL secret vault against the machine's PostgreSQL: the shared suite, then
what only a vault shared by several bridges has to get right — the key check row, the
first bridge's master key winning a race, the one-time import of a local vault, and a
database that goes away."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from events import StoreError
from events.postgres import migrate
from security import MasterKeyError, SecretVault, SQLiteSecretVault, VaultError
from security.pgvault import PostgresSecretVault, VaultUnavailable
from tests.pgtools import ADMIN_URL, drop_created, fresh_database
from tests.security.vault_suite import SecretVaultConformance, write_key


@pytest.fixture(scope="module", autouse=True)
def _drop_databases() -> Iterator[None]:
    yield
    drop_created()


def migrated_database() -> str:
    url = fresh_database("vault")
    asyncio.run(migrate(url))
    return url


def sql(url: str, query: str, *params: object) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params or None)
        return cur.fetchall() if cur.description else []


class Place:
    def __init__(self, url: str, tmp_path: Path) -> None:
        self.url, self.tmp_path = url, tmp_path

    def key_file(self, master: bytes) -> Path:
        return write_key(self.tmp_path / f"keys-{master.hex()[:8]}", master)


class TestPostgresVault(SecretVaultConformance):
    def place(self, tmp_path: Path) -> Place:
        return Place(migrated_database(), tmp_path)

    def open_vault(self, where: Place, master: bytes) -> SecretVault:
        return PostgresSecretVault.open(where.url, where.key_file(master), fresh_install=True)

    def copy_row(self, where: Place, source: str, target: str) -> None:
        sql(
            where.url,
            "UPDATE key_vault SET (nonce, ciphertext) = "
            "(SELECT nonce, ciphertext FROM key_vault WHERE key_id = %s) WHERE key_id = %s",
            source,
            target,
        )


def test_the_key_check_refuses_another_master_key_before_any_secret(tmp_path: Path) -> None:
    url = migrated_database()
    (tmp_path / "a").mkdir()
    first = PostgresSecretVault.open(url, tmp_path / "a" / "master.key", fresh_install=True)
    first.close()  # initialized: the check row, no secret yet
    assert sql(url, "SELECT count(*) FROM key_vault") == [(0,)]
    [(check_before,)] = sql(url, "SELECT tag FROM key_vault_check")
    other = write_key(tmp_path / "b", os.urandom(32))
    with pytest.raises(MasterKeyError, match=r"key check fails.*copy master\.key"):
        PostgresSecretVault.open(url, other, fresh_install=True)
    assert sql(url, "SELECT tag FROM key_vault_check") == [(check_before,)]  # nothing written
    missing = tmp_path / "c" / "master.key"
    missing.parent.mkdir()
    with pytest.raises(MasterKeyError, match="is missing but the PostgreSQL vault is initial"):
        PostgresSecretVault.open(url, missing, fresh_install=True)
    assert not missing.exists()  # never a new key beside an initialized vault
    reopened = PostgresSecretVault.open(url, tmp_path / "a" / "master.key")
    assert reopened.check() == 0
    reopened.close()


def test_bridges_racing_on_a_fresh_vault_leave_one_master_key(tmp_path: Path) -> None:
    url = migrated_database()
    files = [tmp_path / f"bridge{i}" / "master.key" for i in range(4)]
    for f in files:
        f.parent.mkdir()
    outcomes: list[object] = [None] * len(files)
    start = threading.Barrier(len(files))

    def open_one(i: int) -> None:
        start.wait()
        try:
            PostgresSecretVault.open(url, files[i], fresh_install=True).close()
            outcomes[i] = "opened"
        except MasterKeyError as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=open_one, args=(i,)) for i in range(len(files))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count("opened") == 1, outcomes
    winner = outcomes.index("opened")
    assert [f.exists() for f in files] == [i == winner for i in range(len(files))]
    assert all("is missing" in str(o) for o in outcomes if o != "opened")


def test_read_only_commands_refuse_an_uninitialized_vault(tmp_path: Path) -> None:
    url = migrated_database()
    key = write_key(tmp_path, os.urandom(32))
    with pytest.raises(VaultError, match="not initialized yet"):
        PostgresSecretVault.open(url, key, initialize=False)
    with pytest.raises(MasterKeyError, match="not found"):
        PostgresSecretVault.open(url, tmp_path / "none.key")  # not a fresh install
    bare = fresh_database("vault")  # no migrations: no table
    with pytest.raises(VaultError, match="lighthouse migrate"):
        PostgresSecretVault.open(bare, key, fresh_install=True)
    assert sql(url, "SELECT count(*) FROM key_vault_check") == [(0,)]


def _local_vault(path: Path, master: bytes, rows: dict[str, bytes]) -> None:
    local = SQLiteSecretVault(path, master)
    for key_id, secret in rows.items():
        local.put(key_id, secret)
    local.close()


def test_a_local_vault_of_an_earlier_release_is_moved_once(tmp_path: Path) -> None:
    url, master = migrated_database(), os.urandom(32)
    key = write_key(tmp_path / "keys", master)
    legacy = tmp_path / "lighthouse.db"
    rows = {"k_alice": os.urandom(32), "dk:alice:1": os.urandom(32), "dk:gone:1": b"x" * 32}
    _local_vault(legacy, master, rows)
    vault = PostgresSecretVault.open(
        url, key, fresh_install=True, legacy_db=legacy, never_import={"dk:gone:1"}
    )
    try:
        assert vault.imported is not None
        assert vault.imported.imported == ["dk:alice:1", "k_alice"]
        assert sorted(vault.imported.local) == sorted(rows)
        assert vault.get("k_alice") == rows["k_alice"]
        assert vault.get("dk:gone:1") is None  # a forgotten key is not brought back
    finally:
        vault.close()
    assert SQLiteSecretVault(legacy, master).key_ids() == []  # no local copy outlives it
    again = PostgresSecretVault.open(url, key, legacy_db=legacy)
    assert again.imported is None and again.check() == 2
    again.close()


def test_a_local_vault_under_another_key_imports_nothing(tmp_path: Path) -> None:
    url = migrated_database()
    legacy = tmp_path / "lighthouse.db"
    _local_vault(legacy, os.urandom(32), {"k_alice": os.urandom(32)})
    key = write_key(tmp_path / "keys", os.urandom(32))
    with pytest.raises(MasterKeyError, match=r"local vault .* nothing imported"):
        PostgresSecretVault.open(url, key, fresh_install=True, legacy_db=legacy)
    # Not even initialized: the right key file can still be brought and used.
    assert sql(url, "SELECT count(*) FROM key_vault_check") == [(0,)]
    assert sql(url, "SELECT count(*) FROM key_vault") == [(0,)]
    assert len(SQLiteSecretVault(legacy, os.urandom(32)).key_ids()) == 1
    missing = tmp_path / "other" / "master.key"
    missing.parent.mkdir()
    with pytest.raises(MasterKeyError, match="local vault holds 1"):
        PostgresSecretVault.open(url, missing, fresh_install=True, legacy_db=legacy)
    assert not missing.exists()


def test_an_unreachable_database_is_store_unavailable(tmp_path: Path) -> None:
    key = write_key(tmp_path, os.urandom(32))
    with pytest.raises(VaultUnavailable) as caught:
        PostgresSecretVault.open("postgresql://postgres@127.0.0.1:1/none", key)
    assert isinstance(caught.value, StoreError) and caught.value.reason == "store_unavailable"


def test_a_dropped_connection_is_replaced_and_an_outage_answers_at_once(tmp_path: Path) -> None:
    url, master = migrated_database(), os.urandom(32)
    name = url.rsplit("/", 1)[1]
    vault = PostgresSecretVault.open(url, write_key(tmp_path, master), fresh_install=True)
    try:
        vault.put("k_1", b"s" * 32)
        vault.put("k_2", b"t" * 32)
        terminate = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s"
        sql(ADMIN_URL, terminate, name)
        vault.forget_cached(["k_1"])
        assert vault.get("k_1") == b"s" * 32  # the dead connection was replaced once
        sql(ADMIN_URL, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        sql(ADMIN_URL, terminate, name)
        vault.forget_cached(["k_1", "k_2"])
        with pytest.raises(VaultUnavailable, match="reading a secret"):
            vault.get("k_1")
        started = time.monotonic()
        with pytest.raises(VaultUnavailable):  # for a second: no new attempt, no wait
            vault.get("k_2")
        assert time.monotonic() - started < 0.05
        sql(ADMIN_URL, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        time.sleep(1.1)
        assert vault.get("k_2") == b"t" * 32  # back by itself
    finally:
        vault.close()
