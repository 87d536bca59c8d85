"""The requestState key: one per store, in the vault, taken over once from the file where
earlier releases kept it, never made anew while a damaged file says one existed."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from bridge.core import REQUEST_STATE_KEY_ID, request_state_key
from security import SQLiteSecretVault


def test_made_once_then_the_same_for_every_opener(tmp_path: Path) -> None:
    master = os.urandom(32)
    first = SQLiteSecretVault(tmp_path / "db", master)
    key = request_state_key(first, tmp_path / "request_state.key")
    first.close()
    again = SQLiteSecretVault(tmp_path / "db", master)  # a restart, or another bridge
    assert request_state_key(again, tmp_path / "request_state.key") == key
    assert len(key) == 32 and again.key_ids("rs:") == [REQUEST_STATE_KEY_ID]
    again.close()


def test_the_file_of_an_earlier_release_is_taken_over(tmp_path: Path) -> None:
    old = os.urandom(32)
    legacy = tmp_path / "request_state.key"
    legacy.write_bytes(base64.urlsafe_b64encode(old).rstrip(b"=") + b"\n")
    vault = SQLiteSecretVault(tmp_path / "db", os.urandom(32))
    assert request_state_key(vault, legacy) == old  # states sealed before the upgrade open
    legacy.unlink()
    assert request_state_key(vault, legacy) == old
    vault.close()


def test_a_damaged_file_is_refused_not_replaced(tmp_path: Path) -> None:
    legacy = tmp_path / "request_state.key"
    legacy.write_text("not a key\n")
    vault = SQLiteSecretVault(tmp_path / "db", os.urandom(32))
    with pytest.raises(RuntimeError, match="damaged"):
        request_state_key(vault, legacy)
    assert vault.key_ids("rs:") == []
    vault.close()
