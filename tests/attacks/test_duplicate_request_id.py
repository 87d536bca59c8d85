"""Reusing a JSON-RPC id that is still in flight on a session is refused, not confused.

A client (buggy or hostile) that sends a second request with the id of one still running
would make the two responses indistinguishable; the bridge refuses the second with a
clear -32600 and the first completes normally.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

from tests.harness import BridgeProcess

from .conftest import RawClient, jsonrpc_payload


def _wait_call(request_id: int, timeout_s: float) -> bytes:
    return json.dumps(
        {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "tools/call",
            "params": {"name": "wait_for_messages", "arguments": {"timeout_s": timeout_s}},
        }
    ).encode()


def test_duplicate_in_flight_id_is_refused(bridge: BridgeProcess, raw: RawClient) -> None:
    session = raw.open_session("carol")
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(raw.post, "carol", _wait_call(777, 3), session=session)
        time.sleep(0.5)  # the long poll is in flight
        dup = raw.post("carol", _wait_call(777, 0), session=session)
        assert dup.status_code == 400
        error = jsonrpc_payload(dup)["error"]
        assert error["code"] == -32600 and "already in flight" in error["message"]
        done = first.result(10)
    assert done.status_code == 200
    assert jsonrpc_payload(done)["result"]["structuredContent"]["messages"] == []
    # the id is free again once its call finished
    again = raw.post("carol", _wait_call(777, 0), session=session)
    assert again.status_code == 200
