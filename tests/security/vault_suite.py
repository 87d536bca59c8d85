"""Backend-agnostic suite for `security.SecretVault`.

A backend's test module subclasses `SecretVaultConformance` and supplies a fresh place
(`place`), how to open a vault there under a given master key (`open_vault`, the way the
bridge opens it, key check included) and how an attacker with write access to the
database copies one row onto another key id (`copy_row`). Nothing here may know which
backend runs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from security import DataKeys, MasterKeyError, SecretVault, VaultError


def write_key(directory: Path, key: bytes) -> Path:
    """A master key file holding *key* (base64, 0600), as `load_master_key` reads it."""
    import base64

    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "master.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, base64.b64encode(key) + b"\n")
    finally:
        os.close(fd)
    return path


class SecretVaultConformance:
    """Every vault backend must pass these unchanged."""

    def place(self, tmp_path: Path) -> Any:
        raise NotImplementedError  # a fresh, empty backend location

    def open_vault(self, where: Any, master: bytes) -> SecretVault:
        raise NotImplementedError

    def copy_row(self, where: Any, source: str, target: str) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def another(self, where: Any, master: bytes) -> Iterator[SecretVault]:
        """A second vault on the same backend: another bridge, or a later start."""
        vault = self.open_vault(where, master)
        try:
            yield vault
        finally:
            vault.close()

    @pytest.fixture
    def where(self, tmp_path: Path) -> Any:
        return self.place(tmp_path)

    @pytest.fixture
    def master(self) -> bytes:
        return os.urandom(32)

    @pytest.fixture
    def vault(self, where: Any, master: bytes) -> Iterator[SecretVault]:
        vault = self.open_vault(where, master)
        yield vault
        vault.close()

    def test_round_trip_from_the_backend_not_the_cache(
        self, where: Any, master: bytes, vault: SecretVault
    ) -> None:
        secret = os.urandom(32)
        vault.put("k_1", secret)
        assert vault.get("k_1") == secret
        assert vault.get("k_missing") is None
        with self.another(where, master) as other:
            assert other.get("k_1") == secret
            [(key_id, _, ciphertext)] = other.wrapped_rows()
            assert key_id == "k_1" and secret not in ciphertext  # wrapped at rest

    def test_refuses_to_overwrite_a_key_id(
        self, where: Any, master: bytes, vault: SecretVault
    ) -> None:
        vault.put("k_1", b"a" * 32)
        with pytest.raises(VaultError, match="already has a secret"):
            vault.put("k_1", b"b" * 32)
        with self.another(where, master) as other:
            assert other.get("k_1") == b"a" * 32

    def test_put_if_absent_the_first_writer_wins_everywhere(
        self, where: Any, master: bytes, vault: SecretVault
    ) -> None:
        with self.another(where, master) as other:  # two bridges making one shared key
            first = vault.put_if_absent("rs:request_state", b"a" * 32)
            second = other.put_if_absent("rs:request_state", b"b" * 32)
        assert first == second == b"a" * 32
        assert vault.put_if_absent("rs:request_state", b"c" * 32) == b"a" * 32

    def test_delete_destroys_the_secret(
        self, where: Any, master: bytes, vault: SecretVault
    ) -> None:
        vault.put("k_1", b"s" * 32)
        vault.put("k_2", b"t" * 32)
        vault.delete("k_1")
        assert vault.get("k_1") is None
        with self.another(where, master) as other:
            assert other.get("k_1") is None and other.get("k_2") == b"t" * 32

    def test_key_ids_by_prefix_oldest_first(self, vault: SecretVault) -> None:
        for key_id in ("dk:alice:1", "k_x", "dk:alice:0", "dk:alicia:9"):
            vault.put(key_id, os.urandom(32))
        assert vault.key_ids("dk:alice:") == ["dk:alice:1", "dk:alice:0"]
        assert sorted(vault.key_ids()) == ["dk:alice:0", "dk:alice:1", "dk:alicia:9", "k_x"]
        assert vault.key_ids("nothing") == []

    @staticmethod
    def two_rows(vault: SecretVault) -> dict[str, bytes]:
        """An agent secret and a data key, as a bridge's vault holds them."""
        rows = {"k_1": os.urandom(32), "dk:a:1": os.urandom(32)}
        for key_id, secret in rows.items():
            vault.put(key_id, secret)
        return rows

    def test_check_counts_rows_and_refuses_another_master_key(
        self, where: Any, vault: SecretVault
    ) -> None:
        self.two_rows(vault)
        assert vault.check() == 2
        with (
            pytest.raises(MasterKeyError, match="master key does not open the vault"),
            self.another(where, os.urandom(32)) as wrong,
        ):
            wrong.check()

    def test_rewrap_moves_every_row_to_the_new_key(
        self, where: Any, master: bytes, vault: SecretVault
    ) -> None:
        rows = self.two_rows(vault)
        new = os.urandom(32)
        assert vault.rewrap(new) == 2
        assert vault.get("k_1") == rows["k_1"]
        with pytest.raises(MasterKeyError), self.another(where, master) as old:
            old.check()
        with self.another(where, new) as reopened:
            assert reopened.check() == 2
            assert reopened.get("dk:a:1") == rows["dk:a:1"]

    def test_a_row_moved_to_another_key_id_does_not_open(
        self, where: Any, master: bytes, vault: SecretVault
    ) -> None:
        vault.put("k_alice", b"A" * 32)
        vault.put("k_mallory", b"M" * 32)
        self.copy_row(where, "k_mallory", "k_alice")
        with self.another(where, master) as reader:  # the row check is check(), not the open
            with pytest.raises(VaultError, match="does not decrypt"):
                reader.get("k_alice")
            with pytest.raises(MasterKeyError, match="first failure k_alice"):
                reader.check()
            with pytest.raises(VaultError, match="nothing re-wrapped"):
                reader.rewrap(os.urandom(32))
            assert reader.get("k_mallory") == b"M" * 32  # the old key still opens the rest

    def test_forget_cached_drops_what_another_process_destroyed(
        self, where: Any, master: bytes, vault: SecretVault
    ) -> None:
        vault.put("dk:alice:1", b"k" * 32)
        with self.another(where, master) as other:  # a second bridge on the same vault
            assert other.get("dk:alice:1") == b"k" * 32  # cached there now
            vault.delete("dk:alice:1")
            assert other.get("dk:alice:1") == b"k" * 32  # the cache does not know yet
            other.forget_cached(["dk:alice:1"])  # the followed AgentForgotten fact
            assert other.get("dk:alice:1") is None

    def test_data_keys_shared_by_two_processes(
        self, where: Any, master: bytes, vault: SecretVault
    ) -> None:
        with self.another(where, master) as other:
            here, there = DataKeys(vault), DataKeys(other)  # both start before any key
            key_id, cipher = here.for_agent("alice")
            assert there.for_agent("alice")[0] == key_id  # found on the miss, not remade
            sealed = cipher.seal(b"what alice said", b"ad")
            assert there.cipher(key_id).open(*sealed, b"ad") == b"what alice said"
            # The forget is followed there before this process deleted the row: the key
            # is never used again there, and alice's next content gets a new key.
            there.forget_cached([key_id])
            assert there.cipher(key_id) is None
            renewed, _ = there.for_agent("alice")
            assert renewed != key_id
            assert here.destroy([key_id]) == [key_id]  # exactly what the fact names
            assert vault.key_ids("dk:alice:") == [renewed]
