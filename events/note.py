"""C2SP signed notes, tlog checkpoints and tlog cosignatures (Ed25519 only).

- signed-note: a text ending in a newline, a blank line, then signature lines
  `— <key name> base64(key id[4] ‖ signature)`; the Ed25519 key id is
  `SHA-256(name ‖ "\\n" ‖ 0x01 ‖ public key)[:4]` and the signature covers the text.
- tlog-checkpoint: the text is `origin\\n size\\n base64(root)\\n`.
- tlog-cosignature/v1: key id uses 0x04; the signature is `timestamp[8, big-endian] ‖
  Ed25519(cosignature/v1\\n time <t>\\n ‖ checkpoint text)`.

A verifier trusts a signature only when the line's name *and* key id match a key it was
given, and a line that claims a trusted key but does not verify rejects the whole note,
as the spec requires. Pure functions: no files, no network.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ED25519_ALG, COSIGNATURE_ALG = 0x01, 0x04
DASH = "\u2014 "
COSIGNATURE_HEADER = "cosignature/v1\n"
MAX_NOTE = 1 << 20
MAX_SIGNATURES = 100


class NoteError(ValueError):
    """A note that is malformed, or that no trusted key signed."""

    def __init__(self, message: str, kind: str = "malformed") -> None:
        super().__init__(message)
        self.kind = kind


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(name: str, public: bytes, alg: int = ED25519_ALG) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + public).digest()[:4]


def valid_name(name: str) -> bool:
    return bool(name) and "+" not in name and not any(c.isspace() for c in name)


@dataclass(frozen=True, slots=True)
class Verifier:
    """A trusted key: its name, raw Ed25519 public key and algorithm (log or cosigner)."""

    name: str
    public: bytes
    alg: int = ED25519_ALG

    @property
    def key_id(self) -> bytes:
        return key_id(self.name, self.public, self.alg)

    def vkey(self) -> str:
        """The C2SP verifier-key string `name+hex(key id)+base64(alg ‖ key)`."""
        material = base64.b64encode(bytes([self.alg]) + self.public).decode()
        return f"{self.name}+{self.key_id.hex()}+{material}"

    @classmethod
    def from_vkey(cls, text: str) -> Verifier:
        parts = text.strip().split("+", 2)  # the base64 key may itself contain "+"
        if len(parts) != 3:
            raise NoteError("a verifier key is name+keyid+base64 key")
        name, hex_id, material = parts
        try:
            raw = base64.b64decode(material, validate=True)
            wanted = bytes.fromhex(hex_id)
        except (binascii.Error, ValueError):
            raise NoteError("the verifier key is not valid base64/hex") from None
        if len(raw) != 33 or raw[0] not in (ED25519_ALG, COSIGNATURE_ALG):
            raise NoteError("the verifier key is not an Ed25519 key")
        verifier = cls(name, raw[1:], raw[0])
        if verifier.key_id != wanted:
            raise NoteError("the verifier key's id does not match its key")
        return verifier

    def _verify(self, signature: bytes, message: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.public).verify(signature, message)
        except (InvalidSignature, ValueError):
            return False
        return True


@dataclass(frozen=True, slots=True)
class Signature:
    name: str
    key_id: bytes
    data: bytes

    def line(self) -> str:
        return f"{DASH}{self.name} {base64.b64encode(self.key_id + self.data).decode()}\n"


@dataclass(frozen=True, slots=True)
class Note:
    text: str
    signatures: tuple[Signature, ...]

    def render(self) -> str:
        return self.text + "\n" + "".join(s.line() for s in self.signatures)


def parse_signature_line(line: str) -> Signature:
    if not line.startswith(DASH):
        raise NoteError("a signature line must start with an em dash and a space")
    name, sep, b64 = line[len(DASH) :].partition(" ")
    if not sep or not valid_name(name):
        raise NoteError("a signature line has no valid key name")
    try:
        raw = base64.b64decode(b64, validate=True)
    except binascii.Error:
        raise NoteError(f"the signature of {name} is not base64") from None
    if len(raw) < 5:
        raise NoteError(f"the signature of {name} is too short")
    return Signature(name, raw[:4], raw[4:])


def parse_note(text: str) -> Note:
    """Split a signed note into its text and signature lines (nothing verified yet)."""
    if len(text.encode()) > MAX_NOTE:
        raise NoteError("the note is larger than 1 MiB")
    if any(ord(c) < 0x20 and c != "\n" for c in text):
        raise NoteError("the note contains control characters")
    if not text.endswith("\n"):
        raise NoteError("the note does not end in a newline (cut short?)")
    split = text.rfind("\n\n")
    if split < 0:
        raise NoteError("the note has no signatures (no blank line before them)")
    body, sig_block = text[: split + 1], text[split + 2 :]
    lines = sig_block.splitlines()
    if not lines:
        raise NoteError("the note has no signatures")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError("the note has too many signatures")
    return Note(body, tuple(parse_signature_line(line) for line in lines))


# -- signing --------------------------------------------------------------------------------


class NoteSigner:
    """An Ed25519 private key under a name: signs notes (a log) or cosigns (a witness)."""

    def __init__(self, name: str, key: Ed25519PrivateKey, alg: int = ED25519_ALG) -> None:
        if not valid_name(name):
            raise ValueError(f"{name!r} is not a valid key name")
        self.name, self._key, self.alg = name, key, alg
        self.verifier = Verifier(name, raw_public(key.public_key()), alg)

    def sign(self, text: str) -> Signature:
        if self.alg != ED25519_ALG:
            raise ValueError("a cosigner signs with cosign()")
        return Signature(self.name, self.verifier.key_id, self._key.sign(text.encode()))

    def cosign(self, checkpoint_text: str, timestamp: int | None = None) -> Signature:
        if self.alg != COSIGNATURE_ALG:
            raise ValueError("a log key signs with sign()")
        t = int(time.time()) if timestamp is None else timestamp
        data = struct.pack(">Q", t) + self._key.sign(_cosigned_message(checkpoint_text, t))
        return Signature(self.name, self.verifier.key_id, data)


def _cosigned_message(checkpoint_text: str, timestamp: int) -> bytes:
    return f"{COSIGNATURE_HEADER}time {timestamp}\n{checkpoint_text}".encode()


# -- verifying ------------------------------------------------------------------------------


def _matches(sig: Signature, verifier: Verifier) -> bool:
    return sig.name == verifier.name and sig.key_id == verifier.key_id


def verify_signature(note: Note, sig: Signature, verifier: Verifier) -> bool:
    """Whether `sig` is a valid signature (or cosignature) of `note` by `verifier`."""
    if verifier.alg == COSIGNATURE_ALG:
        if len(sig.data) != 8 + 64:
            return False
        (t,) = struct.unpack(">Q", sig.data[:8])
        return t < 1 << 63 and verifier._verify(sig.data[8:], _cosigned_message(note.text, t))
    return len(sig.data) == 64 and verifier._verify(sig.data, note.text.encode())


def open_note(note: Note, log: Verifier) -> None:
    """Raise NoteError unless `log` signed `note` (a bad line from that key rejects it)."""
    ours = [s for s in note.signatures if _matches(s, log)]
    if not ours:
        names = ", ".join(sorted({s.name for s in note.signatures})) or "none"
        raise NoteError(
            f"the checkpoint is not signed by the key given (key {log.name} "
            f"id {log.key_id.hex()}); it carries signatures of: {names}",
            "unknown_key",
        )
    if not all(verify_signature(note, s, log) for s in ours):
        raise NoteError("the checkpoint's signature does not verify (altered)", "bad_signature")


def cosigned_by(note: Note, witnesses: list[Verifier]) -> tuple[list[str], list[str]]:
    """Names of witnesses with a valid cosignature, and of those whose line is invalid."""
    good, bad = [], []
    for w in witnesses:
        lines = [s for s in note.signatures if _matches(s, w)]
        if not lines:
            continue
        (good if all(verify_signature(note, s, w) for s in lines) else bad).append(w.name)
    return good, bad


# -- checkpoints ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TreeHead:
    origin: str
    size: int
    root: bytes

    def text(self) -> str:
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"


def parse_checkpoint(text: str) -> TreeHead:
    """The first three lines of a checkpoint's text (extension lines are allowed)."""
    lines = text.split("\n")
    if len(lines) < 4 or lines[-1] != "":
        raise NoteError("a checkpoint needs an origin, a size and a root hash line")
    origin, size_text, root_text = lines[0], lines[1], lines[2]
    if not origin:
        raise NoteError("the checkpoint's origin line is empty")
    if not size_text.isdigit() or (size_text != "0" and size_text.startswith("0")):
        raise NoteError(f"the checkpoint's size {size_text!r} is not a decimal number")
    try:
        root = base64.b64decode(root_text, validate=True)
    except binascii.Error:
        root = b""
    if len(root) != 32:
        raise NoteError("the checkpoint's root hash is not 32 bytes of base64")
    return TreeHead(origin, int(size_text), root)


def open_checkpoint(text: str, log: Verifier, origin: str | None = None) -> tuple[Note, TreeHead]:
    """Parse, check the log's signature, and (if given) the expected origin."""
    note = parse_note(text)
    open_note(note, log)
    head = parse_checkpoint(note.text)
    if origin is not None and head.origin != origin:
        raise NoteError(
            f"the checkpoint is of log {head.origin!r}, not {origin!r}", "foreign_origin"
        )
    return note, head
