"""events.note: C2SP signed notes, checkpoints and cosignatures.

The Go sumdb/note documentation's example note and verifier key (signed by a key we do
not hold) must open with our verifier: that pins the key id formula and the signed bytes
to another implementation's, not just to our own signer.
"""

from __future__ import annotations

import base64
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from events import note

GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_NOTE = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
    "\n"
    "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngo"
    "tp"
    "RZb6KE6RyyBwJnAM=\n"
)
# The cosignature in c2sp.org/tlog-cosignature's example: its timestamp is 1679315147.
SPEC_COSIGNATURE = (
    "\u2014 witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlr"
    "DJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA=="
)


def test_the_go_reference_note_verifies_and_a_changed_one_does_not() -> None:
    verifier = note.Verifier.from_vkey(GO_VKEY)
    note.open_note(note.parse_note(GO_NOTE), verifier)
    with pytest.raises(note.NoteError) as caught:
        note.open_note(note.parse_note(GO_NOTE.replace("answer", "solution")), verifier)
    assert caught.value.kind == "bad_signature"
    assert note.Verifier.from_vkey(verifier.vkey()) == verifier


def test_the_spec_cosignature_line_parses_to_its_timestamp() -> None:
    sig = note.parse_signature_line(SPEC_COSIGNATURE)
    assert sig.name == "witness.example.com/w1" and len(sig.data) == 8 + 64
    assert struct.unpack(">Q", sig.data[:8])[0] == 1679315147


def test_checkpoint_round_trip_and_unknown_key() -> None:
    log = note.NoteSigner("lighthouse/test", Ed25519PrivateKey.generate())
    head = note.TreeHead("lighthouse/test", 42, bytes(range(32)))
    text = note.Note(head.text(), (log.sign(head.text()),)).render()
    _, opened = note.open_checkpoint(text, log.verifier, "lighthouse/test")
    assert opened == head
    stranger = note.NoteSigner("lighthouse/test", Ed25519PrivateKey.generate())
    with pytest.raises(note.NoteError) as caught:
        note.open_checkpoint(text, stranger.verifier)
    assert caught.value.kind == "unknown_key"
    with pytest.raises(note.NoteError) as caught:
        note.open_checkpoint(text, log.verifier, "lighthouse/other")
    assert caught.value.kind == "foreign_origin"


def test_cosignatures_count_only_for_the_witnesses_given() -> None:
    log = note.NoteSigner("lighthouse/test", Ed25519PrivateKey.generate())
    head = note.TreeHead("lighthouse/test", 7, bytes(32))
    w1, w2 = (
        note.NoteSigner(f"w{i}.example", Ed25519PrivateKey.generate(), note.COSIGNATURE_ALG)
        for i in (1, 2)
    )
    text = head.text()
    signed = note.Note(text, (log.sign(text), w1.cosign(text, 1_700_000_000)))
    good, bad = note.cosigned_by(signed, [w1.verifier, w2.verifier])
    assert (good, bad) == (["w1.example"], [])
    forged = note.Signature(w2.name, w2.verifier.key_id, struct.pack(">Q", 1) + bytes(64))
    good, bad = note.cosigned_by(note.Note(text, (*signed.signatures, forged)), [w2.verifier])
    assert (good, bad) == ([], ["w2.example"])
    # a log signature is not a cosignature: the algorithm byte separates them
    assert note.Verifier(w1.name, w1.verifier.public).key_id != w1.verifier.key_id


@pytest.mark.parametrize(
    "text",
    [
        "no signatures\n",
        "lighthouse/x\n1\nAAAA\n\n\u2014 name notbase64!!\n",
        "cut short\n\n\u2014 name " + base64.b64encode(bytes(68)).decode(),
        "control\x07char\n\n\u2014 name " + base64.b64encode(bytes(68)).decode() + "\n",
    ],
)
def test_malformed_notes_are_refused_with_a_reason(text: str) -> None:
    with pytest.raises(note.NoteError) as caught:
        note.parse_note(text)
    assert caught.value.kind == "malformed" and str(caught.value)


def test_verifier_keys_round_trip_whatever_their_base64_holds() -> None:
    """Base64 has "+" in its alphabet; the vkey separator is "+" too (split at most twice)."""
    for _ in range(64):
        signer = note.NoteSigner("w.example", Ed25519PrivateKey.generate(), note.COSIGNATURE_ALG)
        assert note.Verifier.from_vkey(signer.verifier.vkey()) == signer.verifier
