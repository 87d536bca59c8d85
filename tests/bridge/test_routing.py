"""The router on a real store (no network): re-attachable asks, get_request, quotas, size
and fan-out caps, the bounded index of closed requests, and timeouts on a store that
cannot be written; a forgotten asker's offered question moves to the mailbox erased; a
2026-07-28 recipient another bridge saw waiting is offered its question, not mailed it.
Across bridges: two routers on one PostgreSQL store, each following the
other's appends — two answers to one request taken on different bridges at once yield
exactly one terminal fact, and the asking bridge's ask completes from the other's fact."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from bridge.admin import forget_agent
from bridge.app import Bridge, open_bridge
from bridge.config import Settings
from bridge.domain import (
    ANSWER_REJECTED,
    FLAG_CHANGED,
    FLAGS_STREAM,
    MESSAGE_SENT,
    REQUEST_CREATED,
    REQUEST_FELL_BACK,
    REQUEST_ROUTED,
    REQUEST_TIMED_OUT,
    TERMINAL_TYPES,
    request_stream,
)
from bridge.flags import Flags, parse_change
from bridge.log import Log
from bridge.metrics import Metrics
from bridge.routing import (
    STREAM_WAIT_S,
    AnswerRefused,
    AskError,
    Limits,
    Requests,
    Router,
    refusal_text,
)
from bridge.sealing import ERASED
from bridge.sessions import MODERN_SEEN_S, Presence
from events import NewEvent, OperationalError, Record, StoreConfig
from security import KeyRegistry
from tests.harness import SCHEMA, wait_until
from tests.pgtools import drop_created, fresh_database


@pytest.fixture
async def bridge(tmp_path: Path) -> AsyncIterator[Bridge]:
    b = await open_bridge(Settings(db=tmp_path / "lighthouse.db"))
    for name, roles in (("alice", []), ("bob", ["expert"]), ("carol", ["expert"])):
        await b.agents.add(name, roles, [], "test")
    try:
        yield b
    finally:
        await b.close()


async def _events(b: Bridge, *types: str) -> list[Record]:
    """Recorded events, contents opened as the bridge reads them (they are sealed at rest)."""
    records = await b.store.read_all(1, limit=None, types=list(types))
    sealer = b.log.sealer
    assert sealer is not None
    return [msgspec.structs.replace(r, data=sealer.open_record(r)) for r in records]


def _ask(b: Bridge, caller: str = "alice", **kw: Any) -> Any:
    args: dict[str, Any] = {"to": "bob", "message": "q?", "schema": SCHEMA, "timeout_s": 30}
    args.update(kw)
    to, message, schema, timeout = (args.pop(k) for k in ("to", "message", "schema", "timeout_s"))
    return b.router.ask(caller, to, message, schema, timeout, **args)


async def test_reask_with_the_same_id_attaches_without_a_second_request(bridge: Bridge) -> None:
    first = await _ask(bridge, request_id="job-1", wait=False)
    assert first["status"] == "pending" and first["path"] == "legacy"
    again = await _ask(bridge, request_id="job-1", wait=False)
    assert again["request_id"] == "job-1" and again["status"] == "pending"
    waiting = asyncio.create_task(_ask(bridge, request_id="job-1"))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    await bridge.router.answer("job-1", "bob", "accept", {"answer": "yes"}, "legacy")
    result = await asyncio.wait_for(waiting, 5)
    assert result["status"] == "accepted" and result["content"] == {"answer": "yes"}
    # after the answer, a re-ask returns it at once (from the log)
    late = await _ask(bridge, request_id="job-1")
    assert late["status"] == "accepted" and late["content"] == {"answer": "yes"}
    assert len(await _events(bridge, REQUEST_CREATED)) == 1
    terminals = [r for r in await _events(bridge, *TERMINAL_TYPES)]
    assert len(terminals) == 1


async def test_reused_id_with_other_arguments_or_by_another_agent_is_refused(
    bridge: Bridge,
) -> None:
    await _ask(bridge, request_id="job-2", wait=False)
    with pytest.raises(AskError, match="different arguments"):
        await _ask(bridge, request_id="job-2", message="another question", wait=False)
    with pytest.raises(AskError, match="already used"):
        await _ask(bridge, "carol", request_id="job-2", wait=False)
    for bad in ("", "x" * 65, "a b", "job\n", "ü"):
        with pytest.raises(AskError, match="request_id: must be 1-64"):
            await _ask(bridge, request_id=bad, wait=False)
    assert len(await _events(bridge, REQUEST_CREATED)) == 1


async def test_get_request_long_polls_and_only_asker_and_recipient_may_read(
    bridge: Bridge,
) -> None:
    await _ask(bridge, request_id="job-3", wait=False)
    for reader in ("alice", "bob"):
        view = await bridge.router.get_request(reader, "job-3")
        assert view["status"] == "pending" and view["to"] == "bob"
    with pytest.raises(AskError) as foreign:
        await bridge.router.get_request("carol", "job-3")
    with pytest.raises(AskError) as unknown:
        await bridge.router.get_request("carol", "no-such-id")
    assert str(foreign.value) == str(unknown.value)
    with pytest.raises(AskError, match="wait_s"):
        await bridge.router.get_request("alice", "job-3", 26)
    polling = asyncio.create_task(bridge.router.get_request("alice", "job-3", 10))
    await asyncio.sleep(0.05)
    assert not polling.done()
    started = time.monotonic()
    await bridge.router.answer("job-3", "bob", "decline", None, "legacy")
    view = await asyncio.wait_for(polling, 5)
    assert view["status"] == "declined" and time.monotonic() - started < 2
    # closed: still readable by both, still hidden from others
    assert (await bridge.router.get_request("bob", "job-3"))["status"] == "declined"
    with pytest.raises(AskError, match="no such request"):
        await bridge.router.get_request("carol", "job-3")


async def test_quotas_per_caller_and_per_recipient(bridge: Bridge) -> None:
    bridge.router.limits = Limits(max_open_per_caller=3, max_open_per_recipient=4)
    for _ in range(3):
        await _ask(bridge, wait=False)
    with pytest.raises(AskError, match="quota: you have 3 open requests"):
        await _ask(bridge, wait=False)
    await _ask(bridge, "carol", wait=False)  # another caller is still served
    with pytest.raises(AskError, match="quota: bob has 4 open requests"):
        await _ask(bridge, "carol", wait=False)
    # a role skips the full recipient: carol is an expert too
    view = await bridge.router.ask("bob", "role:expert", "q?", SCHEMA, 30, wait=False)
    assert view["to"] == "carol"
    assert len(await _events(bridge, REQUEST_CREATED)) == 5


async def test_size_caps_on_question_answer_and_message(bridge: Bridge) -> None:
    bridge.router.limits = Limits(max_content_bytes=1000)
    with pytest.raises(AskError, match="more than the limit of 1000"):
        await _ask(bridge, message="x" * 1000, wait=False)
    with pytest.raises(AskError, match="more than the limit of 1000"):
        await bridge.router.send_message("alice", "bob", "y" * 1001)
    view = await _ask(bridge, wait=False)
    with pytest.raises(AnswerRefused) as big:
        await bridge.router.answer(
            view["request_id"], "bob", "accept", {"answer": "z" * 2000}, "legacy"
        )
    assert big.value.reason == "too_large"
    [rejected] = await _events(bridge, ANSWER_REJECTED)
    assert "z" * 100 not in str(rejected.data) and rejected.data["content"]["bytes"] > 2000


async def test_broadcast_is_stored_once_and_fan_out_is_capped(bridge: Bridge) -> None:
    await bridge.agents.add("dave", ["expert"], [], "test")
    sent = await bridge.router.send_message("alice", "role:expert", "hello experts")
    assert [d["agent"] for d in sent["delivered_to"]] == ["bob", "carol", "dave"]
    [event] = await _events(bridge, MESSAGE_SENT)
    assert event.data["recipients"] == ["bob", "carol", "dave"]
    for agent in ("bob", "carol", "dave"):
        [item] = bridge.mailboxes.pending(agent, 10)
        assert item.payload["content"] == "hello experts"
    bridge.router.limits = Limits(max_fanout=2)
    with pytest.raises(AskError, match="fan-out limit of 2"):
        await bridge.router.send_message("alice", "role:expert", "again")
    assert len(await _events(bridge, MESSAGE_SENT)) == 1


async def test_junk_request_id_is_refused_and_stored_as_a_digest(bridge: Bridge) -> None:
    junk = "\x1b[2J" + "A" * 200_000
    with pytest.raises(AnswerRefused) as refused:
        await bridge.router.answer(junk, "bob", "accept", {"answer": "B" * 200_000}, "legacy")
    assert refused.value.reason == "bad_request_id" and junk not in str(refused.value)
    [event] = await _events(bridge, ANSWER_REJECTED)
    assert event.stream == "requests-unknown" and len(event.data["request_id"]) <= 80
    assert "\x1b" not in event.data["request_id"]
    assert len(str(event.data)) < 1000
    assert event.data["request_id_digest"]["bytes"] == len(junk)


async def test_timeout_reaches_the_caller_when_the_store_cannot_be_written(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller gets its timeout at the deadline even on a full disk; the timeout is
    recorded once the store takes writes again (and only once)."""
    monkeypatch.setattr("bridge.routing.RETRY_FIRST_S", 0.05)
    asking = asyncio.create_task(_ask(bridge, request_id="full-1", timeout_s=0.5))
    await asyncio.sleep(0.1)
    real_append = bridge.store.append
    failing = True

    async def append(*args: Any, **kwargs: Any) -> Any:
        if failing:
            raise OperationalError("database or disk is full")
        return await real_append(*args, **kwargs)

    monkeypatch.setattr(bridge.store, "append", append)
    started = time.monotonic()
    result = await asyncio.wait_for(asking, 3)
    assert result["status"] == "timeout" and time.monotonic() - started < 1.0
    # a late answer meanwhile is refused: the timeout holds the claim
    with pytest.raises(AnswerRefused):
        await bridge.router.answer("full-1", "bob", "accept", {"answer": "late"}, "legacy")
    with pytest.raises(OperationalError) as unavailable:  # new asks: nothing recorded
        await _ask(bridge, wait=False)
    assert "store_unavailable" in str(refusal_text(unavailable.value))
    assert await _events(bridge, REQUEST_TIMED_OUT) == []
    failing = False
    await asyncio.sleep(0.5)
    [timed_out] = await _events(bridge, REQUEST_TIMED_OUT)
    assert timed_out.data["request_id"] == "full-1"
    assert "full-1" not in bridge.requests.open


async def test_a_move_to_the_mailbox_the_store_refused_is_retried_until_it_lands(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its push is cancelled when the move starts: a move that could not be written would
    otherwise leave the request with no way to its recipient until the deadline."""
    monkeypatch.setattr("bridge.routing.RETRY_FIRST_S", 0.05)
    bridge.presence.seen_modern("bob", True)
    asked = await _ask(bridge, wait=False, timeout_s=60)
    req = bridge.requests.open[asked["request_id"]]
    assert req.path == "elicitation"
    real_append = bridge.store.append
    failures = 0

    async def append(*args: Any, **kwargs: Any) -> Any:
        nonlocal failures
        if failures < 3:
            failures += 1
            raise OperationalError("database or disk is full")
        return await real_append(*args, **kwargs)

    monkeypatch.setattr(bridge.store, "append", append)
    assert await bridge.router.fall_back(req, "kill_switch") is False  # not yet: retried
    await wait_until(lambda: req.path == "legacy", timeout=5)
    [fell] = await _events(bridge, REQUEST_FELL_BACK)
    assert fell.data["cause"] == "kill_switch" and failures == 3
    assert [i.payload["request_id"] for i in bridge.mailboxes.pending("bob", 10)] == [
        req.request_id
    ]
    await asyncio.sleep(0.3)  # no retry left behind records it twice
    assert len(await _events(bridge, REQUEST_FELL_BACK)) == 1


def test_closed_index_is_bounded_and_late_answers_are_still_refused_from_the_log() -> None:
    requests = Requests(closed_index=5)
    from bridge.domain import Fact

    for n in range(50):
        rid = f"r{n}"
        created = {
            "request_id": rid,
            "from": "alice",
            "to": "bob",
            "recipient": "bob",
            "message": "q",
            "schema": SCHEMA,
            "timeout_s": 1.0,
            "deadline": 0.0,
        }
        requests.apply(Fact(2 * n + 1, f"request-{rid}", REQUEST_CREATED, created, "alice", 0))
        requests.apply(
            Fact(2 * n + 2, f"request-{rid}", REQUEST_TIMED_OUT, {"request_id": rid}, "b", 0)
        )
    assert list(requests.closed) == [f"r{n}" for n in range(45, 50)]
    assert not requests.open and not requests.by_caller and not requests.by_recipient


async def test_late_answer_to_a_request_evicted_from_the_index(bridge: Bridge) -> None:
    bridge.requests.closed_index = 1
    first = await _ask(bridge, wait=False)
    await bridge.router.answer(first["request_id"], "bob", "decline", None, "legacy")
    second = await _ask(bridge, wait=False)
    await bridge.router.answer(second["request_id"], "bob", "decline", None, "legacy")
    assert first["request_id"] not in bridge.requests.closed
    with pytest.raises(AnswerRefused) as late:
        await bridge.router.answer(first["request_id"], "bob", "accept", {"answer": "x"}, "legacy")
    assert late.value.reason == "already_closed"


# -- several bridges on one PostgreSQL store -----------------------------------------------

SHARED_SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}}


async def _bridge(url: str, tmp: Path, node: str) -> tuple[Router, Log]:
    from events.postgres import PostgresEventStore

    store = await PostgresEventStore.open(StoreConfig(path=tmp / "l.db", url=url))
    requests = Requests()
    log = Log(store, [requests])
    await log.replay()
    log.start_following()
    router = Router(log, requests, KeyRegistry(), Presence(node), Flags(), Metrics())
    log.on_followed.append(router.on_followed)
    return router, log


async def _until(predicate: object, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():  # type: ignore[operator]
        assert loop.time() < deadline, "not seen in time"
        await asyncio.sleep(0.01)


def _request_facts(
    rid: str, *, deadline: float = 4e9, asked_on: str | None = None, pusher: str | None = None
) -> list[NewEvent]:
    """RequestCreated + RequestRouted as a bridge appends them (`asked_on`: its node;
    `pusher`: routed to that bridge's session by elicitation, else to the mailbox)."""
    created = {
        "request_id": rid,
        "from": "alice",
        "to": "bob",
        "recipient": "bob",
        "message": "?",
        "schema": SHARED_SCHEMA,
        "timeout_s": 30,
        "deadline": deadline,
    }
    if asked_on is not None:
        created["node"] = asked_on
    routed: dict[str, Any] = {"request_id": rid, "recipient": "bob"}
    if pusher is None:
        routed |= {"path": "legacy", "reason": "offline"}
    else:
        routed |= {"path": "elicitation", "reason": "eligible", "node": pusher}
    return [
        NewEvent(type=REQUEST_CREATED, data=created, actor="alice"),
        NewEvent(type=REQUEST_ROUTED, data=routed, actor="alice"),
    ]


async def _close_all(*bridges: tuple[Router, Log]) -> None:
    for router, log in bridges:
        await router.close()
        await log.stop_following()
        await log.store.close()


def test_one_terminal_fact_when_two_bridges_answer_at_once(tmp_path: Path) -> None:
    url = fresh_database("routing")

    async def run() -> None:
        a, log_a = await _bridge(url, tmp_path, "a")
        b, log_b = await _bridge(url, tmp_path, "b")
        try:
            for n in range(5):
                rid = f"race{n}"
                await log_a.append(request_stream(rid), _request_facts(rid), expected_version=0)
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
            await _close_all((a, log_a), (b, log_b))

    try:
        asyncio.run(run())
    finally:
        drop_created()


def test_a_dead_askers_request_is_timed_out_once_by_the_bridges_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bridge a takes an ask and dies before its deadline. b and c learned the request by
    following the log and hold standby timers; each sees only itself alive (SoloNodes), so
    both take their turn at once — the expected version lets exactly one of them win."""
    monkeypatch.setattr("bridge.routing.TAKEOVER_GRACE_S", 0.2)
    url = fresh_database("routing")

    async def run() -> None:
        a, log_a = await _bridge(url, tmp_path, "a")
        b, log_b = await _bridge(url, tmp_path, "b")
        c, log_c = await _bridge(url, tmp_path, "c")
        try:
            deadline = time.time() + 0.5
            facts = _request_facts("orphan", deadline=deadline, asked_on="a")
            await log_a.append(request_stream("orphan"), facts, expected_version=0)
            await _close_all((a, log_a))  # a "dies": its own timer never runs
            await _until(lambda: "orphan" in b._timers and "orphan" in c._timers)
            await _until(lambda: "orphan" in b.requests.closed and "orphan" in c.requests.closed, 5)
            await asyncio.sleep(0.3)  # both timers have run by now
            stream = await log_b.store.read_stream(request_stream("orphan"))
            terminals = [r for r in stream if r.type in TERMINAL_TYPES]
            assert [r.type for r in terminals] == [REQUEST_TIMED_OUT]
            assert terminals[0].time >= deadline + 0.2
            assert not b._timers and not c._timers
        finally:
            await _close_all((b, log_b), (c, log_c))

    try:
        asyncio.run(run())
    finally:
        drop_created()


def test_a_push_whose_asker_and_pusher_died_moves_to_the_mailbox_once(tmp_path: Path) -> None:
    """a asked, b pushes; both die. c and d each see only themselves alive, so at their
    heartbeat tick both move the request to the mailbox at once: one RequestFellBack."""
    url = fresh_database("routing")

    async def run() -> None:
        a, log_a = await _bridge(url, tmp_path, "a")
        c, log_c = await _bridge(url, tmp_path, "c")
        d, log_d = await _bridge(url, tmp_path, "d")
        try:
            facts = _request_facts("stranded", asked_on="a", pusher="b")
            await log_a.append(request_stream("stranded"), facts, expected_version=0)
            await _close_all((a, log_a))
            await _until(lambda: all("stranded" in r.requests.open for r in (c, d)))
            c.check_peers()
            d.check_peers()
            await _until(lambda: all(r.requests.open["stranded"].path == "legacy" for r in (c, d)))
            stream = await log_c.store.read_stream(request_stream("stranded"))
            moves = [r for r in stream if r.type == REQUEST_FELL_BACK]
            assert [m.data["cause"] for m in moves] == ["bridge_gone"]
            c.check_peers()  # no longer in flight: nothing more
            await asyncio.sleep(0.1)
            assert len(await log_c.store.read_stream(request_stream("stranded"))) == len(stream)
        finally:
            await _close_all((c, log_c), (d, log_d))

    try:
        asyncio.run(run())
    finally:
        drop_created()


async def test_an_offered_question_of_a_forgotten_asker_moves_to_the_mailbox_erased(
    bridge: Bridge,
) -> None:
    bridge.presence.seen_modern("bob", True)  # a 2026-07-28 client that takes forms
    asked = await _ask(bridge, message="the secret question", wait=False)
    rid = asked["request_id"]
    assert asked["path"] == "elicitation"
    assert [r.request_id for r in bridge.router.offers_for("bob", 10)] == [rid]
    await forget_agent(bridge, "alice", "erasure request", "test", force=True)
    assert bridge.router.offers_for("bob", 10) == []  # no question left to put as a form
    await wait_until(lambda: bridge.requests.open[rid].path == "legacy", timeout=5)
    [fell] = await _events(bridge, REQUEST_FELL_BACK)
    assert fell.data["cause"] == "contents_erased"
    [item] = bridge.mailboxes.pending("bob", 10)
    assert item.payload["message"] == ERASED and item.payload["schema"] == ERASED
    assert rid in bridge.requests.open  # still open: bob may decline it, or it times out


async def test_a_recipient_waiting_on_another_bridge_is_offered_its_question(
    bridge: Bridge,
) -> None:
    """Messages in (a peer's row: bob waits on b2), decisions out (the path, the node, how
    the request ends when bob never takes it)."""
    now = [time.time()]
    presence = bridge.presence
    presence.clock = lambda: now[0]
    presence.alive = lambda node: node in (None, bridge.router.node, "b2")
    presence.remote_modern_seen([("bob", "b2", True, 0.0)])
    asked = await _ask(bridge, wait=False, timeout_s=STREAM_WAIT_S + 1)
    rid = asked["request_id"]
    assert asked["path"] == "elicitation"
    [routed] = await _events(bridge, REQUEST_ROUTED)
    assert routed.data["reason"] == "eligible" and "node" not in routed.data  # any wait of his
    await asyncio.sleep(STREAM_WAIT_S + 0.2)  # no session here whose stream it waits for
    assert bridge.requests.open[rid].path == "elicitation"
    assert [r.request_id for r in bridge.router.offers_for("bob", 10)] == [rid]
    await wait_until(lambda: rid not in bridge.requests.open, timeout=5)  # never taken
    [timed_out] = await _events(bridge, REQUEST_TIMED_OUT)
    assert timed_out.data["request_id"] == rid
    assert await _events(bridge, REQUEST_FELL_BACK) == []

    await _override(bridge, {"bob": False})  # bob's flag off: the mailbox, whatever his waits
    flagged = await _ask(bridge, wait=False)
    assert flagged["path"] == "legacy"
    [fell] = await _events(bridge, REQUEST_FELL_BACK)
    assert fell.data["request_id"] == flagged["request_id"] and fell.data["cause"] == "flag_off"
    await _override(bridge, {"bob": None})
    now[0] += MODERN_SEEN_S  # his wait on b2 is older than the window now
    offline = await _ask(bridge, wait=False)
    assert offline["path"] == "legacy"
    [routed] = [r for r in await _events(bridge, REQUEST_ROUTED) if r.data["path"] == "legacy"]
    assert routed.data["request_id"] == offline["request_id"] and routed.data["reason"] == "offline"


async def _override(b: Bridge, overrides: dict[str, bool | None]) -> None:
    old = b.flags.state
    new = parse_change({"overrides": overrides}, old)
    data = {"old": old.to_dict(), "new": new.to_dict(), "reason": "test"}
    await b.log.append_events(
        FLAGS_STREAM, "admin", [(FLAG_CHANGED, data)], expected_version=b.flags.version
    )
