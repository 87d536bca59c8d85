"""RFC 6962 / RFC 9162 Merkle tree over the log: hashes, proofs and their verification.

Pure functions, no storage: a backend keeps the complete subtree hashes ("nodes") it is
handed by `Frontier.append` and answers `plan()`'s questions; the proofs are then
assembled here, the same way for every backend.

Leaves are `SHA-256(0x00 ‖ canonical record bytes)` — the very bytes the hash chain
covers — and interior nodes `SHA-256(0x01 ‖ left ‖ right)`; the tree of n leaves splits
at the largest power of two below n (RFC 9162 §2.1.1). A node is named `(level, index)`:
it covers leaves `[index·2^level, (index+1)·2^level)`. Only nodes at `STORED_LEVEL` and
above are stored (one row per 16 leaves, plus their parents, ≈ n/8 rows); lower nodes are
recomputed from the records of one 16-leaf tile when a proof needs them, which keeps the
cost of an append to a fraction of a row.

Verification follows the algorithms of RFC 9162 §2.1.3.2 and §2.1.4.2 literally, not
the generation code, so a bug in one does not hide in the other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

STORED_LEVEL = 4
"""Nodes below this level are not stored: they are rehashed from at most 16 records."""
HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

Node = tuple[int, int]
"""(level, index) of a complete subtree."""
Range = tuple[int, int]
"""[start, end) of leaf indexes (0-based: leaf i is the record at position i + 1)."""


class ProofError(ValueError):
    """A proof or tree size that cannot be produced or does not verify."""


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than n (n ≥ 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def decompose(start: int, end: int) -> list[Node]:
    """The complete aligned subtrees that make up `[start, end)`, left to right.

    Every range a proof needs (RFC 9162's `MTH(D[k:n])` at a subtree boundary) starts at a
    multiple of a power of two not smaller than its length, so this is its exact RFC
    decomposition: folding the hashes from the right gives the RFC subtree hash.
    """
    nodes: list[Node] = []
    while start < end:
        level = (start & -start).bit_length() - 1 if start else (end - start).bit_length() - 1
        while start + (1 << level) > end:
            level -= 1
        nodes.append((level, start >> level))
        start += 1 << level
    return nodes


def fold(hashes: Sequence[bytes]) -> bytes:
    """Hash of a range from its decomposition's node hashes (right-leaning, as RFC 6962)."""
    if not hashes:
        return EMPTY_ROOT
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def root_from_leaves(leaves: Sequence[bytes]) -> bytes:
    """RFC 9162 MTH by its recursive definition: the reference the incremental code must meet."""
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[0]
    k = _split(n)
    return node_hash(root_from_leaves(leaves[:k]), root_from_leaves(leaves[k:]))


# -- proofs as lists of ranges ------------------------------------------------------------


def inclusion_ranges(index: int, size: int) -> list[Range]:
    """RFC 9162 PATH(m, D[n]) as the leaf ranges whose hashes it lists, leaf to root."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    out: list[Range] = []
    lo, hi = 0, size
    while hi - lo > 1:
        k = _split(hi - lo)
        if index - lo < k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            lo = lo + k
    out.reverse()
    return out


def consistency_ranges(old: int, new: int) -> list[Range]:
    """RFC 9162 PROOF(m, D[n]) (SUBPROOF with b = true) as leaf ranges, in proof order."""
    if not 0 <= old <= new:
        raise ProofError(f"no consistency proof from size {old} to size {new}")
    if old == 0 or old == new:
        return []
    out: list[Range] = []
    lo, hi, m, complete = 0, new, old, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            out.append((lo + k, hi))
            hi = lo + k
        else:
            out.append((lo, lo + k))
            m, lo, complete = m - k, lo + k, False
    if not complete:
        out.append((lo, hi))
    out.reverse()
    return out


def plan(ranges: Iterable[Range]) -> tuple[set[Node], set[int]]:
    """What a backend must fetch to hash `ranges`: stored nodes, and 16-leaf tiles to rehash."""
    nodes: set[Node] = set()
    tiles: set[int] = set()
    for start, end in ranges:
        for level, index in decompose(start, end):
            if level >= STORED_LEVEL:
                nodes.add((level, index))
            else:
                tiles.add((index << level) >> STORED_LEVEL)
    return nodes, tiles


def range_hashes(
    ranges: Iterable[Range], stored: Mapping[Node, bytes], leaves: Mapping[int, bytes]
) -> list[bytes]:
    """Hashes of `ranges` from the fetched stored nodes and leaf hashes (by leaf index)."""
    out = []
    for start, end in ranges:
        parts = []
        for level, index in decompose(start, end):
            if level >= STORED_LEVEL:
                if (level, index) not in stored:
                    raise ProofError(f"tree node {level}/{index} is not stored")
                parts.append(stored[(level, index)])
            else:
                first = index << level
                try:
                    span = [leaves[i] for i in range(first, first + (1 << level))]
                except KeyError as exc:
                    raise ProofError(f"leaf {exc.args[0]} is not available") from None
                parts.append(root_from_leaves(span))
        out.append(fold(parts))
    return out


# -- the incremental tree -----------------------------------------------------------------


class Frontier:
    """The right edge of the tree: the roots of its complete subtrees, largest first.

    Appending a leaf merges equal-sized subtrees (a binary counter), so an append costs
    O(log n) hashes in the worst case and two on average; `append` returns every node it
    completed so the backend can store the ones at `STORED_LEVEL` and above.
    """

    __slots__ = ("_stack", "size")

    def __init__(self, size: int = 0, stack: Sequence[bytes] = ()) -> None:
        if len(stack) != bin(size).count("1"):
            raise ProofError(f"a frontier of size {size} needs {bin(size).count('1')} hashes")
        self.size = size
        self._stack = list(stack)

    @staticmethod
    def nodes_for(size: int) -> list[Node]:
        """The nodes a frontier of `size` holds: the decomposition of `[0, size)`."""
        return decompose(0, size)

    def copy(self) -> Frontier:
        return Frontier(self.size, self._stack)

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        completed = [(0, self.size, leaf)]
        h, level, index = leaf, 0, self.size
        while index & 1:
            h = node_hash(self._stack.pop(), h)
            level, index = level + 1, index >> 1
            completed.append((level, index, h))
        self._stack.append(h)
        self.size += 1
        return completed

    def extend(
        self, leaves: Iterable[bytes], min_level: int = STORED_LEVEL
    ) -> list[tuple[int, int, bytes]]:
        """Append many leaves; only the completed nodes at `min_level` and above come back.

        The append hot path: the same binary counter as `append`, with no tuples built
        for the nodes a backend does not store.
        """
        stack, size, out, sha256 = self._stack, self.size, [], hashlib.sha256
        for leaf in leaves:
            h, index, level = leaf, size, 0
            while index & 1:
                h = sha256(b"\x01" + stack.pop() + h).digest()
                index, level = index >> 1, level + 1
                if level >= min_level:
                    out.append((level, index, h))
            stack.append(h)
            size += 1
        self.size = size
        return out

    def root(self) -> bytes:
        return fold(self._stack)


# -- verification (RFC 9162 §2.1.3.2 and §2.1.4.2) ----------------------------------------


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Raise ProofError unless `proof` shows `leaf` at `index` in the tree `(size, root)`."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside the tree of size {size}")
    if any(len(p) != HASH_SIZE for p in proof):
        raise ProofError("an inclusion proof hash is not 32 bytes")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("the inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("the inclusion proof is too short for the tree size")
    if r != root:
        raise ProofError("the inclusion proof does not lead to the checkpoint's root hash")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Raise ProofError unless `proof` shows tree `(new_size, new_root)` extends the old one."""
    if not 0 <= old_size <= new_size:
        raise ProofError(f"size {new_size} cannot extend size {old_size}")
    if any(len(p) != HASH_SIZE for p in proof):
        raise ProofError("a consistency proof hash is not 32 bytes")
    if old_size == new_size:
        if proof:
            raise ProofError("a proof between equal sizes must be empty")
        if old_root != new_root:
            raise ProofError(f"two different root hashes for the same size {old_size} (a fork)")
        return
    if old_size == 0:
        if proof:
            raise ProofError("a proof from the empty tree must be empty")
        return
    if not proof:
        raise ProofError("the consistency proof is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("the consistency proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("the consistency proof is too short for the tree sizes")
    if fr != old_root:
        raise ProofError(
            f"the log's tree at size {new_size} does not contain the tree at size {old_size} "
            "that was seen before (a fork or a rewritten history)"
        )
    if sr != new_root:
        raise ProofError("the consistency proof does not lead to the new root hash")
