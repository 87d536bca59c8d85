"""`/metrics` of a real bridge process: parses, and has what the runsheet's alerts need."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import BridgeProcess, running_bridge
from tests.test_audit import _ask_bob, make_rejections

RUNSHEET_FAMILIES = {
    "lighthouse_auth_rejections": "counter",  # auth failures/min, replays (reason label)
    "lighthouse_rate_limited": "counter",  # rate-limit violations
    "lighthouse_admin_auth_failures": "counter",
    "lighthouse_ask_latency_seconds": "histogram",  # p50/p95/p99/p99.9 by path
    "lighthouse_asks": "counter",  # timeout rate (status label)
    "lighthouse_elicitations": "counter",  # successful / failed elicitations
    "lighthouse_fallbacks": "counter",  # by cause
    "lighthouse_store_append_seconds": "histogram",
    "lighthouse_store_batch_size": "histogram",
    "lighthouse_elicitation_enabled": "gauge",
    "lighthouse_elicitation_rollout_percent": "gauge",
    "lighthouse_auto_rollbacks": "counter",
    "lighthouse_elicitations_in_flight": "gauge",
    "lighthouse_sessions": "gauge",
    "lighthouse_tool_calls": "counter",
}


@pytest.fixture
def metrics_bridge(tmp_path: Path) -> Iterator[BridgeProcess]:
    with running_bridge(tmp_path, {"alice": (), "bob": ("--role", "expert")}) as b:
        yield b


def scrape(bridge: BridgeProcess) -> str:
    with urllib.request.urlopen(bridge.url + "/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_after_asks_and_rejections(metrics_bridge: BridgeProcess) -> None:
    for _ in range(2):
        await _ask_bob(metrics_bridge)
    make_rejections(metrics_bridge)
    text = scrape(metrics_bridge)
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    for name, kind in RUNSHEET_FAMILIES.items():
        assert families.get(name) == kind, (name, families.get(name))
    found = samples(text)
    assert value(found, "lighthouse_asks_total", path="elicitation", status="accepted") == 2
    assert value(found, "lighthouse_ask_latency_seconds_count", path="elicitation") == 2
    assert value(found, "lighthouse_ask_latency_seconds_bucket", path="elicitation", le="+Inf") == 2
    assert value(found, "lighthouse_elicitations_total", outcome="answered") == 2
    assert value(found, "lighthouse_auth_rejections_total", reason="replayed_nonce") == 1
    assert (
        sum(v for (n, _), v in found.items() if n == "lighthouse_auth_rejections_total") == 2
    )  # the unsigned request and the replay
    assert value(found, "lighthouse_admin_auth_failures_total") == 1
    assert value(found, "lighthouse_elicitation_enabled") == 1
    assert value(found, "lighthouse_store_append_seconds_count") > 0, "append latency unrecorded"
    assert value(found, "lighthouse_tool_calls_total", tool="ask", outcome="ok") == 2


def test_metrics_expose_every_family_before_any_traffic(metrics_bridge: BridgeProcess) -> None:
    families = {f.name for f in text_string_to_metric_families(scrape(metrics_bridge))}
    assert set(RUNSHEET_FAMILIES) <= families


# -- structured logs (bridge.observability) ----------------------------------------------


def test_json_log_lines_are_valid_json_with_context_and_no_secrets() -> None:
    import io
    import json
    import logging

    from bridge.observability import configure_logging

    out = io.StringIO()
    configure_logging("debug", stream=out)
    try:
        logging.getLogger("lighthouse.test").info(
            'refused "bob": %s',
            "bad_signature",
            extra={"request_id": "r1", "agent": "bob", "secret": "s3cr3t", "key_id": "k_1"},
        )
        logging.getLogger("lighthouse.test").debug("quiet")
    finally:
        configure_logging("WARNING")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0]["msg"] == 'refused "bob": bad_signature' and lines[0]["level"] == "INFO"
    assert (lines[0]["request_id"], lines[0]["agent"], lines[0]["key_id"]) == ("r1", "bob", "k_1")
    assert lines[0]["secret"] == "<redacted>" and "s3cr3t" not in out.getvalue()
    assert lines[1]["level"] == "DEBUG"


def test_event_logger_logs_live_facts_of_interest_without_content() -> None:
    import logging

    from bridge.domain import Fact
    from bridge.observability import EventLogger

    seen: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logger = logging.getLogger("lighthouse.test.events")
    logger.addHandler(Capture())
    logger.setLevel(logging.INFO)
    events = EventLogger(logger)
    created = {"request_id": "r1", "from": "alice", "recipient": "bob", "message": "private"}
    events.apply(Fact(1, "request-r1", "RequestCreated", created, "alice", 0.0))
    assert seen == []  # replay at start-up is not logged
    events.live = True
    events.apply(Fact(2, "request-r1", "RequestCreated", created, "alice", 0.0))
    events.apply(Fact(3, "mailbox-bob", "MailboxAcknowledged", {"agent": "bob"}, "bob", 0.0))
    rejected = {"reason": "replayed_nonce", "agent": "eve", "remote": "10.0.0.1"}
    events.apply(Fact(4, "security", "AuthRejected", rejected, "eve", 0.0))
    assert [r.getMessage() for r in seen] == ["RequestCreated", "AuthRejected"]
    assert (seen[0].request_id, seen[0].agent, seen[0].recipient) == ("r1", "alice", "bob")
    assert not hasattr(seen[0], "message_text") and "private" not in str(vars(seen[0]))
    assert seen[1].levelno == logging.WARNING and seen[1].reason == "replayed_nonce"


async def test_elicitations_on_the_2026_07_28_path_are_counted(
    metrics_bridge: BridgeProcess,
) -> None:
    """Without this the guard and the error-rate alert see only server-push elicitations."""
    import asyncio
    from typing import Any

    from mcp_types import ElicitResult

    from tests.harness import SCHEMA, wait_until

    async def answer(ctx: Any, params: Any) -> ElicitResult:
        return ElicitResult(action="accept", content={"answer": "42"})

    b = metrics_bridge
    async with (
        b.client("bob", mode="2026-07-28", elicitation_callback=answer) as bob,
        b.client("alice") as alice,
    ):
        waiter = asyncio.create_task(bob.call_tool("wait_for_messages", {"timeout_s": 10}))
        await wait_until(lambda: b.health()["sessions"].get("2026-07-28", 0) > 0)
        result = await alice.call_tool(
            "ask", {"to": "bob", "message": "m", "schema": SCHEMA, "timeout_s": 10}
        )
        await waiter
    assert result.structured_content["path"] == "elicitation"
    found = samples(scrape(b))
    assert value(found, "lighthouse_elicitations_total", outcome="answered") == 1
