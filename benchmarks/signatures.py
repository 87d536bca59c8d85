"""Request-signature verification throughput: our verifier vs ``http-message-signatures``.

What is measured (one process, one core, no HTTP): full verification of a signed
``POST /mcp`` with a 1 KB JSON body and an ``Mcp-Session-Id``, covering
``"@method" "@path" "content-digest" "mcp-session-id"``: header parsing, key lookup,
``created`` check, HMAC, digest of the body and the nonce claim.

* ``ours+memory`` / ``ours+sqlite``: ``SignatureVerifier.verify`` with the in-memory and the
  SQLite (WAL, synchronous=NORMAL) nonce store.
* ``package+memory``: ``HTTPMessageVerifier.verify(..., body=...)`` plus the same in-memory
  nonce claim (the package leaves replay detection to the caller).
* ``nonce claim`` rows: the cost of the claim alone, per backend; ``x20``: twenty claims
  at a time (requests arriving together share one SQLite transaction).
* ``sign`` rows: producing the headers (client side), ours vs the package's signer.

Each request is distinct (fresh nonce), prepared before timing. Best of ``--repeat`` runs.
Run: ``python benchmarks/signatures.py [--n 20000] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx2
from http_message_signatures import (
    HTTPMessageSigner,
    HTTPMessageVerifier,
    MappingKeyResolver,
)
from http_message_signatures.algorithms import HMAC_SHA256
from http_message_signatures.httpx2 import adapt_message

from security.nonces import InMemoryNonceStore, SQLiteNonceStore
from security.signatures import (
    RequestView,
    SignatureVerifier,
    Verified,
    sign_request,
)

KEY_ID = "k_bench0000000000"
SECRET = os.urandom(32)
URL = "http://127.0.0.1:8765/mcp"
SESSION = "3f2a9c1e-5b7d-4e8f-a1b2-c3d4e5f60718"


def _body(size: int = 1024) -> bytes:
    """A JSON-RPC tools/call of exactly *size* bytes."""
    params = {"name": "ask", "arguments": {"to": "bob", "message": ""}}
    message = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
    pad = size - len(json.dumps(message).encode())
    params["arguments"]["message"] = "x" * pad
    return json.dumps(message).encode()


BODY = _body()
assert len(BODY) == 1024


def keys(key_id: str):
    return ("bench-agent", SECRET) if key_id == KEY_ID else None


def our_requests(n: int) -> list[RequestView]:
    now = int(time.time())
    out = []
    for i in range(n):
        headers = {"Content-Type": "application/json", "Mcp-Session-Id": SESSION}
        headers.update(
            sign_request("POST", "/mcp", "", headers, BODY, KEY_ID, SECRET, f"n{i:08d}", now)
        )
        out.append(RequestView("POST", "/mcp", "", headers, BODY))
    return out


def as_httpx_request(view: RequestView) -> httpx2.Request:
    return httpx2.Request("POST", URL, headers=view.headers, content=view.body)


async def bench_ours(views: list[RequestView], store) -> float:
    verifier = SignatureVerifier(keys, store)
    start = time.perf_counter()
    for view in views:
        result = await verifier.verify(view)
        if type(result) is not Verified:
            raise SystemExit(f"verification failed: {result}")
    return time.perf_counter() - start


async def bench_package(views: list[RequestView]) -> float:
    resolver = MappingKeyResolver(public_keys={KEY_ID: SECRET}, private_keys={})
    verifier = HTTPMessageVerifier(signature_algorithm=HMAC_SHA256, key_resolver=resolver)
    verifier.max_clock_skew = verifier.max_clock_skew.__class__(seconds=300)
    store = InMemoryNonceStore(300)
    messages = [adapt_message(as_httpx_request(v)) for v in views]
    start = time.perf_counter()
    for message in messages:
        (result,) = verifier.verify(message, body=BODY, expect_tag=None)
        if not await store.claim(
            result.parameters["keyid"], result.nonce, result.parameters["created"], time.time()
        ):
            raise SystemExit("replay?")
    return time.perf_counter() - start


async def bench_claims(store, n: int, concurrent: int = 1) -> float:
    """`concurrent` claims at a time, as requests arriving together on a busy bridge."""
    now = time.time()
    created = int(now)
    start = time.perf_counter()
    if concurrent == 1:  # no gather around a lone claim: it would dominate the timing
        for i in range(n):
            await store.claim(KEY_ID, f"c{i:08d}", created, now)
        return time.perf_counter() - start
    for first in range(0, n, concurrent):
        await asyncio.gather(
            *(
                store.claim(KEY_ID, f"c{i:08d}", created, now)
                for i in range(first, first + concurrent)
            )
        )
    return time.perf_counter() - start


def bench_sign_ours(n: int) -> float:
    headers = {"Mcp-Session-Id": SESSION}
    start = time.perf_counter()
    for _ in range(n):
        sign_request("POST", "/mcp", "", headers, BODY, KEY_ID, SECRET)
    return time.perf_counter() - start


def bench_sign_package(n: int) -> float:
    resolver = MappingKeyResolver(public_keys={}, private_keys={KEY_ID: SECRET})
    signer = HTTPMessageSigner(signature_algorithm=HMAC_SHA256, key_resolver=resolver)
    requests = [
        httpx2.Request("POST", URL, content=BODY, headers={"Mcp-Session-Id": SESSION})
        for _ in range(n)
    ]
    start = time.perf_counter()
    for i, request in enumerate(requests):
        signer.sign(
            adapt_message(request),
            key_id=KEY_ID,
            nonce=f"n{i}",
            label="lh",
            covered_component_ids=("@method", "@path", "mcp-session-id"),
            body=BODY,
        )
    return time.perf_counter() - start


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "signatures.json"))
    args = parser.parse_args()
    n = args.n
    timings: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeat):
            views = our_requests(n)
            timings.setdefault("verify ours+memory", []).append(
                await bench_ours(views, InMemoryNonceStore(300))
            )
            # a new store of a new install: no earlier store whose nonces it must outlive
            store = SQLiteNonceStore(Path(tmp) / f"nonces{r}.db", 300, fresh_install=True)
            timings.setdefault("verify ours+sqlite", []).append(await bench_ours(views, store))
            await store.close()
            timings.setdefault("verify package+memory", []).append(await bench_package(views))
            timings.setdefault("nonce claim memory", []).append(
                await bench_claims(InMemoryNonceStore(300), n)
            )
            claims = SQLiteNonceStore(Path(tmp) / f"claims{r}.db", 300)
            timings.setdefault("nonce claim sqlite", []).append(await bench_claims(claims, n))
            await claims.close()
            claims = SQLiteNonceStore(Path(tmp) / f"claims{r}x.db", 300)
            timings.setdefault("nonce claim sqlite x20", []).append(
                await bench_claims(claims, n, concurrent=20)
            )
            await claims.close()
            timings.setdefault("sign ours", []).append(bench_sign_ours(n))
            timings.setdefault("sign package", []).append(bench_sign_package(n))

    rows = []
    for name, runs in timings.items():
        best = min(runs)
        rows.append(
            {"name": name, "ops_per_s": round(n / best), "us_per_op": round(best / n * 1e6, 2)}
        )
    base = next(r for r in rows if r["name"] == "verify package+memory")["ops_per_s"]
    py = platform.python_version()
    print(f"n={n} requests, body={len(BODY)} B, best of {args.repeat}, Python {py}")
    print(f"{'case':<24}{'ops/s':>12}{'us/op':>10}{'vs package':>12}")
    for row in rows:
        ratio = f"{row['ops_per_s'] / base:.1f}x" if row["name"].startswith("verify") else ""
        print(f"{row['name']:<24}{row['ops_per_s']:>12,}{row['us_per_op']:>10}{ratio:>12}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "benchmark": "signatures",
                "requests": n,
                "body_bytes": len(BODY),
                "repeat": args.repeat,
                "python": platform.python_version(),
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "results": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    asyncio.run(main())
