"""The official MCP conformance suite against a bridge, through the signing proxy.

Which scenarios: every server scenario that needs no fixture tools, resources or prompts
(the suite's `test_*` tools exist only in the SDKs' reference servers; against our tools
those scenarios fail for that reason alone, see README.md). Each is run with the suite
version the issue names for its era: 0.1.16 for the 2025 eras, 0.2.0-alpha.12 for
2026-07-28. 0.1.16 cannot choose the wire version of a server scenario (it always speaks
its SDK's latest, 2025-11-25), so 0.2.0-alpha.12 also runs the 2025 scenarios at
2025-06-18 and 2025-11-25, the only way to drive the 2025-06-18 era and the session
lifecycle scenario, which 0.1.16 lacks.

Every check's status is compared with `conformance_baseline.json`: a check that passed
against the SDK-hosted bridge must still pass; checks that pass now but did not then are
reported. Re-record the baseline (after an intended change) with::

    python -m tests.judges.conformance record
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.judges.node import CONFORMANCE, run_node

BASELINE = Path(__file__).resolve().parent / "conformance_baseline.json"
PASS = "SUCCESS"

_LIFECYCLE_2025 = (
    "server-initialize",
    "ping",
    "tools-list",
    "logging-set-level",
    "completion-complete",
    "resources-list",
    "prompts-list",
)
_HTTP_2025_11 = ("server-sse-multiple-streams", "dns-rebinding-protection")


@dataclass(frozen=True, slots=True)
class Run:
    """One suite version at one wire version, and the scenarios it runs."""

    suite: str
    spec_version: str | None  # None: the suite's own default
    scenarios: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.suite}@{self.spec_version or 'default'}"


RUNS = (
    Run("0.1.16", None, (*_LIFECYCLE_2025, *_HTTP_2025_11)),
    Run(
        "0.2.0-alpha.12",
        "2025-06-18",
        (*_LIFECYCLE_2025[:1], "server-session-lifecycle", *_LIFECYCLE_2025[1:]),
    ),
    Run(
        "0.2.0-alpha.12",
        "2025-11-25",
        (*_LIFECYCLE_2025[:1], "server-session-lifecycle", *_LIFECYCLE_2025[1:], *_HTTP_2025_11),
    ),
    Run(
        "0.2.0-alpha.12",
        "2026-07-28",
        (
            "server-stateless",
            "tools-list",
            "completion-complete",
            "resources-list",
            "prompts-list",
            "sep-2164-resource-not-found",
            "caching",
            "http-header-validation",
            "input-required-result-unsupported-methods",
            *_HTTP_2025_11,
        ),
    ),
)

# check key -> {"status": ..., "message": ...}
Checks = dict[str, dict[str, str]]
# run label -> scenario -> checks
Results = dict[str, dict[str, Checks]]


def check_keys(checks: list[dict[str, Any]]) -> Checks:
    """Checks by a stable key: the suite reuses ids within a scenario (one id, several
    named checks), so the key is `id name`, numbered when even that repeats."""
    out: Checks = {}
    seen: Counter[str] = Counter()
    for check in checks:
        key = f"{check.get('id')} {check.get('name')}"
        seen[key] += 1
        if seen[key] > 1:
            key = f"{key} #{seen[key]}"
        out[key] = {
            "status": str(check.get("status")),
            "message": (check.get("errorMessage") or "")[:300],
        }
    return out


async def run_scenario(run: Run, scenario: str, url: str, home: Path) -> Checks:
    """One scenario; its checks, or a single `scenario` check saying why there are none."""
    out_dir = home / "results" / run.label / scenario
    args: list[str | Path] = [CONFORMANCE[run.suite], "server", "--url", url]
    args += ["--scenario", scenario, "-o", out_dir]
    if run.spec_version is not None:
        args += ["--spec-version", run.spec_version]
    done = await run_node(*args, home=home, timeout=120)
    files = sorted(out_dir.glob("*/checks.json"))
    if not files:
        tail = re.sub(r"\s+", " ", (done.stdout + done.stderr)[-300:])
        return {"scenario produced no checks": {"status": "ERROR", "message": tail}}
    return check_keys(json.loads(files[-1].read_text()))


async def run_all(url: str, home: Path, runs: tuple[Run, ...] = RUNS) -> Results:
    """Every run's scenarios, one at a time (the machine has two cores)."""
    results: Results = {}
    for run in runs:
        results[run.label] = {s: await run_scenario(run, s, url, home) for s in run.scenarios}
    return results


@dataclass(frozen=True, slots=True)
class Comparison:
    regressions: list[str]  # passed in the baseline, not now (or gone)
    newly_passing: list[str]  # did not pass in the baseline, pass now
    unbaselined: list[str]  # checks the baseline does not know


def compare(baseline: Results, now: Results) -> Comparison:
    regressions: list[str] = []
    newly: list[str] = []
    unknown: list[str] = []
    for label, scenarios in baseline.items():
        for scenario, checks in scenarios.items():
            current = now.get(label, {}).get(scenario, {})
            for key, was in checks.items():
                got = current.get(key)
                where = f"{label} {scenario}: {key}"
                if was["status"] == PASS and (got is None or got["status"] != PASS):
                    regressions.append(
                        f"{where}: {'missing' if got is None else got['status']}"
                        + (f" ({got['message']})" if got and got["message"] else "")
                    )
                elif was["status"] != PASS and got is not None and got["status"] == PASS:
                    newly.append(f"{where}: {was['status']} -> {PASS}")
            unknown += [
                f"{label} {scenario}: {k} = {v['status']}"
                for k, v in current.items()
                if k not in checks
            ]
    return Comparison(regressions, newly, unknown)


def load_baseline() -> dict[str, Any]:
    return json.loads(BASELINE.read_text())


def summary(results: Results) -> dict[str, dict[str, str]]:
    """Per run and scenario: `passed/total` (what the README table shows)."""
    return {
        label: {
            s: f"{sum(c['status'] == PASS for c in checks.values())}/{len(checks)}"
            for s, checks in scenarios.items()
        }
        for label, scenarios in results.items()
    }


async def _record(out: Path) -> None:
    from tests.harness import running_bridge
    from tests.judges.signing_proxy import SigningProxy

    with tempfile.TemporaryDirectory(prefix="lh-conformance-") as tmp:
        work = Path(tmp)
        with running_bridge(work, {"judge": ()}) as bridge:
            agent = bridge.agents["judge"]
            async with SigningProxy(bridge.url, agent.key_id, agent.secret) as proxy:
                results = await run_all(proxy.mcp_url, work)
    previous = load_baseline() if out.exists() else {}
    document = {
        "about": (
            "Per-check results of the official MCP conformance suite against the bridge "
            "through tests/judges/signing_proxy.py; recorded by "
            "`python -m tests.judges.conformance record`. Every SUCCESS here must stay "
            "SUCCESS (tests/judges/test_conformance.py). Why the others fail: `why` and "
            "tests/judges/README.md."
        ),
        "server": "native /mcp (bridge/mcp); first recorded against the SDK-hosted /mcp "
        "(python mcp 2.3.0), whose every SUCCESS the native endpoint kept",
        "suites": {run.label: list(run.scenarios) for run in RUNS},
        "summary": summary(results),
        "why": previous.get("why", {}),
        "results": results,
    }
    out.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    print(json.dumps(document["summary"], indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description="record the conformance baseline")
    parser.add_argument("command", choices=["record"])
    parser.add_argument("--out", type=Path, default=BASELINE)
    args = parser.parse_args()
    asyncio.run(_record(args.out))
    sys.exit(0)


if __name__ == "__main__":
    main()
