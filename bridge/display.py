"""Text for people: every value the CLI prints to a terminal goes through here.

Much of what the bridge records is chosen by clients — a refused request's path, an agent's
`request_id`, a flag change's reason — and a terminal interprets control characters: an
escape sequence in a path stored by an unauthenticated `GET /admin/%1b[2J…` could clear
the audit table and print a forged row. `printable` makes such values inert (visible
escapes, one line each); `table` lays out rows for `flags show`, `agents list`, `drain`.
JSON output (`--json`, `--format json`) is left as it is: its encoder already escapes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["printable", "printable_lines", "table"]


def _escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(value: Any) -> str:
    """`str(value)` with every non-printable character (controls, line and paragraph
    separators, bidi and other format characters) replaced by a visible escape."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def printable_lines(text: str) -> str:
    """A multi-line report with each line made `printable` (its own line breaks kept)."""
    return "\n".join(printable(line) for line in text.split("\n"))


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns, a header line, every cell made `printable`; `None` is `-`."""
    cells = [[printable("-" if v is None else v) for v in row] for row in rows]
    widths = [len(c) for c in columns]
    for row in cells:
        widths = [max(w, len(v)) for w, v in zip(widths, row, strict=True)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)
