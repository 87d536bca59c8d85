"""The official conformance suite against a real bridge, through the signing proxy:
every check that passed against the SDK-hosted bridge (the recorded baseline) must
still pass. Checks that pass now but did not then are reported as warnings, so a better
endpoint shows up in the summary; re-record the baseline to lock them in."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from tests.judges.conformance import PASS, RUNS, check_keys, compare, load_baseline, run_all
from tests.judges.signing_proxy import SigningProxy

pytestmark = pytest.mark.judges


def test_baseline_covers_the_runs_and_explains_every_failure() -> None:
    baseline = load_baseline()
    assert baseline["suites"] == {run.label: list(run.scenarios) for run in RUNS}
    unexplained = sorted(
        f"{scenario} {key.split()[0]}"
        for scenarios in baseline["results"].values()
        for scenario, checks in scenarios.items()
        for key, check in checks.items()
        if check["status"] != PASS and f"{scenario} {key.split()[0]}" not in baseline["why"]
    )
    assert unexplained == [], "baseline failures without a `why` entry"


async def test_conformance_suite_keeps_the_baseline(proxy: SigningProxy, home: Path) -> None:
    baseline = load_baseline()["results"]
    now = await run_all(proxy.mcp_url, home)
    result = compare(baseline, now)
    for line in result.newly_passing:
        warnings.warn(f"newly passing conformance check: {line}", stacklevel=1)
    for line in result.unbaselined:
        warnings.warn(f"conformance check not in the baseline: {line}", stacklevel=1)
    assert result.regressions == [], "\n".join(result.regressions)
    # The proxy really carried the suite's traffic, and the bridge verified it (a
    # signature problem would show as 401s here and as failures above).
    statuses = {r.status for r in proxy.log}
    assert len(proxy.log) > 100 and 401 not in statuses


def test_compare_finds_regressions_new_passes_and_gone_checks() -> None:
    ok = {"status": PASS, "message": ""}
    bad = {"status": "FAILURE", "message": "nope"}
    baseline = {"r": {"s": {"a": ok, "b": bad, "c": ok}}}
    now = {"r": {"s": {"a": bad, "b": ok, "d": ok}}}
    result = compare(baseline, now)
    assert result.regressions == ["r s: a: FAILURE (nope)", "r s: c: missing"]
    assert result.newly_passing == ["r s: b: FAILURE -> SUCCESS"]
    assert result.unbaselined == ["r s: d = SUCCESS"]


def test_repeated_check_ids_get_distinct_keys() -> None:
    checks = [
        {"id": "x", "name": "N", "status": PASS},
        {"id": "x", "name": "N", "status": "FAILURE", "errorMessage": "e"},
        {"id": "x", "name": "M", "status": PASS},
    ]
    assert check_keys(checks) == {
        "x N": {"status": PASS, "message": ""},
        "x N #2": {"status": "FAILURE", "message": "e"},
        "x M": {"status": PASS, "message": ""},
    }
