"""Verifiable exports: a JSONL slice of the log that an auditor checks with the public key only.

The store keeps a public SHA-256 chain, `digest_p = sha256(canonical_p ‖ digest_{p-1})`,
and signs `(size, head_digest)` in its checkpoints. Because each digest hashes the whole
record *and* its predecessor's digest, the only way to link record p to a signed head at
size N is to recompute every digest from p to N, which needs the full content of every
record in between. So an export is always a *contiguous* run of complete records,
`first..last`, plus the signed checkpoints inside that run:

- unfiltered: `first` = --from-position (default 1), `last` = the head (or --to-position);
- filtered: `first` = --from-position as well (the start is not signed: starting at the
  first match would let an exporter drop earlier matches unnoticed), `last` = the first
  signed checkpoint at or after the last matching record. Records that do not match are
  still included (flagged `"match": false`) because without them the chain cannot be
  recomputed; the verifier re-applies the filter itself, so an exporter cannot hide a
  matching record by flagging it false. (Hiding non-matching content would need a chain
  over per-record leaf hashes, which the store does not have.)

Filtered exports are, by default, *inclusion* exports instead (format version 2): only
the matching records, each with its RFC 9162 inclusion proof in the store's signed C2SP
checkpoint, so nothing else is revealed. They prove every record shown is in the log
unaltered; they cannot prove no other record matches (that needs the contiguous form,
`--contiguous`). Both forms carry the C2SP checkpoint, and with `--previous CHECKPOINT`
a consistency proof that it extends a checkpoint the recipient saw before.

The first line is a header (format, store id, filters, range, `anchor_digest` = digest of
`first - 1`, the signed checkpoints); then one line per record with its hashes and
`prev_digest`; then an `end` line. Only the checkpoints are authenticated: the header
and the end line are claims the verifier compares against what it recomputed.

Either form can be *redacted* (`--redact`, header `"redacted": true`): every record that
holds contents is written without them — not even their ciphertext — with the exporter's
signed attestation of its clear fields, digest and leaf in their place; what that proves
and what it does not is spelled out in `bridge.audit_redact`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import msgspec

from events import Checkpoint, Record, merkle
from events.chain import checkpoint_signature_ok, load_public_key, public_link
from events.model import GENESIS_HASH, record_bytes

from .audit import EXIT_USAGE, AuditError, AuditQuery, EventSource, iso, iterate, record_json
from .audit_redact import attestation_problem, has_contents, line_leaf
from .tlog import VerifyFailure, b64, check_consistency, consistency_section, prover_for, unb64

FORMAT, VERSION, INCLUSION_VERSION = "lighthouse-audit-export", 1, 2
MAX_PROBLEMS = 100
_PROGRESS_EVERY = 1000
Progress = Callable[[int, int], None] | None


# -- writing -----------------------------------------------------------------------------


@dataclass(slots=True)
class ExportSummary:
    out: Path
    first: int
    last: int
    records: int
    matched: int
    covered_to: int
    inclusion: bool = False
    redacted: bool = False

    def describe(self) -> str:
        return self._describe() + (
            "; contents left out (redacted records are attested with the checkpoint key)"
            if self.redacted
            else ""
        )

    def _describe(self) -> str:
        if self.inclusion:
            return (
                f"exported {self.records} matching records (positions {self.first}.."
                f"{self.last}) with inclusion proofs in the signed checkpoint at "
                f"{self.covered_to} to {self.out}; no other record is in the file"
            )
        tail = self.last - self.covered_to
        covered = (
            f"signed checkpoint covers up to {self.covered_to}"
            if self.covered_to
            else "no signed checkpoint covers it yet"
        )
        note = f"; {tail} records after it are not covered by a checkpoint" if tail > 0 else ""
        return (
            f"exported {self.records} records (positions {self.first}..{self.last}, "
            f"{self.matched} matching) to {self.out}; {covered}{note}"
        )


async def _span(source: EventSource, query: AuditQuery, head: int) -> tuple[int, int]:
    """First and last position an export of `query` must hold (before extending to a checkpoint).

    A filtered export still starts at --from-position (default 1), not at the first match:
    the start is not signed, so starting later would let an exporter silently leave out
    earlier matches. From a fixed start, the verifier proves no match was left out.
    """
    first = query.from_position
    last = min(query.to_position or head, head)
    if query.filtered:
        last = 0
        async for record in iterate(source, query):
            last = record.position
    if last < first:
        raise AuditError("no events match the filters in that range; nothing to export")
    return first, last


async def _anchor(source: EventSource, first: int) -> str:
    """The digest the first exported record chains onto (genesis for position 1)."""
    if first <= 1:
        return GENESIS_HASH
    page = await source.page(AuditQuery(from_position=first - 1, to_position=first - 1, limit=1))
    if not page.events:
        raise AuditError(f"position {first - 1} is missing from the store; run `lighthouse verify`")
    return page.events[0].digest


async def _refuse_edited(source: EventSource, first: int, last: int, anchor: str) -> None:
    """Hash what is stored, not what it decodes to: an export re-encodes each record, so a
    byte edit that decodes the same would otherwise verify. Reading a store file, check the
    stored bytes first and refuse to export an edited record."""
    store = getattr(source, "store", None)
    if store is None:  # a running bridge's API hands out decoded records only
        return
    from events.verify import stored_bytes_problems

    problems = await stored_bytes_problems(store, first, last, anchor)
    if problems:
        p = problems[0]
        raise AuditError(
            f"not exporting: {p.detail} (stored bytes edited); run `lighthouse verify`"
        )


async def _tlog_section(
    source: EventSource, previous: str | None, required: bool
) -> dict[str, Any] | None:
    """The latest C2SP checkpoint (and a consistency proof from `previous`), if the store
    has one; an inclusion export or a `--previous` cannot do without."""
    prover = prover_for(source)
    try:
        cp = await prover.checkpoint()
    except AuditError:
        if required or previous is not None:
            raise
        return None
    section: dict[str, Any] = {"size": cp.size, "checkpoint": cp.note}
    if previous is not None:
        section["consistency"] = await consistency_section(previous, cp, prover)
    return section


@contextlib.contextmanager
def _partial(out: Path) -> Iterator[TextIO]:
    """The file an export is written to before its rename, removed when writing fails
    (the source stops answering, no signing key): no partial file is left behind."""
    tmp = out.with_name(out.name + ".partial")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            yield fh
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


async def write_inclusion_export(
    source: EventSource,
    query: AuditQuery,
    out: Path,
    progress: Progress = None,
    previous: str | None = None,
    redact: bool = False,
) -> ExportSummary:
    """Only the matching records, each with its inclusion proof in the signed checkpoint."""
    tlog = await _tlog_section(source, previous, required=True)
    assert tlog is not None
    size, prover = tlog["size"], prover_for(source)
    bounded = replace(query, to_position=min(query.to_position or size, size))
    header = {
        "format": FORMAT,
        "version": INCLUSION_VERSION,
        "exported_at": time.time(),
        "selector": query.selector(),
        "positions": [query.from_position, query.to_position],
        "tlog": tlog,
    }
    if redact:
        header["redacted"] = True
    count, first, last = 0, 0, 0
    with _partial(out) as fh:
        fh.write(json.dumps(header, separators=(",", ":")) + "\n")
        async for record in iterate(source, bounded, redact=redact):
            proof = await prover.inclusion(record.position - 1, size)
            line = {**record_json(record), "proof": [b64(h) for h in proof]}
            fh.write(json.dumps(line, separators=(",", ":")) + "\n")
            count, last = count + 1, record.position
            first = first or record.position
            if progress is not None and count % _PROGRESS_EVERY == 0:
                progress(count, count)
        fh.write(json.dumps({"end": True, "records": count, "matched": count}) + "\n")
    if not count:
        os.unlink(fh.name)
        raise AuditError("no events match the filters up to the signed checkpoint")
    os.replace(fh.name, out)
    return ExportSummary(out, first, last, count, count, size, inclusion=True, redacted=redact)


async def write_export(
    source: EventSource,
    query: AuditQuery,
    out: Path,
    progress: Progress = None,
    *,
    contiguous: bool = False,
    previous: str | None = None,
    redact: bool = False,
) -> ExportSummary:
    """Write the export atomically (temp file, then rename): a partial file never appears.
    `redact`: contents left out, attested instead (`bridge.audit_redact`)."""
    if query.filtered and not contiguous:
        return await write_inclusion_export(source, query, out, progress, previous, redact)
    tlog = await _tlog_section(source, previous, required=False)
    head = await source.head()
    checkpoints = await source.checkpoints()
    first, last = await _span(source, query, head)
    covering = [cp.size for cp in checkpoints if cp.size >= last and cp.size <= head]
    last = min(covering) if covering else last
    included = [cp for cp in checkpoints if first <= cp.size <= last]
    header = {
        "format": FORMAT,
        "version": VERSION,
        "store_id": included[-1].store_id if included else None,
        "exported_at": time.time(),
        "selector": query.selector(),
        "positions": [query.from_position, query.to_position],
        "first": first,
        "last": last,
        "anchor_digest": await _anchor(source, first),
        "checkpoints": [msgspec.to_builtins(cp) for cp in included],
    }
    if redact:
        header["redacted"] = True
    if tlog is not None:
        header["tlog"] = tlog
    await _refuse_edited(source, first, last, header["anchor_digest"])
    count = matched = 0
    prev = header["anchor_digest"]
    with _partial(out) as fh:
        fh.write(json.dumps(header, separators=(",", ":")) + "\n")
        everything = AuditQuery(from_position=first, to_position=last)
        async for record in iterate(source, everything, redact=redact):
            match = query.matches(record)
            line = {**record_json(record), "prev_digest": prev, "match": match}
            fh.write(json.dumps(line, separators=(",", ":")) + "\n")
            prev, count, matched = record.digest, count + 1, matched + match
            if progress is not None and count % _PROGRESS_EVERY == 0:
                progress(count, last - first + 1)
        fh.write(json.dumps({"end": True, "records": count, "matched": matched}) + "\n")
    os.replace(fh.name, out)
    if progress is not None:
        progress(count, last - first + 1)
    covered = max((cp.size for cp in included), default=0)
    return ExportSummary(out, first, last, count, matched, covered, redacted=redact)


# -- verifying ---------------------------------------------------------------------------


class ExportProblem(msgspec.Struct, frozen=True):
    position: int
    kind: str
    detail: str


@dataclass(slots=True)
class ExportReport:
    """What an offline verification proved about one export."""

    store_id: str | None = None
    first: int = 0
    last: int = 0
    records: int = 0
    matched: int = 0
    selector: dict[str, Any] = field(default_factory=dict)
    covered_to: int = 0
    checkpoint_time: float | None = None
    problems: list[ExportProblem] = field(default_factory=list)
    inclusion: bool = False
    extends: int | None = None
    tree_root: str | None = None
    redacted: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def uncovered(self) -> int:
        return max(0, self.last - max(self.covered_to, self.first - 1)) if self.records else 0

    def add(self, position: int, kind: str, detail: str) -> None:
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(ExportProblem(position, kind, detail))

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "store_id": self.store_id,
            "first": self.first,
            "last": self.last,
            "records": self.records,
            "matched": self.matched,
            "selector": self.selector,
            "covered_to": self.covered_to,
            "checkpoint_time": self.checkpoint_time,
            "not_covered": self.uncovered,
            "mode": "inclusion" if self.inclusion else "contiguous",
            "extends": self.extends,
            "tree_root": self.tree_root,
            "redacted": self.redacted,
            "problems": [msgspec.to_builtins(p) for p in self.problems],
        }

    def describe(self) -> str:
        if not self.ok:
            first = self.problems[0]
            lines = [f"FAILED at position {first.position}: {first.kind}: {first.detail}"]
            lines += [f"  also at {p.position}: {p.kind}: {p.detail}" for p in self.problems[1:10]]
            return "\n".join(lines)
        if not self.redacted:
            return self._verified()
        return self._verified() + (
            f"\n{self.redacted} records are redacted: their contents are not in the file; "
            "their clear fields, digest and tree leaf are as the exporter signed them with "
            "the checkpoint key (not recomputable without the contents), and the chain, tree "
            "and checkpoints around them verified"
        )

    def _verified(self) -> str:
        extends = (
            f"; the checkpoint extends the one seen before at size {self.extends}"
            if self.extends is not None
            else ""
        )
        if self.inclusion:
            return (
                f"OK: {self.records} records of log {self.store_id} are in its signed "
                f"checkpoint at size {self.covered_to} unaltered, and each matches the filters "
                f"{json.dumps(self.selector, separators=(',', ':'))}{extends}. The export "
                "reveals no other record; it does not prove that no other record matches "
                "(use a --contiguous export for that)"
            )
        when = iso(self.checkpoint_time) if self.checkpoint_time else "?"
        text = (
            f"OK: {self.records} records (positions {self.first}..{self.last}) of store "
            f"{self.store_id} are complete and unaltered up to the signed checkpoint at "
            f"{self.covered_to} ({when}); {self.matched} match the export's filters "
            f"{json.dumps(self.selector, separators=(',', ':'))}, and no other record in "
            f"{self.first}..{self.last} does"
        )
        text += extends
        if self.uncovered:
            text += (
                f"\nWARNING: {self.uncovered} records after position {self.covered_to} are "
                "not covered by a checkpoint (their content is unproven)"
            )
        return text


def _read_lines(path: Path) -> list[bytes]:
    try:
        return path.read_bytes().splitlines()
    except FileNotFoundError:
        raise AuditError(f"no export file at {path}", EXIT_USAGE) from None


def _header(lines: list[bytes], path: Path) -> dict[str, Any]:
    try:
        header = json.loads(lines[0]) if lines else None
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise AuditError(f"{path} is not a Lighthouse audit export", EXIT_USAGE)
    if header.get("version") not in (VERSION, INCLUSION_VERSION):
        raise AuditError(f"{path}: export version {header.get('version')} is not supported")
    return header


def _public_key(pem: bytes) -> Any:
    try:
        return load_public_key(pem)
    except ValueError as exc:
        reason = str(exc).split(".")[0]
        raise AuditError(
            f"the public key is not an Ed25519 public key PEM ({reason})", EXIT_USAGE
        ) from None


def _digest_of(record: Record, prev: str) -> str:
    return public_link(record_bytes(record), prev)


@dataclass(slots=True)
class _Walk:
    """State of the chain walk: the next expected position and the digest to link to."""

    expected: int
    prev: str
    digests: dict[int, str] = field(default_factory=dict)


def _parse_records(
    lines: list[bytes], report: ExportReport, extra_keys: tuple[str, ...] = ("prev_digest", "match")
) -> tuple[list[tuple[Record, dict]], bool]:
    """Record lines, in file order; whether the `end` line is present and last."""
    records: list[tuple[Record, dict]] = []
    ended = False
    for number, raw in enumerate(lines[1:], start=2):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
            if obj.get("end") is True:
                ended = True
                continue
            record = msgspec.convert({k: v for k, v in obj.items() if k not in extra_keys}, Record)
        except (ValueError, AttributeError, msgspec.ValidationError) as exc:
            report.add(0, "malformed", f"line {number} is not a record: {exc}")
            continue
        if ended:
            report.add(record.position, "malformed", "records after the end line")
        records.append((record, obj))
    return records, ended


@dataclass(slots=True)
class _Redactions:
    """Checks the redacted lines of one export (`bridge.audit_redact`)."""

    key: Any
    claimed: bool  # the header says the export leaves contents out
    report: ExportReport

    def check(self, record: Record, extra: dict, prev: str | None) -> bool:
        """True when the line is redacted: its digest and leaf are then the attested ones.
        `prev`: the digest recomputed for the record before (None: inclusion export)."""
        p = record.position
        if "redaction" not in extra:
            if self.claimed and has_contents(record):
                self.report.add(
                    p,
                    "not_redacted",
                    f"record {p} holds contents (or their ciphertext) although the export "
                    "says it leaves them out",
                )
            return False
        self.report.redacted += 1
        problem = attestation_problem(record, extra["redaction"], prev, self.key)
        if problem is not None:
            self.report.add(p, "edited", f"redacted record {p}: {problem}")
        return True


def _check_record(
    record: Record,
    extra: dict,
    walk: _Walk,
    positions: set[int],
    query: AuditQuery,
    redactions: _Redactions,
) -> None:
    report = redactions.report
    p = record.position
    if p != walk.expected:
        if walk.expected in positions:
            report.add(
                walk.expected, "reordered", f"position {p} appears where {walk.expected} belongs"
            )
        else:
            report.add(walk.expected, "missing", f"positions {walk.expected}..{p - 1} are missing")
        walk.prev = extra.get("prev_digest", walk.prev)  # resynchronise to check the rest
    elif extra.get("prev_digest") != walk.prev:
        report.add(p, "broken_link", f"record {p} does not link to the record before it")
    redacted = redactions.check(record, extra, walk.prev)
    if not redacted and _digest_of(record, walk.prev) != record.digest:
        report.add(p, "edited", f"record {p} does not match its digest (content altered)")
    if extra.get("match") != query.matches(record):
        report.add(p, "match_flag", f"record {p} is flagged match={extra.get('match')} wrongly")
    walk.digests[p] = record.digest
    walk.prev, walk.expected = record.digest, p + 1


def _check_checkpoints(
    checkpoints: list[Checkpoint], key: Any, walk: _Walk, report: ExportReport
) -> None:
    for cp in checkpoints:
        if not checkpoint_signature_ok(cp, key):
            report.add(
                cp.size,
                "checkpoint_forged",
                f"checkpoint at {cp.size} does not verify with this public key "
                "(forged or altered checkpoint, or the wrong key)",
            )
        elif report.store_id is not None and cp.store_id != report.store_id:
            report.add(
                cp.size, "checkpoint_foreign", f"checkpoint at {cp.size} is of another store"
            )
        elif cp.size > report.last:
            report.add(
                report.last + 1,
                "truncated",
                f"a signed checkpoint covers {cp.size} events; the export ends at {report.last}",
            )
        elif walk.digests.get(cp.size) != cp.head_digest:
            report.add(cp.size, "checkpoint_mismatch", f"record {cp.size} is not the one signed")
        elif cp.size > report.covered_to:
            report.covered_to, report.checkpoint_time = cp.size, cp.time


def _check_tlog(
    header: dict[str, Any],
    public_key_pem: bytes,
    previous: str | None,
    report: ExportReport,
    records: list[tuple[Record, dict]],
) -> Any:
    """The header's C2SP checkpoint: signed by the key, extending `previous` if given, and —
    for an export from position 1 that reaches it — the root of the exported records."""
    from .tlog import _open

    tlog = header.get("tlog")
    if not isinstance(tlog, dict):
        if previous is not None:
            report.add(0, "no_consistency_proof", "the export carries no signed tree checkpoint")
        return None
    try:
        _, head = _open(str(tlog.get("checkpoint")), public_key_pem, None)
        report.tree_root = b64(head.root)
        if previous is not None:
            section = tlog.get("consistency")
            if not isinstance(section, dict) or str(section.get("previous", "")).strip() != (
                previous.strip()
            ):
                raise VerifyFailure(
                    "no_consistency_proof",
                    "the export has no consistency proof from the checkpoint given "
                    "(export it with --previous)",
                )
            report.extends = check_consistency(
                previous, section.get("proof") or [], head, public_key_pem
            )
    except VerifyFailure as exc:
        report.add(0, exc.kind, str(exc))
        return None
    positions = [r.position for r, _ in records]
    covers = positions[: head.size] == list(range(1, head.size + 1))
    if not report.inclusion and head.size <= len(positions) and covers:
        tree = merkle.Frontier()
        for r, extra in records[: head.size]:
            tree.append(line_leaf(r, extra))
        if tree.root() != head.root:
            report.add(
                head.size, "checkpoint_mismatch", "the records do not hash to the signed root"
            )
    return head


def _verify_inclusion_export(
    lines: list[bytes],
    header: dict[str, Any],
    public_key_pem: bytes,
    previous: str | None,
) -> ExportReport:
    query = AuditQuery.from_selector(header.get("selector") or {})
    lo, hi = header.get("positions") or [1, None]
    query = replace(query, from_position=lo or 1, to_position=hi)
    report = ExportReport(selector=query.selector(), inclusion=True)
    redactions = _Redactions(_public_key(public_key_pem), header.get("redacted") is True, report)
    records, ended = _parse_records(lines, report, extra_keys=("proof",))
    head = _check_tlog(header, public_key_pem, previous, report, records)
    if head is None:
        if not report.problems:
            report.add(0, "not_covered", "the export has no signed checkpoint")
        return report
    report.store_id = head.origin
    report.covered_to = head.size
    last = 0
    for record, extra in records:
        p = record.position
        if p <= last:
            report.add(p, "reordered", f"record {p} is out of position order")
        last = max(last, p)
        if not query.matches(record):
            report.add(p, "match_flag", f"record {p} does not match the export's filters")
        redactions.check(record, extra, None)
        try:
            proof = [unb64(h, "a proof hash") for h in extra.get("proof") or []]
            merkle.verify_inclusion(line_leaf(record, extra), p - 1, head.size, proof, head.root)
        except (VerifyFailure, merkle.ProofError) as exc:
            report.add(p, "edited", f"record {p} is not in the signed log unaltered: {exc}")
    report.records = report.matched = len(records)
    report.first = min((r.position for r, _ in records), default=0)
    report.last = last
    if not ended:
        report.add(last + 1, "truncated", "the export has no end line (file cut short)")
    report.problems.sort(key=lambda p: p.position)
    return report


def verify_export(
    path: Path, public_key_pem: bytes, progress: Progress = None, previous: str | None = None
) -> ExportReport:
    """Check an export with the checkpoint public key only (no chain key, no database)."""
    key = _public_key(public_key_pem)
    lines = _read_lines(path)
    header = _header(lines, path)
    if header.get("version") == INCLUSION_VERSION:
        return _verify_inclusion_export(lines, header, public_key_pem, previous)
    try:
        checkpoints = msgspec.convert(header.get("checkpoints") or [], list[Checkpoint])
        query = AuditQuery.from_selector(header.get("selector") or {})
        lo, hi = header.get("positions") or [1, None]
        query = replace(query, from_position=lo or 1, to_position=hi)
        first, anchor = int(header["first"]), str(header["anchor_digest"])
    except (KeyError, TypeError, ValueError, msgspec.ValidationError) as exc:
        raise AuditError(f"{path}: the export header is damaged ({exc})") from None
    report = ExportReport(store_id=header.get("store_id"), first=first, selector=query.selector())
    redactions = _Redactions(key, header.get("redacted") is True, report)
    records, ended = _parse_records(lines, report)
    walk = _Walk(first, anchor)
    positions = {r.position for r, _ in records}
    for count, (record, extra) in enumerate(records, start=1):
        _check_record(record, extra, walk, positions, query, redactions)
        report.matched += query.matches(record)
        if progress is not None and count % _PROGRESS_EVERY == 0:
            progress(count, len(records))
    report.records = len(records)
    report.last = max(positions, default=first - 1)
    claimed = header.get("last")
    if isinstance(claimed, int) and claimed > report.last:
        report.add(report.last + 1, "truncated", f"the export claims records up to {claimed}")
    elif not ended:
        report.add(report.last + 1, "truncated", "the export has no end line (file cut short)")
    _check_checkpoints(checkpoints, key, walk, report)
    if not any(p.kind == "checkpoint_forged" for p in report.problems):  # said once is enough
        _check_tlog(header, public_key_pem, previous, report, records)
    if not report.covered_to and not any(p.kind.startswith("checkpoint") for p in report.problems):
        report.add(first, "not_covered", "no signed checkpoint covers any exported record")
    report.problems.sort(key=lambda p: p.position)
    if progress is not None:
        progress(len(records), len(records))
    return report
