"""Terminal injection (issue 16.7): what clients put in the log must not drive the
operator's terminal.

An unauthenticated `GET /admin/%1b%5b2J…%0a…` stores its path in an `AdminAuthFailed`
event; an agent's `respond` with a forged `request_id` would store that too. Printed raw by
`lighthouse audit`, the escape clears the screen and the newline starts a forged row. The
tool boundary refuses request ids outside `[A-Za-z0-9_-]{1,64}`, and every human-readable
output escapes non-printable characters.
"""

from __future__ import annotations

import json

import httpx2

from tests.harness import BridgeProcess, lighthouse

from .conftest import events_after, mark

FORGED_ROW = "       1  2026-01-01T00:00:00.000Z  FlagChanged           admin"
ATTACK_PATH = "/admin/%1b%5b2J%1b%5bH%0d%0a" + FORGED_ROW.replace(" ", "%20") + "%1b%5d0;owned%07"


def _no_controls(text: str) -> None:
    for ch in text:
        assert ch == "\n" or ch.isprintable(), f"control character {ch!r} reached the terminal"


def test_stored_path_is_escaped_in_the_audit_table(bridge: BridgeProcess) -> None:
    start = mark(bridge)
    response = httpx2.get(bridge.url + ATTACK_PATH)
    assert response.status_code == 401
    [failed] = events_after(bridge, start, ["AdminAuthFailed"])
    assert "\x1b" in failed.data["path"]  # the fact is stored as it came (JSON escapes it)
    out = lighthouse(
        "audit", "--db", str(bridge.db), "--type", "AdminAuthFailed", cwd=bridge.workdir
    ).stdout
    _no_controls(out)
    lines = out.splitlines()
    assert len(lines) == 1 + len(events_after(bridge, 0, ["AdminAuthFailed"]))  # no forged row
    assert "\\x1b[2J" in out and "\\x0d\\x0a" in out
    report = lighthouse("audit", "security", "--db", str(bridge.db), cwd=bridge.workdir).stdout
    _no_controls(report)
    # JSON output stays exact (and is escaped by its encoder).
    jsonl = lighthouse(
        "audit",
        "--db",
        str(bridge.db),
        "--type",
        "AdminAuthFailed",
        "--format",
        "jsonl",
        cwd=bridge.workdir,
    ).stdout
    assert any(
        json.loads(line)["data"]["path"] == failed.data["path"] for line in jsonl.splitlines()
    )


async def test_respond_with_a_forged_request_id_is_refused(bridge: BridgeProcess) -> None:
    start = mark(bridge)
    forged = "x\x1b[2J\n" + FORGED_ROW
    async with bridge.client("bob") as bob:
        result = await bob.call_tool("respond", {"request_id": forged, "action": "decline"})
        assert result.is_error, result
        assert "bad_request_id" in json.dumps(result.model_dump(mode="json"))
        # The same agent's next call works: refusing the id did not break the session.
        ok = await bob.call_tool("wait_for_messages", {"timeout_s": 0})
        assert not ok.is_error
    [rejected] = events_after(bridge, start, ["AnswerRejected"])
    assert rejected.data["reason"] == "bad_request_id"
    assert "\x1b" not in json.dumps(rejected.data) and "\n" not in rejected.data["request_id"]
    out = lighthouse(
        "audit", "--db", str(bridge.db), "--type", "AnswerRejected", cwd=bridge.workdir
    ).stdout
    _no_controls(out)
