import base64
import os
import sqlite3
import stat
from pathlib import Path

import msgspec
import pytest

from security.keys import (
    KeyRegistry,
    KeyState,
    MasterKeyError,
    SecretNotLoaded,
    SecretVault,
    SQLiteSecretVault,
    decode_secret,
    generate_secret,
    key_lookup,
    load_master_key,
    new_key_id,
)
from security.nonces import InMemoryNonceStore
from security.signatures import Reason, SignatureVerifier, Verified
from tests.security.conftest import NOW, FakeClock, signed_view
from tests.security.vault_suite import SecretVaultConformance, write_key


def test_generate_secret_format():
    s = generate_secret()
    assert "=" not in s and len(s) == 43
    raw = decode_secret(s)
    assert len(raw) == 32
    assert base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == s
    assert generate_secret() != s


@pytest.mark.parametrize("bad", ["abc", "!!!!", base64.urlsafe_b64encode(b"x" * 16).decode()])
def test_decode_secret_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        decode_secret(bad)


def test_key_ids_random_and_shaped():
    ids = {new_key_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(i.startswith("k_") and len(i) == 18 and int(i[2:], 16) >= 0 for i in ids)


# ---------------------------------------------------------------- master key + vault


def test_master_key_created_owner_only(tmp_path):
    path = tmp_path / "master.key"
    key = load_master_key(path, create=True)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_master_key(path) == key


def test_master_key_missing_without_create(tmp_path):
    with pytest.raises(MasterKeyError):
        load_master_key(tmp_path / "nope.key")


def test_master_key_readable_by_others_refused(tmp_path):
    path = tmp_path / "master.key"
    load_master_key(path, create=True)
    os.chmod(path, 0o644)
    with pytest.raises(MasterKeyError, match="owner only"):
        load_master_key(path)


def test_vault_round_trip_and_encrypted_at_rest(tmp_path):
    db = tmp_path / "lighthouse.db"
    vault = SQLiteSecretVault.open(db, tmp_path / "master.key", fresh_install=True)
    secret = os.urandom(32)
    vault.put("k_1", secret)
    assert vault.get("k_1") == secret
    assert vault.get("k_missing") is None
    vault.close()
    reopened = SQLiteSecretVault.open(db, tmp_path / "master.key")
    assert reopened.get("k_1") == secret  # from disk, not the cache
    raw = sqlite3.connect(db).execute("SELECT ciphertext FROM key_vault").fetchone()[0]
    assert secret not in raw and secret not in db.read_bytes()
    reopened.close()


def test_missing_master_key_with_existing_rows_is_refused(tmp_path):
    db, key_file = tmp_path / "db", tmp_path / "master.key"
    vault = SQLiteSecretVault.open(db, key_file, fresh_install=True)
    vault.put("k_1", b"s" * 32)
    vault.close()
    key_file.unlink()
    with pytest.raises(MasterKeyError, match="holds 1 encrypted secret"):
        SQLiteSecretVault.open(db, key_file, fresh_install=True)
    assert not key_file.exists()  # never silently regenerated


def test_missing_master_key_not_fresh_install_is_refused(tmp_path):
    with pytest.raises(MasterKeyError, match="not found"):
        SQLiteSecretVault.open(tmp_path / "db", tmp_path / "master.key")


class TestSQLiteVault(SecretVaultConformance):
    def place(self, tmp_path: Path) -> Path:
        return tmp_path / "lighthouse.db"

    def open_vault(self, where: Path, master: bytes) -> SecretVault:
        key_file = write_key(where.parent / f"keys-{master.hex()[:8]}", master)
        return SQLiteSecretVault.open(where, key_file, fresh_install=True)

    def copy_row(self, where: Path, source: str, target: str) -> None:
        con = sqlite3.connect(where)
        nonce, ct = con.execute(
            "SELECT nonce, ciphertext FROM key_vault WHERE key_id = ?", (source,)
        ).fetchone()
        con.execute(
            "UPDATE key_vault SET nonce = ?, ciphertext = ? WHERE key_id = ?", (nonce, ct, target)
        )
        con.commit()
        con.close()


# ---------------------------------------------------------------- registry projection


def registry_with_history() -> KeyRegistry:
    reg = KeyRegistry()
    reg.apply("AgentRegistered", {"agent": "alice", "roles": ["expert"], "capabilities": ["py"]})
    reg.apply("AgentKeyIssued", {"agent": "alice", "key_id": "k_old", "issued_at": 100.0})
    reg.apply(
        "AgentKeyRotated",
        {"agent": "alice", "old_key_id": "k_old", "new_key_id": "k_new", "grace_until": 500.0},
    )
    reg.apply("AgentRegistered", {"agent": "bob", "roles": [], "capabilities": []})
    reg.apply("AgentKeyIssued", {"agent": "bob", "key_id": "k_bob", "issued_at": 100.0})
    reg.apply("SomethingElse", {"whatever": 1})  # unrelated events are ignored
    return reg


def test_registry_states():
    reg = registry_with_history()
    assert reg.lookup("k_new", 200).state is KeyState.ACTIVE
    assert reg.lookup("k_old", 500).state is KeyState.GRACE
    assert reg.lookup("k_old", 500.1).state is KeyState.EXPIRED
    assert reg.lookup("k_bob", 200).agent == "bob"
    assert reg.lookup("k_nope", 200).state is KeyState.UNKNOWN
    assert reg.active_key_ids("alice") == ["k_new"]
    reg.apply("AgentRevoked", {"agent": "alice", "at": 300.0})
    assert reg.lookup("k_new", 301).state is KeyState.REVOKED
    assert reg.lookup("k_old", 301).state is KeyState.REVOKED
    assert reg.lookup("k_bob", 301).state is KeyState.ACTIVE


def test_re_registration_keeps_old_keys_dead():
    reg = registry_with_history()
    reg.apply("AgentRevoked", {"agent": "bob", "at": 300.0})
    reg.apply("AgentRegistered", {"agent": "bob", "roles": ["r"], "capabilities": []})
    reg.apply("AgentKeyIssued", {"agent": "bob", "key_id": "k_bob2", "issued_at": 400.0})
    assert reg.lookup("k_bob", 401).state is KeyState.REVOKED
    assert reg.lookup("k_bob2", 401).state is KeyState.ACTIVE
    assert reg.agents["bob"].roles == ["r"]


def test_registry_rejects_malformed_known_events():
    with pytest.raises(msgspec.ValidationError):
        KeyRegistry().apply("AgentKeyIssued", {"agent": "a"})


def test_replaying_same_log_gives_same_state():
    a, b = registry_with_history(), registry_with_history()
    for key_id in ("k_old", "k_new", "k_bob", "x"):
        assert a.lookup(key_id, 450) == b.lookup(key_id, 450)


async def test_key_lookup_glue_with_verifier(tmp_path):
    reg = registry_with_history()
    vault = SQLiteSecretVault(tmp_path / "db", os.urandom(32))
    old, new = os.urandom(32), os.urandom(32)
    vault.put("k_old", old)
    vault.put("k_new", new)
    clock = FakeClock(NOW)
    reg.apply(
        "AgentKeyRotated",
        {"agent": "alice", "old_key_id": "k_old", "new_key_id": "k_new", "grace_until": NOW + 60},
    )
    verifier = SignatureVerifier(key_lookup(reg, vault, clock), InMemoryNonceStore(), clock=clock)
    ok = await verifier.verify(signed_view(key_id="k_new", secret=new))
    assert isinstance(ok, Verified) and ok.agent == "alice" and ok.key_state == "active"
    grace = await verifier.verify(signed_view(key_id="k_old", secret=old))
    assert isinstance(grace, Verified) and grace.key_state == "grace"
    clock.now = NOW + 61
    expired = await verifier.verify(signed_view(key_id="k_old", secret=old, created=NOW + 61))
    assert expired.reason is Reason.EXPIRED_KEY and expired.public_reason == "invalid_signature"
    reg.apply("AgentRevoked", {"agent": "alice", "at": NOW + 61})
    revoked = await verifier.verify(signed_view(key_id="k_new", secret=new, created=NOW + 61))
    assert revoked.reason is Reason.REVOKED_KEY
    unknown = await verifier.verify(signed_view(key_id="k_bob", secret=new, created=NOW + 61))
    assert unknown.reason is Reason.UNKNOWN_KEY  # in the registry but no secret in the vault


async def test_a_cached_only_lookup_asks_for_an_unread_secret_instead_of_reading_it(tmp_path):
    """A server's verifier never reads a remote vault's backend: it is told which secret to
    load (off its event loop), and the same check then passes from memory."""

    class RemoteVault(SQLiteSecretVault):
        remote = True  # as the PostgreSQL vault: a miss is a round trip

    reg = registry_with_history()
    path = tmp_path / "db"
    master = os.urandom(32)
    secret = os.urandom(32)
    SQLiteSecretVault(path, master).put("k_new", secret)
    vault = RemoteVault(path, master)  # another process's: nothing cached here
    clock = FakeClock(NOW)
    lookup = key_lookup(reg, vault, clock, cached_only=True)
    verifier = SignatureVerifier(lookup, InMemoryNonceStore(), clock=clock)
    view = signed_view(key_id="k_new", secret=secret)
    assert vault.needs_io("k_new")
    with pytest.raises(SecretNotLoaded) as missing:
        verifier.check_headers(view, has_body=bool(view.body))
    assert missing.value.key_id == "k_new" and vault.needs_io("k_new")
    assert vault.get("k_new") == secret and not vault.needs_io("k_new")
    ok = await verifier.verify(view)
    assert isinstance(ok, Verified) and ok.agent == "alice"
    unknown = await verifier.verify(signed_view(key_id="k_nobody", secret=secret))
    assert unknown.reason is Reason.UNKNOWN_KEY  # not in the registry: no vault, no raise
    assert not SQLiteSecretVault(path, master).needs_io("k_new")  # a local file: never
