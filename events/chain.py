"""Hash chain, chain key and signed checkpoints.

The chain key (HMAC) and the checkpoint signing key (Ed25519) live in files outside the
database: whoever can write the database file cannot recompute the chain nor forge a
checkpoint. Keys are created once, for a new store, and never silently again: a store that
holds events and whose key file is missing or different refuses to open.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from pathlib import Path

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import KeyMismatch, MissingKey
from .model import Checkpoint, checkpoint_payload
from .note import NoteSigner

_FINGERPRINT_LABEL = b"lighthouse chain key fingerprint v1"
_STATEMENT_PREFIX = b"\x00lighthouse statement v1\x00"


def write_secret_file(path: Path, content: bytes) -> None:
    """Create `path` readable by its owner only; refuse to replace an existing file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)


class ChainKey:
    """The HMAC key of the hash chain. Its repr never shows the key.

    HMAC-SHA256 is computed from SHA-256 states keyed once (RFC 2104's inner and outer
    pads, as `hmac.HMAC` does internally) and copied per message: `hmac.digest` sets up
    the key for every call, which made the HMAC half of verify's cost per record.
    """

    __slots__ = ("_inner", "_key", "_outer")

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("chain key must be at least 32 bytes")
        self._key = key
        block = (hashlib.sha256(key).digest() if len(key) > 64 else key).ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    def __repr__(self) -> str:
        return "ChainKey(<secret>)"

    @classmethod
    def load(cls, path: Path, *, create: bool) -> ChainKey:
        if path.exists():
            raw = path.read_bytes().strip()
            try:
                return cls(base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4)))
            except ValueError as exc:
                raise KeyMismatch(f"chain key file {path} is not a valid key: {exc}") from None
        if not create:
            raise MissingKey(
                f"chain key file {path} is missing and the store already holds events; "
                "restore the key file (it is never regenerated)"
            )
        key = os.urandom(32)
        write_secret_file(path, base64.urlsafe_b64encode(key).rstrip(b"=") + b"\n")
        return cls(key)

    def link(self, canonical_bytes: bytes, prev_hash: str) -> str:
        """hash = HMAC-SHA256(chain key, canonical ‖ prev_hash)."""
        inner = self._inner.copy()
        inner.update(canonical_bytes)
        inner.update(bytes.fromhex(prev_hash))
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()

    def fingerprint(self) -> str:
        """A value stored in the database to recognise the key without revealing it."""
        return hmac.new(self._key, _FINGERPRINT_LABEL, "sha256").hexdigest()


def public_link(canonical_bytes: bytes, prev_digest: str) -> str:
    """The public SHA-256 chain an auditor can recompute without the chain key."""
    return hashlib.sha256(canonical_bytes + bytes.fromhex(prev_digest)).hexdigest()


class CheckpointSigner:
    """Ed25519 key that signs checkpoints; its public half is what auditors hold."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key

    @classmethod
    def load(cls, path: Path, *, create: bool) -> CheckpointSigner:
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise KeyMismatch(f"checkpoint key {path} is not an Ed25519 private key")
            return cls(key)
        if not create:
            raise MissingKey(
                f"checkpoint signing key {path} is missing and the store already holds "
                "events; restore it (it is never regenerated)"
            )
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_secret_file(path, pem)
        signer = cls(key)
        public_path = path.with_suffix(".pub")
        public_path.write_bytes(signer.public_pem())
        return signer

    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    def public_pem(self) -> bytes:
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def note_signer(self, name: str) -> NoteSigner:
        """The same key signing C2SP checkpoint notes under the log's origin as key name."""
        return NoteSigner(name, self._key)

    def sign(self, cp: Checkpoint) -> Checkpoint:
        sig = self._key.sign(checkpoint_payload(cp))
        return msgspec.structs.replace(cp, signature=base64.b64encode(sig).decode())

    def sign_statement(self, statement: bytes) -> str:
        """Sign (base64) a statement about this log that is not a checkpoint, e.g. what a
        redacted export says of a record it cannot show whole. The prefix keeps these
        signatures apart from checkpoint payloads (JSON arrays) and signed notes (text
        without control characters): none can be passed off as another."""
        return base64.b64encode(self._key.sign(_STATEMENT_PREFIX + statement)).decode()


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def statement_signature_ok(statement: bytes, signature: str, public_key: Ed25519PublicKey) -> bool:
    """Whether `signature` is `CheckpointSigner.sign_statement(statement)` by this key."""
    try:
        public_key.verify(base64.b64decode(signature, validate=True), _STATEMENT_PREFIX + statement)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def checkpoint_signature_ok(cp: Checkpoint, public_key: Ed25519PublicKey) -> bool:
    try:
        public_key.verify(base64.b64decode(cp.signature), checkpoint_payload(cp))
    except (InvalidSignature, ValueError):
        return False
    return True


_cp_encoder = msgspec.json.Encoder()
_cp_decoder = msgspec.json.Decoder(Checkpoint)


class CheckpointFile:
    """Append-only JSON-lines file of signed checkpoints, kept outside the database."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, cp: Checkpoint) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, _cp_encoder.encode(cp) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self) -> list[Checkpoint]:
        """Every well-formed checkpoint in the file; a torn last line (crash) is skipped."""
        if not self.path.exists():
            return []
        out: list[Checkpoint] = []
        for line in self.path.read_bytes().splitlines():
            if not line.strip():
                continue
            try:
                out.append(_cp_decoder.decode(line))
            except msgspec.DecodeError:
                continue
        return out
