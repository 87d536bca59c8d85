"""Backend-agnostic conformance suite for `events.EventStore`.

A backend test module subclasses `EventStoreConformance` and supplies `make_config` and
`open_store`; nothing here may know which backend runs (the shape of the `eventsourcing`
library's recorder test cases).
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from events import (
    ANY_VERSION,
    NO_STREAM,
    CheckpointFile,
    EventIdConflict,
    EventStore,
    KeyMismatch,
    MissingKey,
    NewEvent,
    StoreConfig,
    VerifyReport,
    WrongExpectedVersion,
    verify_with_config,
)

Opener = Callable[[StoreConfig], Awaitable[EventStore]]


def ev(type_: str = "Thing", **data: object) -> NewEvent:
    return NewEvent(type=type_, data=dict(data), actor="tester")


class EventStoreConformance:
    """Every backend must pass these unchanged."""

    def make_config(self, tmp_path: Path, **overrides: object) -> StoreConfig:
        raise NotImplementedError  # supplied by each backend's test module

    async def open_store(self, config: StoreConfig) -> EventStore:
        raise NotImplementedError  # supplied by each backend's test module

    @pytest.fixture
    def config(self, tmp_path: Path) -> StoreConfig:
        return self.make_config(tmp_path)

    @pytest.fixture
    async def store(self, config: StoreConfig) -> AsyncIterator[EventStore]:
        store = await self.open_store(config)
        yield store
        await store.close()

    async def verify(self, store: EventStore, config: StoreConfig) -> VerifyReport:
        return await verify_with_config(store, config)

    async def tamper(self, config: StoreConfig, *statements: str) -> None:
        """Run SQL on the closed store past its append-only triggers, as an attacker with
        database access would (supplied by each backend's test module)."""
        raise NotImplementedError

    # -- appending -----------------------------------------------------------------------

    async def test_append_and_read_back(self, store: EventStore) -> None:
        events = [ev(n=1), ev("Other", n=2, nested={"b": [1, 2], "a": None})]
        positions = await store.append("s1", events, expected_version=NO_STREAM)
        assert positions == [1, 2]
        records = await store.read_stream("s1")
        assert [r.version for r in records] == [1, 2]
        assert [r.position for r in records] == positions
        for record, event in zip(records, events, strict=True):
            assert (record.event_id, record.type, record.data, record.actor, record.time) == (
                event.event_id,
                event.type,
                event.data,
                event.actor,
                event.time,
            )
        assert records[0].prev_hash == "0" * 64
        assert records[1].prev_hash == records[0].hash

    async def test_expected_version_conflict_reports_actual(self, store: EventStore) -> None:
        await store.append("s", [ev(), ev()], expected_version=NO_STREAM)
        with pytest.raises(WrongExpectedVersion) as info:
            await store.append("s", [ev()], expected_version=1)
        assert info.value.actual == 2 and info.value.expected == 1
        assert await store.append("s", [ev()], expected_version=2) == [3]
        assert len(await store.read_stream("s")) == 3

    async def test_batch_is_atomic(self, store: EventStore) -> None:
        first = ev(n=1)
        await store.append("s", [first])
        with pytest.raises(EventIdConflict):
            await store.append("s", [ev(n=2), NewEvent(type="X", event_id=first.event_id)])
        assert [r.data for r in await store.read_all()] == [{"n": 1}]
        assert (await store.head()).position == 1

    async def test_idempotent_retry_returns_original_positions(self, store: EventStore) -> None:
        batch = [ev(n=1), ev(n=2)]
        original = await store.append("s", batch, expected_version=NO_STREAM)
        # A retry after a lost reply resends the same events with the same expectation.
        assert await store.append("s", batch, expected_version=NO_STREAM) == original
        assert await store.append("s", batch) == original
        assert len(await store.read_all()) == 2

    async def test_known_event_id_with_other_content_is_refused(self, store: EventStore) -> None:
        event = ev(n=1)
        await store.append("s", [event])
        forged = NewEvent(type=event.type, data={"n": 2}, event_id=event.event_id)
        with pytest.raises(EventIdConflict):
            await store.append("s", [forged])
        with pytest.raises(EventIdConflict):
            await store.append("other", [event])
        assert len(await store.read_all()) == 1

    async def test_duplicate_id_inside_one_batch_is_refused(self, store: EventStore) -> None:
        event = ev()
        with pytest.raises(EventIdConflict):
            await store.append("s", [event, event])
        assert await store.read_all() == []

    # -- reading -------------------------------------------------------------------------

    async def test_ranges_are_inclusive_and_typed(self, store: EventStore) -> None:
        for i in range(10):
            await store.append(f"s{i % 3}", [ev("Even" if i % 2 == 0 else "Odd", i=i)])
        assert [r.position for r in await store.read_all(3, to_position=6)] == [3, 4, 5, 6]
        assert [r.position for r in await store.read_all(8, limit=5)] == [8, 9, 10]
        assert [r.position for r in await store.read_all(1, limit=2)] == [1, 2]
        odd = await store.read_all(types=["Odd"])
        assert [r.data["i"] for r in odd] == [1, 3, 5, 7, 9]
        assert [r.version for r in await store.read_stream("s0", from_version=2)] == [2, 3, 4]
        assert await store.read_stream("missing") == []

    async def test_concurrent_appenders_get_contiguous_gap_free_positions(
        self, store: EventStore
    ) -> None:
        async def writer(w: int) -> list[list[int]]:
            return [await store.append(f"w{w}", [ev(i=i), ev(i=i)]) for i in range(20)]

        results = await asyncio.gather(*(writer(w) for w in range(25)))
        batches = [b for per_writer in results for b in per_writer]
        for batch in batches:
            assert batch[1] == batch[0] + 1, "a batch's events must not interleave"
        positions = sorted(p for b in batches for p in b)
        assert positions == list(range(1, 1001))
        for w in range(25):
            assert [r.version for r in await store.read_stream(f"w{w}")] == list(range(1, 41))

    async def test_racing_appenders_on_one_version_exactly_one_wins(
        self, store: EventStore
    ) -> None:
        await store.append("race", [ev()], expected_version=NO_STREAM)
        outcomes = await asyncio.gather(
            *(store.append("race", [ev(i=i)], expected_version=1) for i in range(10)),
            return_exceptions=True,
        )
        assert sum(isinstance(o, list) for o in outcomes) == 1
        assert sum(isinstance(o, WrongExpectedVersion) for o in outcomes) == 9
        assert len(await store.read_stream("race")) == 2

    async def test_subscribe_yields_history_then_live_without_gaps(self, store: EventStore) -> None:
        for i in range(30):
            await store.append("h", [ev(i=i)])
        seen: list[int] = []

        async def follow() -> None:
            async for record in store.subscribe(from_position=11):
                seen.append(record.position)
                if record.position == 230:
                    return

        follower = asyncio.create_task(follow())
        await asyncio.gather(
            *(store.append(f"live{w}", [ev(i=i)]) for w in range(4) for i in range(50))
        )
        await asyncio.wait_for(follower, timeout=30)
        assert seen == list(range(11, 231))

    async def test_readers_alongside_writers_see_consistent_prefixes(
        self, store: EventStore
    ) -> None:
        stop = asyncio.Event()

        async def write() -> None:
            for i in range(300):
                await store.append(f"x{i % 7}", [ev(i=i)])
            stop.set()

        async def read() -> int:
            reads = 0
            while not stop.is_set():
                records = await store.read_all(limit=None)
                assert [r.position for r in records] == list(range(1, len(records) + 1))
                reads += 1
                await asyncio.sleep(0)
            return reads

        _, reads = await asyncio.gather(write(), read())
        assert reads > 0

    # -- durability, keys, verification ---------------------------------------------------

    async def test_reopen_continues_chain_and_verifies(self, config: StoreConfig) -> None:
        store = await self.open_store(config)
        await store.append("s", [ev(i=1)], expected_version=NO_STREAM)
        await store.close()
        store = await self.open_store(config)
        assert await store.append("s", [ev(i=2)], expected_version=1) == [2]
        report = await self.verify(store, config)
        await store.close()
        assert report.ok, report.problems
        assert report.records_checked == 2

    async def test_clean_close_writes_final_checkpoint(self, config: StoreConfig) -> None:
        store = await self.open_store(config)
        await store.append("s", [ev(i=i) for i in range(7)])
        await store.close()
        file_cps = CheckpointFile(config.checkpoints).read()
        assert file_cps and file_cps[-1].size == 7
        store = await self.open_store(config)
        assert [cp.size for cp in await store.checkpoints()][-1] == 7
        report = await self.verify(store, config)
        await store.close()
        assert report.ok and report.last_checkpoint == 7

    async def test_checkpoints_every_n_events(self, tmp_path: Path) -> None:
        config = self.make_config(tmp_path, checkpoint_every=10)
        store = await self.open_store(config)
        for i in range(35):
            await store.append("s", [ev(i=i)], expected_version=ANY_VERSION)
        sizes = [cp.size for cp in await store.checkpoints()]
        await store.close()
        assert sizes[:3] == [10, 20, 30]

    async def test_wrong_chain_key_refuses_to_open(self, config: StoreConfig) -> None:
        store = await self.open_store(config)
        await store.append("s", [ev()])
        await store.close()
        good = config.chain_key_file.read_bytes()
        config.chain_key_file.write_bytes(b"A" * 43 + b"\n")
        with pytest.raises(KeyMismatch, match="not the key"):
            await self.open_store(config)
        config.chain_key_file.write_bytes(good)
        store = await self.open_store(config)
        await store.close()

    async def test_missing_key_is_never_regenerated(self, config: StoreConfig) -> None:
        store = await self.open_store(config)
        await store.append("s", [ev()])
        await store.close()
        backup = config.keys.with_name("saved-keys")
        shutil.copytree(config.keys, backup)
        config.chain_key_file.unlink()
        with pytest.raises(MissingKey, match="never regenerated"):
            await self.open_store(config)
        assert not config.chain_key_file.exists()

    # -- the transparency log: stored tree and signed tree notes --------------------------

    async def _tree_store(self, config: StoreConfig) -> None:
        """70 events with a chain checkpoint and a tree note every 10: tree nodes 4/0..4/3,
        5/0, 5/1 and 6/0."""
        store = await self.open_store(config)
        for i in range(70):
            await store.append(f"s{i % 3}", [ev(i=i)])
        await store.close()

    async def _verify_closed(self, config: StoreConfig) -> VerifyReport:
        store = await self.open_store(dataclasses.replace(config, readonly=True))
        try:
            return await self.verify(store, config)
        finally:
            await store.close()

    async def test_untouched_tree_and_notes_verify(self, tmp_path: Path) -> None:
        config = self.make_config(tmp_path, checkpoint_every=10)
        await self._tree_store(config)
        report = await self._verify_closed(config)
        assert report.ok, report.problems
        assert (report.tree_nodes_checked, report.tree_notes_checked) == (7, 7)

    async def test_edited_merkle_node_is_reported(self, tmp_path: Path) -> None:
        config = self.make_config(tmp_path, checkpoint_every=10)
        await self._tree_store(config)
        await self.tamper(
            config,
            "UPDATE merkle_nodes SET hash = (SELECT hash FROM merkle_nodes "
            "WHERE level = 4 AND idx = 0) WHERE level = 4 AND idx = 1",
        )
        report = await self._verify_closed(config)
        assert [(p.position, p.kind) for p in report.problems] == [(17, "tree_node_mismatch")]
        assert "node 4/1 (positions 17..32)" in report.problems[0].detail

    @pytest.mark.parametrize(
        ("edit", "detail"),
        [
            ("'x' || note", "is of log 'xlighthouse/"),
            (  # one base64 character of the signature changed
                "substr(note, 1, length(note) - 6) || CASE WHEN substr(note, length(note) - 5, 1)"
                " = 'A' THEN 'B' ELSE 'A' END || substr(note, length(note) - 4)",
                "not validly signed (the checkpoint's signature does not verify",
            ),
            ("(SELECT note FROM tlog_checkpoints WHERE size = 10)", "signs size 10"),
        ],
        ids=["origin", "signature", "moved"],
    )
    async def test_forged_tree_note_is_reported(
        self, tmp_path: Path, edit: str, detail: str
    ) -> None:
        config = self.make_config(tmp_path, checkpoint_every=10)
        await self._tree_store(config)
        await self.tamper(config, f"UPDATE tlog_checkpoints SET note = {edit} WHERE size = 20")
        report = await self._verify_closed(config)
        assert [(p.position, p.kind) for p in report.problems] == [(20, "tree_note_forged")]
        assert detail in report.problems[0].detail

    async def test_tree_note_deleted_from_the_store_is_caught_by_the_file(
        self, tmp_path: Path
    ) -> None:
        config = self.make_config(tmp_path, checkpoint_every=10)
        await self._tree_store(config)
        await self.tamper(config, "DELETE FROM tlog_checkpoints WHERE size = 30")
        report = await self._verify_closed(config)
        assert [(p.position, p.kind) for p in report.problems] == [(30, "tree_note_removed")]
