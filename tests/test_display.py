"""Terminal-safe text: control, separator and format characters become visible escapes."""

from __future__ import annotations

from bridge.display import printable, printable_lines, table


def test_printable_escapes_what_a_terminal_would_interpret() -> None:
    assert printable("/admin/\x1b[2J\r\nrow") == "/admin/\\x1b[2J\\x0d\\x0arow"
    assert printable("bell\x07 del\x7f c1\x9b") == "bell\\x07 del\\x7f c1\\x9b"
    assert printable("rtl\u202eevil line\u2028sep") == "rtl\\u202eevil line\\u2028sep"
    assert printable("plain text, ünïcode ✓") == "plain text, ünïcode ✓"
    assert printable(42) == "42"


def test_printable_lines_keeps_its_own_line_breaks() -> None:
    assert printable_lines("a\x1b\nb\tc") == "a\\x1b\nb\\x09c"


def test_table_aligns_and_escapes_cells() -> None:
    out = table(("agent", "status"), [("bob", "active"), ("x\x1b[2J", None)])
    assert out.splitlines() == [
        "AGENT     STATUS",
        "bob       active",
        "x\\x1b[2J  -",
    ]
