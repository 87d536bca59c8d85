"""bridge.routing across bridges: two routers on one PostgreSQL store, each following the
other's appends. Two answers to one request, taken on different bridges at the same time,
yield exactly one terminal fact; the other is refused as `already_closed`; and the
asking bridge's waiting future is completed by the terminal fact the other bridge wrote."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bridge.domain import REQUEST_CREATED, REQUEST_ROUTED, TERMINAL_TYPES, request_stream
from bridge.flags import Flags
from bridge.log import Log
from bridge.metrics import Metrics
from bridge.routing import AnswerRefused, Requests, Router
from bridge.sessions import Presence
from events import NewEvent, StoreConfig
from security import KeyRegistry
from tests.pgtools import drop_created, fresh_database

SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}}


async def _bridge(url: str, tmp: Path, node: str) -> tuple[Router, Log]:
    from events.postgres import PostgresEventStore

    store = await PostgresEventStore.open(StoreConfig(path=tmp / "l.db", url=url))
    requests = Requests()
    log = Log(store, [requests])
    await log.replay()
    log.start_following()
    router = Router(log, requests, KeyRegistry(), Presence(node), Flags(), Metrics())
    return router, log


async def _until(predicate: object, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():  # type: ignore[operator]
        assert loop.time() < deadline, "not seen in time"
        await asyncio.sleep(0.01)


def test_one_terminal_fact_when_two_bridges_answer_at_once(tmp_path: Path) -> None:
    url = fresh_database("routing")

    async def run() -> None:
        a, log_a = await _bridge(url, tmp_path, "a")
        b, log_b = await _bridge(url, tmp_path, "b")
        try:
            for n in range(5):
                rid = f"race{n}"
                created = {
                    "request_id": rid,
                    "from": "alice",
                    "to": "bob",
                    "recipient": "bob",
                    "message": "?",
                    "schema": SCHEMA,
                    "timeout_s": 30,
                    "deadline": 4e9,
                }
                routed = {
                    "request_id": rid,
                    "recipient": "bob",
                    "path": "legacy",
                    "reason": "offline",
                }
                await log_a.append(
                    request_stream(rid),
                    [
                        NewEvent(type=REQUEST_CREATED, data=created, actor="alice"),
                        NewEvent(type=REQUEST_ROUTED, data=routed, actor="alice"),
                    ],
                    expected_version=0,
                )
                waiting = a.requests.open[rid].result_future()  # alice's ask, on bridge a
                await _until(lambda r=rid: r in b.requests.open)
                outcomes = await asyncio.gather(
                    a.answer(rid, "bob", "accept", {"answer": "from a"}, "legacy"),
                    b.answer(rid, "bob", "accept", {"answer": "from b"}, "legacy"),
                    return_exceptions=True,
                )
                won = [o for o in outcomes if isinstance(o, dict)]
                lost = [o for o in outcomes if isinstance(o, AnswerRefused)]
                assert len(won) == 1 and len(lost) == 1, outcomes
                assert lost[0].reason == "already_closed"
                result = await asyncio.wait_for(waiting, 5)
                assert result["status"] == "accepted" and result["content"] == won[0]["content"]
                facts = await log_a.store.read_stream(request_stream(rid))
                assert [f.type for f in facts if f.type in TERMINAL_TYPES] == ["RequestAnswered"]
        finally:
            for router, log in ((a, log_a), (b, log_b)):
                await router.close()
                await log.stop_following()
                await log.store.close()

    try:
        asyncio.run(run())
    finally:
        drop_created()
