"""Walk the log and its checkpoints and say exactly where and how it was damaged.

Works on any backend through the read interface, so a read-only open beside a running
bridge can verify. Each record must (1) sit at the next position, (2) link to the previous
record's hash, (3) recompute to its own HMAC and public digest. Each checkpoint — from the
database and from the file kept outside it — must carry a valid Ed25519 signature and
match the record at its size; a checkpoint larger than the log proves a cut tail.

The transparency-log side is checked the same way, because proofs are served from it: the
Merkle tree is recomputed from the records' leaves during the walk, every stored node must
equal the recomputed one, and every signed tree note (database and file) must be this
store's, carry a valid signature and sign the recomputed root at its size.
"""

from __future__ import annotations

import base64
import hashlib
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .chain import ChainKey, CheckpointFile, checkpoint_signature_ok, load_public_key
from .errors import StoreCorrupt, StoreError
from .merkle import HASH_SIZE, Frontier, Node, leaf_hash
from .model import GENESIS_HASH, Checkpoint, RawRow, canonical
from .note import (
    Note,
    NoteError,
    TreeHead,
    Verifier,
    open_note,
    parse_checkpoint,
    parse_note,
    raw_public,
)
from .store import EventStore, StoreConfig
from .tlog import TreeCheckpoint, TreeCheckpointFile, origin_of, tree_checkpoint_path

ProblemKind = Literal[
    "key_mismatch",
    "edited",
    "reordered",
    "broken_link",
    "missing",
    "truncated",
    "checkpoint_forged",
    "checkpoint_mismatch",
    "checkpoint_removed",
    "checkpoint_file_missing",
    "unreadable",
    "integrity",
    "index_mismatch",
    "tree_node_mismatch",
    "tree_node_missing",
    "tree_note_forged",
    "tree_root_mismatch",
    "tree_note_removed",
]
MAX_PROBLEMS = 100
_PAGE = 5000


class Problem(msgspec.Struct, frozen=True):
    position: int
    kind: ProblemKind
    detail: str


class VerifyReport(msgspec.Struct):
    ok: bool
    size: int
    records_checked: int
    checkpoints_checked: int
    last_checkpoint: int
    problems: list[Problem]
    tree_nodes_checked: int = 0
    tree_notes_checked: int = 0

    @property
    def first(self) -> Problem | None:
        return self.problems[0] if self.problems else None


async def verify_with_config(
    store: EventStore,
    config: StoreConfig,
    *,
    public_key_pem: bytes | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Verify `store` with the keys and checkpoint file its configuration points at."""
    pem = public_key_pem or config.signing_key_file.with_suffix(".pub").read_bytes()
    file_missing = not config.checkpoints.exists() and await store.checkpoint_file_expected()
    return await verify_store(
        store,
        chain_key=ChainKey.load(config.chain_key_file, create=False),
        public_key=load_public_key(pem),
        file_checkpoints=CheckpointFile(config.checkpoints).read(),
        # read before the store's notes: a note is stored before it is appended to the file
        file_tree_notes=TreeCheckpointFile(tree_checkpoint_path(config.checkpoints)).read(),
        key_fingerprint=await store.key_fingerprint(),
        allocated=await store.allocated(),
        progress=progress,
        checkpoint_file_missing=str(config.checkpoints) if file_missing else None,
    )


async def verify_store(
    store: EventStore,
    *,
    chain_key: ChainKey,
    public_key: Ed25519PublicKey,
    file_checkpoints: list[Checkpoint] = (),  # type: ignore[assignment]
    file_tree_notes: list[TreeCheckpoint] = (),  # type: ignore[assignment]
    key_fingerprint: str | None = None,
    allocated: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    checkpoint_file_missing: str | None = None,
) -> VerifyReport:
    """Verify the whole store; `allocated` is the highest position ever handed out, if known.

    `checkpoint_file_missing` names the checkpoint file when the store has written one
    and it is gone: the evidence a cut tail is checked against was lost. `file_tree_notes`
    are the signed tree notes kept beside it (`TreeCheckpointFile`).
    """
    problems: list[Problem] = []
    if key_fingerprint is not None and key_fingerprint != chain_key.fingerprint():
        problems.append(Problem(0, "key_mismatch", "the chain key is not this store's key"))
        return VerifyReport(False, 0, 0, 0, 0, problems)
    if checkpoint_file_missing is not None:
        problems.append(
            Problem(
                0,
                "checkpoint_file_missing",
                f"checkpoint file {checkpoint_file_missing} is missing but the store has "
                "written checkpoints to it: a cut tail can no longer be detected",
            )
        )
    problems += [Problem(p, kind, d) for p, kind, d in await store.integrity_problems()]  # type: ignore[arg-type]

    head = await store.head()
    walk = _Walk(chain_key)
    stored = await store.checkpoints()  # read once: a checkpoint signed mid-scan is not damage
    walk.wanted = {cp.size for cp in file_checkpoints} | {cp.size for cp in stored}
    # a backend without the Merkle tree (as bridge/tlog.py treats it) has nothing to check
    has_tree = hasattr(store, "tree_nodes")
    stored_notes: list[TreeCheckpoint] = []
    notes_readable = True
    try:
        if has_tree:
            stored_notes = await store.tree_checkpoints()  # type: ignore[attr-defined]
    except StoreCorrupt as exc:  # judge the file's notes and the nodes all the same
        notes_readable = False
        problems.append(Problem(0, "unreadable", f"the stored tree notes cannot be read: {exc}"))
    notes = _read_notes(store.store_id, stored_notes, file_tree_notes)
    tree = _Tree(store if has_tree else None, notes, notes_readable)
    position = 1
    while len(problems) + len(walk.problems) + len(tree.problems) < MAX_PROBLEMS:
        try:
            page = await store.read_raw(position, limit=_PAGE)
        except StoreError as exc:
            position = await _skip_unreadable(store, position, head.position, exc, walk)
            if position == 0:
                break
            continue
        if not page:
            break
        walk.check(page)
        await tree.grow(walk)
        position = page[-1][0] + 1
        if progress is not None:
            progress(walk.checked, head.position)
    size = walk.last_position
    hashes = await _where_hashes_are(
        store, {p.detail[:16] for p in walk.problems if p.kind == "broken_link"}
    )
    problems += [_classify_link(p, hashes) for p in walk.problems]
    if allocated is not None and allocated > size:
        problems.append(
            Problem(
                size + 1,
                "truncated",
                f"positions {size + 1}..{allocated} were allocated and are gone",
            )
        )
    cps = _checkpoint_problems(
        store.store_id, stored, file_checkpoints, public_key, size, walk.at_size
    )
    problems.extend(cps[0])
    first_damage = min((p.position for p in walk.problems), default=None)
    problems += tree.finish(store.store_id, public_key, size, first_damage)
    problems.sort(key=lambda p: p.position)
    return VerifyReport(
        not problems,
        size,
        walk.checked,
        cps[1],
        cps[2],
        problems[:MAX_PROBLEMS],
        tree.nodes_checked,
        tree.notes_checked,
    )


async def stored_bytes_problems(
    store: EventStore, first: int, last: int, anchor_digest: str
) -> list[Problem]:
    """Records in `first..last` whose stored bytes do not give their public digest, or
    are not the canonical encoding of what they decode to — checked with the public chain
    only (no chain key), so an export can refuse to launder an edited record into a
    re-encoded one that would verify. `anchor_digest` is the digest of `first - 1`."""
    problems: list[Problem] = []
    prev, position = anchor_digest, first
    while position <= last and len(problems) < MAX_PROBLEMS:
        page = await store.read_raw(position, limit=min(_PAGE, last - position + 1))
        if not page:
            break
        for row in page:
            if row[0] > last:
                break
            data = _as_bytes(row[7])
            problem: Problem | None = None
            try:
                body = canonical(
                    position=row[0],
                    stream=row[1],
                    version=row[2],
                    event_id=row[3],
                    type=row[4],
                    time=row[5],
                    actor=row[6],
                    data_json=data,
                )
                if hashlib.sha256(body + bytes.fromhex(prev)).hexdigest() != row[10]:
                    problem = Problem(
                        row[0], "edited", f"record at {row[0]} does not match its digest"
                    )
                elif _canonical_encoder.encode(_data_decoder.decode(data)) != data:
                    problem = Problem(
                        row[0], "edited", f"record at {row[0]} is not stored canonically"
                    )
            except Exception as exc:  # undecodable or mistyped: edited too
                problem = Problem(row[0], "edited", f"record at {row[0]} cannot be checked ({exc})")
            if problem is not None:
                problems.append(problem)
            prev = row[10]
        position = page[-1][0] + 1
    return problems


async def _where_hashes_are(store: EventStore, prefixes: set[str]) -> dict[str, int]:
    """Positions of the records whose hashes broken links point at: a second pass that
    only a damaged log pays for, instead of indexing every hash during the walk."""
    found: dict[str, int] = {}
    position = 1
    while prefixes:
        try:
            page = await store.read_raw(position, limit=_PAGE)
        except StoreError:
            position += _PAGE
            if position > (await store.head()).position:
                break
            continue
        if not page:
            break
        for row in page:
            if row[9][:16] in prefixes:
                found[row[9][:16]] = row[0]
        position = page[-1][0] + 1
    return found


async def _skip_unreadable(
    store: EventStore, position: int, head: int, error: StoreError, walk: _Walk
) -> int:
    """A page the backend cannot read (a corrupt B-tree page): report it and read on from
    the next position that reads, so one bad page does not hide the rest of the log."""
    start = position
    while position <= head:
        position += 1
        try:
            if await store.read_raw(position, limit=1):
                break
        except StoreError:
            continue
    else:
        position = 0
    end = position - 1 if position else head
    walk.problems.append(
        Problem(start, "unreadable", f"positions {start}..{end} cannot be read: {error}")
    )
    walk.last_position = end  # the gap is reported once, here, not again as `missing`
    walk.resync = True
    walk.tree_open = False
    return position


_NO_LEAF = bytes(HASH_SIZE)
"""Stands in for the leaf of a row whose fields cannot even be encoded (reported as edited)."""
_data_decoder = msgspec.json.Decoder()
_canonical_encoder = msgspec.json.Encoder(order="sorted")
_head_encoder = _canonical_encoder.encode


class _Walk:
    """State of the chain walk over stored rows, and the tight loop that checks them.

    Each row is hashed as stored — `data` exactly as the backend holds it — so any byte
    edit breaks its HMAC and public digest; the bytes must also be the canonical
    encoding of what they decode to, so a record that merely *means* the same (other
    whitespace, key order, escapes, number format) is still reported as edited.
    """

    def __init__(self, key: ChainKey) -> None:
        self.key = key
        self.last_position = 0
        self.last_hash = GENESIS_HASH
        self.last_digest = GENESIS_HASH
        self.checked = 0
        self.problems: list[Problem] = []
        self.wanted: set[int] = set()
        self.at_size: dict[int, str] = {}
        self.resync = False
        self.leaves: list[bytes] = []
        """Merkle leaves of the rows checked since `_Tree.grow` last took them."""
        self.tree_open = True
        """Whether the log is still contiguous, so the walked leaves still make its tree."""

    def check(self, page: list[RawRow]) -> None:
        # The hot loop of verify (millions of rows): locals only, the canonical bytes built
        # inline exactly as `model.canonical` builds them and the HMAC inlined from the
        # key's precomputed states; `_check_body` explains a row that fails.
        inner, outer = self.key._inner.copy, self.key._outer.copy
        sha256, fromhex, encode = hashlib.sha256, bytes.fromhex, _head_encoder
        decode, canonical_encode = _data_decoder.decode, _canonical_encoder.encode
        problems, wanted, at_size, resync = self.problems, self.wanted, self.at_size, self.resync
        last_position, last_hash, last_digest = self.last_position, self.last_hash, self.last_digest
        leaf, leaves, tree_open = leaf_hash, self.leaves, self.tree_open
        for row in page:
            p, data, prev_hash, hash_, digest = row[0], row[7], row[8], row[9], row[10]
            if p != last_position + 1:
                problems.append(
                    Problem(
                        last_position + 1,
                        "missing",
                        f"positions {last_position + 1}..{p - 1} are missing",
                    )
                )
                tree_open = False  # the leaves after a gap are not the tree's
            else:
                try:
                    head = encode([p, row[1], row[2], row[3], row[4], row[5], row[6]])
                    body: bytes | None = head[:-1] + b"," + data + b"]"
                except Exception:  # wrong types: the slow path names it
                    body = None
                if tree_open:  # a row that fails is reported, so no tree node over it is judged
                    leaves.append(_NO_LEAF if body is None else leaf(body))
                if resync:
                    resync = False  # after an unreadable stretch: chain on from here
                elif prev_hash != last_hash:
                    problems.append(Problem(p, "broken_link", prev_hash))
                elif body is None:
                    problems.append(_check_body(row, self.key.link, last_digest))
                else:
                    try:
                        h = inner()
                        h.update(body)
                        h.update(fromhex(prev_hash))
                        o = outer()
                        o.update(h.digest())
                        ok = (
                            o.hexdigest() == hash_
                            and sha256(body + fromhex(last_digest)).hexdigest() == digest
                            and canonical_encode(decode(data)) == data
                        )
                    except Exception:  # undecodable data: the slow path names it
                        ok = False
                    if not ok:
                        problems.append(_check_body(row, self.key.link, last_digest))
            last_position, last_hash, last_digest = p, hash_, digest
            if p in wanted:
                at_size[p] = hash_
        self.checked += len(page)
        self.resync, self.tree_open = resync, tree_open
        self.last_position, self.last_hash, self.last_digest = last_position, last_hash, last_digest


@dataclass(frozen=True, slots=True)
class _TreeNote:
    """One signed tree note as read, parsed once (`error` says why it does not parse)."""

    cp: TreeCheckpoint
    in_store: bool
    note: Note | None = None
    head: TreeHead | None = None
    error: str = ""


def _read_notes(
    store_id: str, stored: list[TreeCheckpoint], from_file: list[TreeCheckpoint]
) -> list[_TreeNote]:
    """The store's and the file's notes, each once: a stored copy that also carries witness
    cosignatures is the same note. A file note of another log is left out, as another
    store's checkpoints in a shared checkpoint file are; a stored one is reported."""
    origin = origin_of(store_id)
    out: list[_TreeNote] = []
    seen: set[tuple[object, ...]] = set()
    for cp, in_store in [*((c, True) for c in stored), *((c, False) for c in from_file)]:
        key: tuple[object, ...]
        try:
            note = parse_note(cp.note)
            head = parse_checkpoint(note.text)
        except NoteError as exc:
            key, entry = (cp.size, cp.note), _TreeNote(cp, in_store, error=str(exc))
        else:
            if head.origin != origin and not in_store:
                continue
            key = (cp.size, note.text, *(s for s in note.signatures if s.name == origin))
            entry = _TreeNote(cp, in_store, note, head)
        if key not in seen:
            seen.add(key)
            out.append(entry)
    return out


_Judged = tuple[int, int, bytes, int, int]
"""A recomputed node to compare: level, index, hash, first and last position it covers."""


class _Tree:
    """The Merkle tree recomputed from the walked leaves, judged against the stored one.

    It grows only while the log is contiguous from position 1: after a gap the leaves are
    no longer the tree's (and the gap is reported already). The nodes each page completes
    at `STORED_LEVEL` and above are fetched and compared at once, so memory stays bounded
    by a page whatever the log's size. A node over a record the walk reported is not
    judged: its mismatch is that record's damage, not the tree's.
    """

    def __init__(self, store: Any, notes: list[_TreeNote], notes_readable: bool = True) -> None:
        self.store = store
        """The backend's `tree_nodes`, or None for a backend that keeps no tree."""
        self.notes = notes
        self.notes_readable = notes_readable
        """False when the store's notes could not be read: a file note is then not `removed`."""
        self.frontier = Frontier()
        self.sizes = sorted({n.head.size for n in notes if n.head is not None})
        self._next_size = 0
        self.roots: dict[int, bytes] = {}
        """The recomputed root at each note's size the tree reached."""
        self.problems: list[Problem] = []
        self.missing: list[Problem] = []
        self.kept = any(n.in_store for n in notes)
        """Whether the store keeps a tree (it signed notes, or nodes were found): only
        then is a node it lacks damage, not a store from before the tree."""
        self.nodes_checked = 0
        self.notes_checked = 0
        self._unreadable_end = -1
        """Last position of the latest `unreadable` node range, so pages in a row merge."""

    async def grow(self, walk: _Walk) -> None:
        """Add the leaves the walk just checked; compare the nodes they complete."""
        leaves, walk.leaves = walk.leaves, []
        frontier, sizes = self.frontier, self.sizes
        start, taken, completed = frontier.size, 0, []
        while self._next_size < len(sizes) and sizes[self._next_size] <= start + len(leaves):
            size = sizes[self._next_size]
            completed += frontier.extend(leaves[taken : size - start])
            taken = size - start
            self.roots[size] = frontier.root()
            self._next_size += 1
        completed += frontier.extend(leaves[taken:])
        if completed and self.store is not None:
            await self._compare(completed, sorted(p.position for p in walk.problems))

    async def _compare(self, completed: list[tuple[int, int, bytes]], damaged: list[int]) -> None:
        judged: list[_Judged] = []
        for level, index, node in completed:
            first, last = (index << level) + 1, (index + 1) << level
            at = bisect_left(damaged, first)
            if at == len(damaged) or damaged[at] > last:
                judged.append((level, index, node, first, last))
        if not judged:
            return
        try:
            found = await self.store.tree_nodes([(level, index) for level, index, *_ in judged])
        except StoreCorrupt:  # a damaged page of nodes: find which, and judge the others
            found, judged = await self._read_each(judged)
        self.kept = self.kept or bool(found)
        for level, index, node, first, last in judged:
            where = f"Merkle node {level}/{index} (positions {first}..{last})"
            stored = found.get((level, index))
            if stored is None:
                if len(self.missing) < MAX_PROBLEMS:
                    self.missing.append(
                        Problem(first, "tree_node_missing", f"{where} is not stored")
                    )
            elif stored != node:
                self.problems.append(
                    Problem(
                        first,
                        "tree_node_mismatch",
                        f"stored {where} does not match the records: proofs through it are wrong",
                    )
                )
        self.nodes_checked += len(judged)

    async def _read_each(self, judged: list[_Judged]) -> tuple[dict[Node, bytes], list[_Judged]]:
        """The nodes that still read, one lookup each (only a damaged store pays for it),
        and the positions of those that do not reported as `unreadable`."""
        found: dict[Node, bytes] = {}
        readable = []
        for entry in judged:
            try:
                found.update(await self.store.tree_nodes([entry[:2]]))
            except StoreCorrupt as exc:
                self._unreadable(entry[3], entry[4], exc)
            else:
                readable.append(entry)
        return found, readable

    def _unreadable(self, first: int, last: int, exc: StoreCorrupt) -> None:
        """Report the positions whose nodes cannot be read, one problem per damaged stretch
        (a damaged root page fails every lookup: that is one stretch, not one per page)."""
        previous = self.problems[-1] if self.problems else None
        if (
            previous is not None
            and previous.kind == "unreadable"
            and first <= self._unreadable_end + 1
        ):
            first, last = min(first, previous.position), max(last, self._unreadable_end)
            self.problems.pop()
        self._unreadable_end = last
        detail = f"the stored Merkle nodes over positions {first}..{last} cannot be read: {exc}"
        self.problems.append(Problem(first, "unreadable", detail))

    def finish(
        self, store_id: str, public_key: Ed25519PublicKey, size: int, first_damage: int | None
    ) -> list[Problem]:
        """The node problems, and each note judged against the recomputed roots.

        `first_damage` is the first record the walk reported: the tree over it cannot be
        recomputed, so no root from there on is compared (the record is the damage)."""
        origin = origin_of(store_id)
        verifier = Verifier(origin, raw_public(public_key))
        stored_sizes = {n.cp.size for n in self.notes if n.in_store}
        problems = self.problems + (self.missing if self.kept else [])
        for n in self.notes:
            problem = self._judge(n, origin, verifier, size, first_damage, stored_sizes)
            if problem is not None:
                problems.append(problem)
        self.notes_checked = len(self.notes)
        return problems

    def _judge(
        self,
        n: _TreeNote,
        origin: str,
        verifier: Verifier,
        size: int,
        first_damage: int | None,
        stored_sizes: set[int],
    ) -> Problem | None:
        where = f"tree note at size {n.cp.size}" + ("" if n.in_store else " in the file")
        if n.note is None or n.head is None:
            return Problem(n.cp.size, "tree_note_forged", f"{where} is malformed ({n.error})")
        head = n.head
        if head.origin != origin:
            detail = f"{where} is of log {head.origin!r}, not this store's {origin!r}"
            return Problem(n.cp.size, "tree_note_forged", detail)
        try:
            open_note(n.note, verifier)
        except NoteError as exc:
            return Problem(n.cp.size, "tree_note_forged", f"{where} is not validly signed ({exc})")
        if head.size != n.cp.size:
            return Problem(n.cp.size, "tree_note_forged", f"{where} signs size {head.size}")
        if head.size > size:
            return Problem(
                size + 1,
                "truncated",
                f"a signed tree note covers {head.size} events; the store ends at {size}",
            )
        root = self.roots.get(head.size)
        if root is None:  # past a gap in the log, reported there
            return None
        if (first_damage is None or head.size < first_damage) and root != head.root:
            return Problem(
                head.size,
                "tree_root_mismatch",
                f"{where} signs root {_b64(head.root)}, the records give {_b64(root)}",
            )
        if head.size not in stored_sizes and self.notes_readable:
            return Problem(
                head.size,
                "tree_note_removed",
                f"tree note at size {head.size} is in the file but not in the store",
            )
        return None


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _as_bytes(data: object) -> bytes:
    """A TEXT (or other) value written past the writer, as the bytes it stands for."""
    if isinstance(data, bytes):
        return data
    return data.encode() if isinstance(data, str) else repr(data).encode()


def _check_body(row: RawRow, link: Any, last_digest: str) -> Problem:
    """Why a row failed the fast check, as precisely as the stored values allow."""
    p, data = row[0], _as_bytes(row[7])
    try:
        body = canonical(
            position=p,
            stream=row[1],
            version=row[2],
            event_id=row[3],
            type=row[4],
            time=row[5],
            actor=row[6],
            data_json=data,
        )
    except (TypeError, msgspec.EncodeError) as exc:
        return Problem(p, "edited", f"record at {p} has a field of the wrong type ({exc})")
    if link(body, row[8]) != row[9]:
        return Problem(p, "edited", f"record at {p} does not match its hash")
    if hashlib.sha256(body + bytes.fromhex(last_digest)).hexdigest() != row[10]:
        return Problem(p, "edited", f"record at {p} does not match its public digest")
    try:
        decoded = _data_decoder.decode(data)
    except msgspec.DecodeError as exc:
        return Problem(p, "edited", f"record at {p} is not valid JSON ({exc})")
    if not isinstance(decoded, dict) or _canonical_encoder.encode(decoded) != data:
        return Problem(p, "edited", f"record at {p} is not stored in its canonical encoding")
    return Problem(p, "edited", f"record at {p} could not be checked")


def _classify_link(problem: Problem, hashes: dict[str, int]) -> Problem:
    """A record chained onto another record than its predecessor was moved: say where from."""
    if problem.kind != "broken_link":
        return problem
    p = problem.position
    elsewhere = hashes.get(problem.detail[:16])
    if elsewhere is not None and elsewhere != p:
        return Problem(p, "reordered", f"record at {p} was chained after position {elsewhere}")
    return Problem(p, "broken_link", f"record at {p} does not link to position {p - 1}")


def _checkpoint_problems(
    store_id: str,
    stored: list[Checkpoint],
    from_file: list[Checkpoint],
    public_key: Ed25519PublicKey,
    size: int,
    at_size: dict[int, str],
) -> tuple[list[Problem], int, int]:
    problems: list[Problem] = []
    stored_sizes = {cp.size for cp in stored}
    seen: set[tuple[int, str]] = set()
    last_good = 0
    for cp in [*stored, *(c for c in from_file if c.store_id == store_id)]:
        if (cp.size, cp.signature) in seen:
            continue
        seen.add((cp.size, cp.signature))
        if not checkpoint_signature_ok(cp, public_key):
            problems.append(
                Problem(
                    cp.size,
                    "checkpoint_forged",
                    f"checkpoint at size {cp.size} has an invalid signature",
                )
            )
            continue
        if cp.size > size:
            problems.append(
                Problem(
                    size + 1,
                    "truncated",
                    f"a signed checkpoint covers {cp.size} events; the store ends at {size}",
                )
            )
            continue
        if at_size.get(cp.size) != cp.head_hash:
            problems.append(
                Problem(
                    cp.size,
                    "checkpoint_mismatch",
                    f"record at {cp.size} is not the one checkpointed",
                )
            )
            continue
        if cp.size not in stored_sizes:
            problems.append(
                Problem(
                    cp.size,
                    "checkpoint_removed",
                    f"checkpoint at size {cp.size} is in the file but not in the store",
                )
            )
        last_good = max(last_good, cp.size)
    return problems, len(seen), last_good
