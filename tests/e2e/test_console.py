"""The web console in a real browser (Debian's Chromium through Playwright) against a real
bridge process, with real SDK agents asking each other while an operator clicks.

What an operator and an auditor do: sign in; flip the flag and see new asks go legacy;
refuse a stale edit; run the rollback runbook end to end; manage an agent; search the
audit log, follow a request and download an export that verifies offline; and the
browser's own CSRF-less and cookie-less requests refused. Screenshots of each page go to
$LIGHTHOUSE_SCREENSHOTS when set (the README's come from `docs/console`), else a temp dir.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from mcp_types import ElicitResult

from bridge.audit_export import verify_export
from events import StoreConfig
from tests.harness import SCHEMA, BridgeProcess, answer_next_request, read_events, running_bridge

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
if not Path(CHROMIUM).exists() and not os.environ.get("CI"):
    pytest.skip("Chromium is not installed (apt-get install chromium)", allow_module_level=True)

_sync_api: Any = pytest.importorskip("playwright.sync_api")
expect, sync_playwright = _sync_api.expect, _sync_api.sync_playwright


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """The system Chromium, driven by Playwright's sync API for this module only.

    Not pytest-playwright's session-wide fixtures: the sync API keeps an event loop marked
    running in the main thread while it is alive, which would break every asyncio test
    that runs after this module; stopping it at the module's end hands the thread back.
    """
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context (no cookies) per test, on a laptop-sized screen."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(15_000)
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BridgeProcess]:
    agents: dict[str, tuple[str, ...]] = {"alice": (), "bob": (), "carol": ()}
    with running_bridge(tmp_path_factory.mktemp("console"), agents) as b:
        yield b


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = os.environ.get("LIGHTHOUSE_SCREENSHOTS")
    path = Path(target) if target else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def in_thread(work: Callable[[], Awaitable[Any]]) -> Future[Any]:
    """Run async SDK work beside Playwright's sync API (which owns this thread's loop)."""
    pool = ThreadPoolExecutor(1)
    future = pool.submit(lambda: asyncio.run(work()))  # type: ignore[arg-type]
    pool.shutdown(wait=False)
    return future


def store_events(bridge: BridgeProcess, types: list[str] | None) -> list[Any]:
    return in_thread(lambda: read_events(bridge.db, types)).result(30)


async def _answer(ctx: Any, params: Any) -> ElicitResult:
    return ElicitResult(action="accept", content={"answer": "pushed"})


async def _hang(ctx: Any, params: Any) -> ElicitResult:
    await asyncio.sleep(3600)
    raise AssertionError("unreachable")


def _ask(client: Any, timeout_s: float = 30) -> Any:
    return client.call_tool(
        "ask", {"to": "bob", "message": "ship it?", "schema": SCHEMA, "timeout_s": timeout_s}
    )


def ask_by_elicitation(bridge: BridgeProcess) -> dict[str, Any]:
    async def work() -> dict[str, Any]:
        async with bridge.client("bob", elicitation_callback=_answer), bridge.client("alice") as a:
            result: dict[str, Any] = (await _ask(a)).structured_content
            return result

    return in_thread(work).result(60)


def ask_answered_from_mailbox(bridge: BridgeProcess, text: str) -> dict[str, Any]:
    async def work() -> dict[str, Any]:
        async with bridge.client("bob", elicitation_callback=_answer), bridge.client("alice") as a:
            asking = asyncio.create_task(_ask(a))
            async with bridge.client("bob") as bob_mail:
                await answer_next_request(bob_mail, text)
            result: dict[str, Any] = (await asking).structured_content
            return result

    return in_thread(work).result(60)


def sign_in(page: Any, bridge: BridgeProcess, name: str = "ann") -> None:
    page.goto(bridge.url + "/console")
    page.get_by_label("Your name").fill(name)
    page.get_by_label("Admin token").fill(bridge.admin_token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#who")).to_contain_text(f"Signed in as {name}")


def go(page: Any, bridge: BridgeProcess, section: str, heading: str) -> None:
    page.goto(f"{bridge.url}/console/#/{section}")
    expect(page.get_by_role("heading", level=1)).to_have_text(heading)


def reset_flags(bridge: BridgeProcess) -> None:
    assert bridge.admin("POST", "/admin/resume")[0] == 200
    body = {"elicitation_enabled": True, "rollout_percent": 100, "reason": "test reset"}
    assert bridge.admin("POST", "/feature_flags", body)[0] == 200


def test_wrong_token_is_refused_and_a_good_one_signs_in(
    page: Any, bridge: BridgeProcess, shots: Path
) -> None:
    page.goto(bridge.url + "/console")
    page.get_by_label("Your name").fill("ann")
    page.get_by_label("Admin token").fill("lh_admin_wrong")
    page.screenshot(path=shots / "signin.png")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("invalid_token")
    [failed] = store_events(bridge, ["AdminAuthFailed"])
    assert failed.data["path"] == "/console/session"
    # Keyboard only: the name field has focus, Tab reaches the token, Enter submits.
    page.get_by_label("Your name").fill("")
    page.get_by_label("Your name").focus()
    page.keyboard.type("ann")
    page.keyboard.press("Tab")
    expect(page.get_by_label("Admin token")).to_be_focused()
    page.keyboard.type(bridge.admin_token)
    page.keyboard.press("Enter")
    expect(page.locator("#who")).to_contain_text("Signed in as ann")
    expect(page.get_by_role("heading", level=1)).to_be_focused()
    cookies = {c["name"]: c for c in page.context.cookies()}
    assert cookies["lh_console"]["httpOnly"] and cookies["lh_console"]["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # not readable by scripts
    expect(page.get_by_text("Auto-rollback guard")).to_be_visible()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert bridge.admin("GET", "/feature_flags")[0] == 200  # clear the failure for later tests


def test_flipping_the_flag_sends_new_asks_to_legacy(
    page: Any, bridge: BridgeProcess, shots: Path
) -> None:
    assert ask_by_elicitation(bridge)["path"] == "elicitation"
    sign_in(page, bridge)
    go(page, bridge, "flags", "Flags")
    page.get_by_label("Elicitation enabled").uncheck()
    page.get_by_label("Reason (recorded)").fill("canary looks slow")
    page.get_by_role("button", name="Preview change…").click()
    dialog = page.locator("dialog")
    expect(dialog).to_contain_text("Agents on elicitation: 3 → 0 of 3")
    expect(dialog).to_contain_text("3 agent(s) stop receiving asks by elicitation")
    page.screenshot(path=shots / "flags-preview.png")
    dialog.get_by_role("button", name="Apply change").click()
    expect(page.locator("#live")).to_contain_text("Applied: flags are now version 1")
    expect(page.get_by_role("cell", name="canary looks slow")).to_be_visible()
    result = ask_answered_from_mailbox(bridge, "by mail")
    assert result["path"] == "legacy" and result["content"] == {"answer": "by mail"}
    [change] = store_events(bridge, ["FlagChanged"])
    assert change.actor == "console:ann" and change.data["reason"] == "canary looks slow"
    [fell] = store_events(bridge, ["RequestFellBack"])
    assert fell.data["cause"] == "flag_off"
    page.screenshot(path=shots / "flags.png", full_page=True)
    reset_flags(bridge)


def test_a_stale_flag_edit_is_refused(page: Any, bridge: BridgeProcess) -> None:
    sign_in(page, bridge)
    go(page, bridge, "flags", "Flags")
    expect(page.locator("#flags-now")).to_be_visible()
    before = len(store_events(bridge, ["FlagChanged"]))
    body = {"rollout_percent": 40, "reason": "someone else"}
    assert bridge.admin("POST", "/feature_flags", body)[0] == 200
    page.get_by_label("Rollout percent").fill("10")
    page.get_by_role("button", name="Preview change…").click()
    expect(page.locator("#live")).to_contain_text("changed since you loaded them")
    assert len(store_events(bridge, ["FlagChanged"])) == before + 1
    assert bridge.health()["flags"]["rollout_percent"] == 40
    # The API itself refuses a console edit sent with the old version (409).
    status = page.evaluate(
        """async () => {
            const s = await (await fetch('/console/session')).json();
            const r = await fetch('/feature_flags', {method: 'POST', headers: {
                'Content-Type': 'application/json', 'X-CSRF-Token': s.csrf, 'If-Match': '0'},
                body: JSON.stringify({rollout_percent: 10})});
            return r.status;
        }"""
    )
    assert status == 409 and bridge.health()["flags"]["rollout_percent"] == 40
    reset_flags(bridge)


def test_rollback_runbook_end_to_end(page: Any, bridge: BridgeProcess, shots: Path) -> None:
    async def stuck_ask() -> dict[str, Any]:
        async with bridge.client("bob", elicitation_callback=_hang), bridge.client("alice") as a:
            asking = asyncio.create_task(_ask(a, timeout_s=120))
            while bridge.health()["flags"]["elicitation_enabled"]:
                await asyncio.sleep(0.2)
            async with bridge.client("bob") as bob_mail:
                await answer_next_request(bob_mail, "rolled back", timeout_s=30)
            result: dict[str, Any] = (await asking).structured_content
            return result

    asked = in_thread(stuck_ask)
    sign_in(page, bridge)
    go(page, bridge, "runbook", "Rollback runbook")
    progress = page.locator("#step-drain .progress-view")
    expect(progress).to_contain_text("1 elicitation(s) in flight", timeout=20_000)
    kill = page.locator("#step-kill")
    kill.get_by_label("Reason (required)").fill("INC-7 p99 over budget")
    kill.get_by_role("button", name="Preview kill switch…").click()
    dialog = page.locator("dialog")
    expect(dialog).to_contain_text("1 elicitation(s) in flight are moved to the legacy mailbox")
    dialog.get_by_role("button", name="Apply change").click()
    expect(page.locator("#step-kill-result")).to_contain_text("Elicitation is off for everyone")
    answered = asked.result(60)
    assert answered["path"] == "legacy" and answered["content"] == {"answer": "rolled back"}

    drain = page.locator("#step-drain")
    drain.get_by_label("Seconds to let in-flight elicitations finish").fill("1")
    drain.get_by_role("button", name="Drain…").click()
    page.locator("dialog").get_by_role("button", name="Drain").click()
    expect(page.locator("#step-drain-result")).to_contain_text(
        "0 in flight at start", timeout=20_000
    )

    page.locator("#step-legacy").get_by_role("button", name="Check now").click()
    expect(page.locator("#step-legacy-result")).to_contain_text("Legacy is serving", timeout=20_000)

    repair = page.locator("#step-repair")
    repair.get_by_role("button", name="Dry run").click()
    expect(page.locator("#step-repair-result")).to_contain_text("Dry run", timeout=30_000)
    repair.get_by_role("button", name="Apply repair…").click()
    page.locator("dialog").get_by_role("button", name="Apply repair").click()
    expect(page.locator("#step-repair-result")).to_contain_text("Applied", timeout=30_000)

    page.locator("#step-verify").get_by_role("button", name="Verify the store").click()
    expect(page.locator("#step-verify-result")).to_contain_text("Chain intact", timeout=30_000)
    page.screenshot(path=shots / "runbook.png", full_page=True)

    steps = store_events(bridge, ["RunbookStepRecorded"])
    assert [s.data["step"] for s in steps] == [
        "kill_switch",
        "drain",
        "confirm_legacy",
        "repair_dry_run",
        "repair_apply",
        "verify",
    ]
    assert all(s.data["ok"] for s in steps) and {s.actor for s in steps} == {"console:ann"}
    [fell] = [f for f in store_events(bridge, ["RequestFellBack"]) if f.data["cause"] != "flag_off"]
    assert fell.data["cause"] == "kill_switch"
    assert bridge.health()["status"] == "draining"
    reset_flags(bridge)


def test_agents_add_rotate_and_revoke(page: Any, bridge: BridgeProcess, shots: Path) -> None:
    sign_in(page, bridge)
    go(page, bridge, "agents", "Agents")
    page.get_by_label("Name").fill("dave")
    page.get_by_label("Roles (comma-separated)").fill("reviewer")
    page.get_by_role("button", name="Add agent…").click()
    page.locator("dialog").get_by_role("button", name="Add agent").click()
    dialog = page.locator("dialog")
    secret = dialog.get_by_label("Secret").input_value()
    key_id = dialog.locator("dd.mono").inner_text()
    page.screenshot(path=shots / "agents-secret.png", mask=[dialog.get_by_label("Secret")])
    dialog.get_by_role("button", name="I have saved it").click()
    row = page.get_by_role("row").filter(has_text="dave")
    expect(row).to_contain_text("active")

    async def tools(key: str, secret_: str) -> list[str]:
        from bridge.client import connect

        async with connect(bridge.mcp_url, key, secret_) as client:
            return [t.name for t in (await client.list_tools()).tools]

    assert "ask" in in_thread(lambda: tools(key_id, secret)).result(60)
    row.get_by_role("button", name="Rotate key of dave").click()
    page.locator("dialog").get_by_role("button", name="Rotate key").click()
    rotated = page.locator("dialog").get_by_label("Secret").input_value()
    assert rotated != secret
    page.locator("dialog").get_by_role("button", name="I have saved it").click()
    expect(page.locator("#live")).to_contain_text("Rotated dave's key")
    row.get_by_role("button", name="Revoke dave").click()
    page.locator("dialog").get_by_role("button", name="Revoke agent").click()
    expect(row).to_contain_text("revoked")
    refused = in_thread(lambda: tools(key_id, secret)).exception(60)
    assert refused is not None
    page.screenshot(path=shots / "agents.png", full_page=True)
    kinds = [e.type for e in store_events(bridge, ["AgentRegistered", "AgentRevoked"])]
    assert kinds.count("AgentRevoked") == 1


def test_audit_search_timeline_report_verify_and_export(
    page: Any, bridge: BridgeProcess, shots: Path, tmp_path: Path
) -> None:
    sign_in(page, bridge)
    go(page, bridge, "audit", "Audit")
    page.get_by_label("Agent", exact=True).fill("alice")
    page.get_by_label("Type").select_option("RequestCreated")
    page.get_by_role("button", name="Search").click()
    results = page.locator("#audit-results")
    expect(results).to_contain_text("event(s)")
    created = store_events(bridge, ["RequestCreated"])
    expect(results).to_contain_text(f"{len(created)} event(s)")
    first = created[0].data["request_id"]
    page.get_by_role("button", name=first).click()
    timeline = page.locator("#timeline")
    expect(timeline).to_contain_text("RequestCreated")
    expect(timeline).to_contain_text("RequestAnswered")
    page.get_by_role("button", name="Build report").click()
    expect(page.get_by_text("Admin failure reason")).to_be_visible()
    page.get_by_role("button", name="Verify the store").click()
    expect(page.locator(".badge", has_text="intact")).to_be_visible(timeout=30_000)
    page.screenshot(path=shots / "audit.png", full_page=True)
    with page.expect_download() as download:
        timeline.get_by_role("link", name="Download this request's export").click()
    export = tmp_path / "export.jsonl"
    download.value.save_as(export)
    pem = StoreConfig(path=bridge.db).signing_key_file.with_suffix(".pub").read_bytes()
    report = verify_export(export, pem)
    assert report.ok, report.describe()
    history = [
        e
        for e in store_events(bridge, None)
        if e.data.get("request_id") == first or e.stream == f"request-{first}"
    ]
    assert report.to_json()["matched"] == len(history) >= 3


def test_browser_requests_without_csrf_token_or_cookie_are_refused(
    page: Any, bridge: BridgeProcess, browser: Any
) -> None:
    sign_in(page, bridge)
    no_csrf = page.evaluate(
        """async () => (await fetch('/feature_flags', {method: 'POST',
            headers: {'Content-Type': 'application/json'},
            body: JSON.stringify({elicitation_enabled: false, force: true})})).status"""
    )
    assert no_csrf == 403
    stranger = browser.new_context()
    try:
        other = stranger.new_page()
        other.goto(bridge.url + "/console")
        expect(other.get_by_role("heading", name="Sign in")).to_be_visible()
        no_cookie = other.evaluate(
            """async () => (await fetch('/admin/console/overview')).status"""
        )
        assert no_cookie == 401
    finally:
        stranger.close()
    assert bridge.health()["flags"]["elicitation_enabled"] is True


def test_overview_shows_live_figures(page: Any, bridge: BridgeProcess, shots: Path) -> None:
    sign_in(page, bridge)
    go(page, bridge, "overview", "Overview")
    for _ in range(6):  # a few asks spread over polls, so the charts have lines
        assert ask_by_elicitation(bridge)["path"] == "elicitation"
        page.wait_for_timeout(1500)
    expect(page.locator(".chart-card").first).to_contain_text("elicitation", timeout=20_000)
    expect(page.get_by_text("rollback: p99 > 1000 ms", exact=True)).to_be_visible()
    expect(page.get_by_text("rollback: > 5 %", exact=True)).to_be_visible()
    page.wait_for_timeout(3500)
    page.screenshot(path=shots / "overview.png", full_page=True)
