"""events.merkle: RFC 9162 test vectors, an independent verifier, and every proof shape.

The vectors are the Certificate Transparency / transparency-dev reference leaves, roots
and proofs (RFC 6962 test data). The sigstore package's Rekor inclusion verifier — code
we did not write — must accept our proofs, so a shared misunderstanding of the RFC
between our generator and our verifier cannot pass unnoticed.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from events import merkle
from events.merkle import (
    EMPTY_ROOT,
    Frontier,
    ProofError,
    consistency_ranges,
    inclusion_ranges,
    leaf_hash,
    range_hashes,
    root_from_leaves,
    verify_consistency,
    verify_inclusion,
)

DATA = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
INCLUSION = [  # (leaf index, tree size, proof)
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]
CONSISTENCY = [  # (old size, new size, proof)
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]
LEAVES = [leaf_hash(d) for d in DATA]


def _tree(n: int) -> tuple[dict[merkle.Node, bytes], dict[int, bytes], list[bytes]]:
    """Every node a store would keep for n leaves (and the leaves for the low levels)."""
    leaves = [leaf_hash(b"leaf %d" % i) for i in range(n)]
    frontier, stored = Frontier(), {}
    for leaf in leaves:
        for level, index, h in frontier.append(leaf):
            if level >= merkle.STORED_LEVEL:
                stored[(level, index)] = h
    return stored, dict(enumerate(leaves)), leaves


def _proof(ranges: list[merkle.Range], n: int) -> list[bytes]:
    stored, leaves, _ = _tree(n)
    return range_hashes(ranges, stored, leaves)


def test_roots_match_the_rfc_vectors_by_definition_and_incrementally() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    frontier = Frontier()
    for n, want in enumerate(ROOTS, start=1):
        assert root_from_leaves(LEAVES[:n]).hex() == want
        frontier.append(LEAVES[n - 1])
        assert frontier.root().hex() == want


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_inclusion_proofs_match_the_rfc_vectors(index: int, size: int, proof: list[str]) -> None:
    stored, leaves = {}, dict(enumerate(LEAVES))
    got = range_hashes(inclusion_ranges(index, size), stored, leaves)
    assert [h.hex() for h in got] == proof
    verify_inclusion(LEAVES[index], index, size, got, bytes.fromhex(ROOTS[size - 1]))


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY)
def test_consistency_proofs_match_the_rfc_vectors(old: int, new: int, proof: list[str]) -> None:
    got = range_hashes(consistency_ranges(old, new), {}, dict(enumerate(LEAVES)))
    assert [h.hex() for h in got] == proof
    verify_consistency(old, new, bytes.fromhex(ROOTS[old - 1]), bytes.fromhex(ROOTS[new - 1]), got)


def test_every_proof_of_every_tree_up_to_70_verifies_from_stored_nodes() -> None:
    for n in (1, 2, 15, 16, 17, 31, 32, 33, 47, 64, 70):
        stored, leaves, ordered = _tree(n)
        root = root_from_leaves(ordered)
        assert range_hashes([(0, n)], stored, leaves) == [root]
        for i in range(n):
            proof = range_hashes(inclusion_ranges(i, n), stored, leaves)
            verify_inclusion(ordered[i], i, n, proof, root)
        for m in range(n + 1):
            proof = range_hashes(consistency_ranges(m, n), stored, leaves)
            verify_consistency(m, n, root_from_leaves(ordered[:m]), root, proof)


def test_sigstores_independent_verifier_accepts_our_inclusion_proofs() -> None:
    sigstore_merkle = pytest.importorskip("sigstore._internal.merkle")
    from sigstore.errors import VerificationError

    n = 37
    data = [b"record %d" % i for i in range(n)]
    ordered = [leaf_hash(d) for d in data]
    frontier, stored = Frontier(), {}
    for leaf in ordered:
        for level, index, h in frontier.append(leaf):
            if level >= merkle.STORED_LEVEL:
                stored[(level, index)] = h
    root = frontier.root()

    def entry(i: int, proof: list[bytes], body: bytes) -> SimpleNamespace:
        inner = SimpleNamespace(
            inclusion_proof=SimpleNamespace(log_index=i, tree_size=n, hashes=proof, root_hash=root),
            canonicalized_body=body,
        )
        return SimpleNamespace(_inner=inner)

    for i in range(n):
        proof = range_hashes(inclusion_ranges(i, n), stored, dict(enumerate(ordered)))
        sigstore_merkle.verify_merkle_inclusion(entry(i, proof, data[i]))
        with pytest.raises(VerificationError):
            sigstore_merkle.verify_merkle_inclusion(entry(i, proof, data[i] + b"!"))


def test_mangled_proofs_are_rejected() -> None:
    stored, leaves, ordered = _tree(45)
    root = root_from_leaves(ordered)
    proof = range_hashes(inclusion_ranges(20, 45), stored, leaves)
    flipped = [proof[0][:-1] + bytes([proof[0][-1] ^ 1]), *proof[1:]]
    for bad_leaf, index, size, bad_proof in (
        (ordered[21], 20, 45, proof),  # another leaf
        (ordered[20], 21, 45, proof),  # another index
        (ordered[20], 20, 8, proof),  # a tree too small for the proof
        (ordered[20], 20, 45, flipped),
        (ordered[20], 20, 45, proof[:-1]),
        (ordered[20], 20, 45, [*proof, proof[0]]),
        (ordered[20], 45, 45, proof),
    ):
        with pytest.raises(ProofError):
            verify_inclusion(bad_leaf, index, size, bad_proof, root)
    old_root = root_from_leaves(ordered[:13])
    cproof = range_hashes(consistency_ranges(13, 45), stored, leaves)
    verify_consistency(13, 45, old_root, root, cproof)
    other_old = root_from_leaves([*ordered[:12], leaf_hash(b"forged")])
    with pytest.raises(ProofError, match="fork"):
        verify_consistency(13, 45, other_old, root, cproof)
    with pytest.raises(ProofError):
        verify_consistency(13, 45, old_root, root, cproof[:-1])
    with pytest.raises(ProofError, match="fork"):
        verify_consistency(45, 45, root, old_root, [])
    with pytest.raises(ProofError):
        verify_consistency(46, 45, root, root, [])


def test_impossible_proofs_are_refused_not_invented() -> None:
    with pytest.raises(ProofError):
        inclusion_ranges(5, 5)
    with pytest.raises(ProofError):
        consistency_ranges(6, 5)
    with pytest.raises(ProofError, match="not stored"):
        range_hashes([(0, 32)], {}, {})


def test_extend_keeps_the_same_tree_as_append_and_returns_only_stored_nodes() -> None:
    leaves = [leaf_hash(b"x%d" % i) for i in range(300)]
    one, many = Frontier(), Frontier()
    expected = [n for leaf in leaves for n in one.append(leaf) if n[0] >= merkle.STORED_LEVEL]
    got = many.extend(leaves[:77]) + many.extend(leaves[77:])
    assert got == expected and many.root() == one.root() == root_from_leaves(leaves)
