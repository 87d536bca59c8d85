"""Schema constraint types (issue 16.5): a schema whose keywords have the wrong types is
refused at the ask, and an answer that cannot be checked is a recorded refusal.

`minLength: "5"`, `minimum: "zero"`, `enum: [["x"], {…}]` used to be accepted; the
recipient's `respond` then raised TypeError (a traceback, no `AnswerRejected`, an ask that
could never be answered). Now: a clear tool error at `ask` naming the keyword, nothing
recorded; and a request stored by an older version with such a schema gets
`AnswerRejected` (`unusable_schema`) on accept, while decline still closes it.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from events import NewEvent, SqliteEventStore, StoreConfig
from tests.harness import BridgeProcess

from .conftest import events_after, mark, start_bridge


def _schema(**prop: Any) -> dict[str, Any]:
    return {"type": "object", "properties": {"x": prop}}


BAD = {
    "minLength string": (_schema(type="string", minLength="5"), "minLength"),
    "maxLength negative": (_schema(type="string", maxLength=-1), "maxLength"),
    "minimum string": (_schema(type="number", minimum="zero"), "minimum"),
    "maximum bool": (_schema(type="integer", maximum=True), "maximum"),
    "enum of lists": (_schema(type="string", enum=[["x"], {"y": 1}]), "enum"),
    "enum empty": (_schema(type="string", enum=[]), "enum"),
    "oneOf junk": (_schema(type="string", oneOf=[1, 2]), "oneOf"),
    "items enum junk": (
        _schema(type="array", items={"type": "string", "enum": [None]}),
        "items.enum",
    ),
    "default wrong type": (_schema(type="boolean", default="yes"), "default"),
    "min above max": (_schema(type="string", minLength=5, maxLength=2), "minLength"),
    "title not text": (_schema(type="string", title=["t"]), "title"),
    "too many properties": (
        {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(51)}},
        "at most 50",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
async def test_bad_keyword_types_are_refused_at_the_ask(bridge: BridgeProcess, case: str) -> None:
    schema, keyword = BAD[case]
    start = mark(bridge)
    async with bridge.client("alice") as alice:
        result = await alice.call_tool(
            "ask", {"to": "bob", "message": "q", "schema": schema, "timeout_s": 5}
        )
        assert result.is_error, result
        text = json.dumps(result.model_dump(mode="json"))
        assert keyword in text and "Traceback" not in text
        ok = await alice.call_tool("send_message", {"to": "bob", "content": f"after {case}"})
        assert not ok.is_error  # the session and the service are fine
    assert events_after(bridge, start, ["RequestCreated"]) == []


async def _plant_old_request(db: Path, schema: dict[str, Any]) -> str:
    """What an older bridge (before the type checks) stored for such an ask."""
    request_id = uuid.uuid4().hex
    store = await SqliteEventStore.open(StoreConfig(path=db))
    try:
        created = {
            "request_id": request_id,
            "from": "alice",
            "to": "bob",
            "recipient": "bob",
            "message": "old ask",
            "schema": schema,
            "timeout_s": 600,
            "deadline": time.time() + 600,
        }
        routed = {
            "request_id": request_id,
            "recipient": "bob",
            "path": "legacy",
            "reason": "offline",
        }
        await store.append(
            f"request-{request_id}",
            [
                NewEvent(type="RequestCreated", data=created, actor="alice"),
                NewEvent(type="RequestRouted", data=routed, actor="alice"),
            ],
        )
    finally:
        await store.close()
    return request_id


async def test_answering_a_stored_bad_schema_is_a_recorded_refusal(tmp_path: Path) -> None:
    bridge = start_bridge(tmp_path)
    try:
        bridge.stop()
        request_id = await _plant_old_request(bridge.db, _schema(type="string", minLength="5"))
        bridge.start()
        start = mark(bridge)
        async with bridge.client("bob") as bob:
            accepted = await bob.call_tool(
                "respond",
                {"request_id": request_id, "action": "accept", "content": {"x": "hello"}},
            )
            assert accepted.is_error
            assert "unusable_schema" in json.dumps(accepted.model_dump(mode="json"))
            declined = await bob.call_tool(
                "respond", {"request_id": request_id, "action": "decline"}
            )
            assert not declined.is_error, declined
        [rejected] = events_after(bridge, start, ["AnswerRejected"])
        assert (rejected.data["reason"], rejected.data["request_id"]) == (
            "unusable_schema",
            request_id,
        )
        assert len(events_after(bridge, start, ["RequestDeclined"])) == 1
        log = bridge.log_path.read_text()
        assert "Traceback" not in log  # one warning line names the schema's problem
        assert "cannot check an answer" in log
    finally:
        if bridge.proc is not None:
            bridge.stop()
