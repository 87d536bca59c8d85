"""Walk the log and its checkpoints and say exactly where and how it was damaged.

Works on any backend through the read interface, so a read-only open beside a running
bridge can verify. Each record must (1) sit at the next position, (2) link to the previous
record's hash, (3) recompute to its own HMAC and public digest. Each checkpoint — from the
database and from the file kept outside it — must carry a valid Ed25519 signature and
match the record at its size; a checkpoint larger than the log proves a cut tail.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .chain import (
    ChainKey,
    CheckpointFile,
    checkpoint_signature_ok,
    load_public_key,
    public_link,
)
from .model import GENESIS_HASH, Checkpoint, Record, record_bytes
from .store import EventStore, StoreConfig

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
    return await verify_store(
        store,
        chain_key=ChainKey.load(config.chain_key_file, create=False),
        public_key=load_public_key(pem),
        file_checkpoints=CheckpointFile(config.checkpoints).read(),
        key_fingerprint=await store.key_fingerprint(),
        allocated=await store.allocated(),
        progress=progress,
    )


async def verify_store(
    store: EventStore,
    *,
    chain_key: ChainKey,
    public_key: Ed25519PublicKey,
    file_checkpoints: list[Checkpoint] = (),  # type: ignore[assignment]
    key_fingerprint: str | None = None,
    allocated: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Verify the whole store; `allocated` is the highest position ever handed out, if known."""
    problems: list[Problem] = []
    if key_fingerprint is not None and key_fingerprint != chain_key.fingerprint():
        problems.append(Problem(0, "key_mismatch", "the chain key is not this store's key"))
        return VerifyReport(False, 0, 0, 0, 0, problems)

    head = await store.head()
    hashes: dict[str, int] = {}
    last_position, last_hash, last_digest, checked = 0, GENESIS_HASH, GENESIS_HASH, 0
    at_size: dict[int, str] = {}
    stored = await store.checkpoints()  # read once: a checkpoint signed mid-scan is not damage
    wanted = {cp.size for cp in file_checkpoints} | {cp.size for cp in stored}
    position = 1
    while len(problems) < MAX_PROBLEMS:
        page = await store.read_all(position, limit=_PAGE)
        if not page:
            break
        for record in page:
            problems.extend(_check_record(record, last_position, last_hash, last_digest, chain_key))
            hashes[record.hash[:16]] = record.position
            last_position, last_hash, last_digest = record.position, record.hash, record.digest
            if record.position in wanted:
                at_size[record.position] = record.hash
            checked += 1
        position = page[-1].position + 1
        if progress is not None:
            progress(checked, head.position)
    size = last_position
    problems = [_classify_link(p, hashes) for p in problems]
    if allocated is not None and allocated > size:
        problems.append(
            Problem(
                size + 1,
                "truncated",
                f"positions {size + 1}..{allocated} were allocated and are gone",
            )
        )
    cps = _checkpoint_problems(store.store_id, stored, file_checkpoints, public_key, size, at_size)
    problems.extend(cps[0])
    problems.sort(key=lambda p: p.position)
    return VerifyReport(not problems, size, checked, cps[1], cps[2], problems[:MAX_PROBLEMS])


def _check_record(
    record: Record, last_position: int, last_hash: str, last_digest: str, key: ChainKey
) -> list[Problem]:
    """Problems of one record relative to its predecessor; broken links are classified later."""
    p = record.position
    if p != last_position + 1:
        return [
            Problem(
                last_position + 1, "missing", f"positions {last_position + 1}..{p - 1} are missing"
            )
        ]
    if record.prev_hash != last_hash:
        return [Problem(p, "broken_link", record.prev_hash)]
    body = record_bytes(record)
    if key.link(body, record.prev_hash) != record.hash:
        return [Problem(p, "edited", f"record at {p} does not match its hash")]
    if public_link(body, last_digest) != record.digest:
        return [Problem(p, "edited", f"record at {p} does not match its public digest")]
    return []


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
