"""Light load generator for `/mcp`: the server's own cost per `ask`, beside the bare SDK relay.

Why a second ask benchmark: the official SDK client costs several times what the server
spends on a request, so on a 2-core machine `ask_roundtrip.py` (SDK clients, the realistic
view) mostly measures its clients. Here the clients are cheap: hand-rolled HTTP/1.1 over
asyncio streams on uvloop (keep-alive, one request at a time per connection), msgspec for
JSON, our RFC 9421 signer (`security.signatures.sign_request`, what `LighthouseAuth` does
inside httpx) on every request to the bridge. Server CPU per ask comes from
/proc/PID/stat (utime + stime) of the server process and its children only.

The wire is what the SDK client sends (captured from `bridge.client.connect`), minus the
SDK's extra `tools/list` after calls:

- `push` (2025-11-25): both agents `initialize` → `notifications/initialized`; the
  answerer declares form elicitation and opens its standalone GET stream (SSE); the asker
  POSTs `tools/call ask` and reads the JSON response; the answerer gets
  `elicitation/create` on its GET stream and POSTs the JSON-RPC response (202).
- `legacy` (2025-11-25): the answerer declares no elicitation and loops
  `wait_for_messages` → `respond`.
- `modern` (2026-07-28 single exchange): no `initialize`; every request carries `_meta`
  (`io.modelcontextprotocol/protocolVersion`, `clientInfo`, `clientCapabilities`) and the
  `MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name` headers; the answerer holds
  `wait_for_messages`, gets an `input_required` result and retries the call with
  `inputResponses` + the sealed `requestState`.
- `open`: `push` at `--open-pairs` pairs offering `--open-rate` asks/s in total, each pair
  on a fixed schedule with a random phase; latency counts from the scheduled start (no
  coordinated omission); an ask that ends more than `--late-ms` after its scheduled start
  counts as an error (`late`) and stays in the latency figures.
- `idle`: `--idle` sessions (distinct agents) each holding its GET stream, spread over
  `--idle-workers` processes; server RSS with them, then `push` at `--idle-pairs` among
  them, compared with `push` at the same pair count without them.

The peer, in the same run: `benchmarks/_bare_relay.py --json-response` (SDK `MCPServer`,
uvicorn + uvloop, JSON responses, no auth, no store), driven by the same client, unsigned,
for `push` and `open`. Errors are errors (HTTP status, JSON-RPC error, `isError`, wrong
status/path/content, timeouts, lost connections), the first message of each kind kept.

    python benchmarks/light_load.py                              # every cell, 40 and 100 pairs
    python benchmarks/light_load.py --cells push legacy --pairs 40 --duration 5
    python benchmarks/light_load.py --bridge-url http://127.0.0.1:8765 --admin-token T
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._procs import (  # noqa: E402
    Worker,
    chunks,
    cpu_s,
    register_agents,
    rss_kb,
    runq_wait_s,
    wait_http,
)
from benchmarks._report import format_table, machine_info, percentile, write_json  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "light_load.json"
LEGACY_VERSION = "2025-11-25"
MODERN_VERSION = "2026-07-28"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
}
ANSWER = {"answer": "42"}
ASK_TIMEOUT_S = 10.0
STREAM_HEAD_TIMEOUT_S = 90.0  # the bridge may hold a GET's head until its 15 s keep-alive
CLIENT_INFO = {"name": "light-load", "version": "1"}
ELICITATION_CAPS = {"elicitation": {"form": {}}}
_ENCODE = msgspec.json.Encoder().encode
_DECODE = msgspec.json.Decoder().decode
_EXPECTED_PATH = {"push": "elicitation", "modern": "elicitation", "legacy": "legacy"}


# ================================================================ HTTP/1.1, just enough


class HttpError(Exception):
    """A response with an unexpected status; the name carries the status for counting."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}")
        self.status = status


class RpcError(Exception):
    """A JSON-RPC error response."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(f"JSON-RPC {error.get('code')}: {error.get('message')}")
        self.code = error.get("code")


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 client connection, one exchange at a time.

    A response is either collected whole (Content-Length or chunked) or, for a GET whose
    answer is `text/event-stream`, handed out as SSE `data` payloads to `on_event` for as
    long as the server keeps the stream open.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[Response] | None = None
        self.on_event: Callable[[bytes], None] | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reset()

    def _reset(self) -> None:
        self.state = "head"
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.remaining = 0
        self.streaming = False
        self.sse = bytearray()

    @classmethod
    async def open(cls, host: str, port: int, source: str | None = None) -> Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            cls, host, port, local_addr=(source, 0) if source else None
        )
        sock = conn.transport.get_extra_info("socket") if conn.transport else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.state == "until_close":
            self._complete()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc or 'closed'}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        try:
            self._parse()
        except Exception as exc:  # a protocol error ends the connection, loudly
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_exception(exc)
            self.close()

    # -- use
    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    async def exchange(self, head: bytes, body: bytes = b"") -> Response:
        if not self.usable:
            raise ConnectionError("connection closed")
        self.waiter = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(head + body if len(body) < 16384 else head)
        if len(body) >= 16384:
            self.transport.write(body)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- parsing
    def _parse(self) -> None:
        buf = self.buf
        while True:
            if self.state == "head":
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
                del buf[: end + 4]
                self.status = int(lines[0].split(" ", 2)[1])
                self.headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:])
                }
                h = self.headers
                if self.on_event is not None and h.get("content-type", "").startswith(
                    "text/event-stream"
                ):
                    self.streaming = True
                    self._resolve(Response(self.status, h, b""))
                if "chunked" in h.get("transfer-encoding", ""):
                    self.state = "chunk_size"
                elif "content-length" in h:
                    self.remaining = int(h["content-length"])
                    self.state = "length"
                elif self.status in (204, 304) or self.status < 200:
                    self.state = "length"
                    self.remaining = 0
                else:
                    self.state = "until_close"
            elif self.state == "length":
                take = min(self.remaining, len(buf))
                self._data(bytes(buf[:take]))
                del buf[:take]
                self.remaining -= take
                if self.remaining:
                    return
                self._complete()
            elif self.state == "chunk_size":
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                size = int(bytes(buf[:end]).split(b";", 1)[0], 16)
                del buf[: end + 2]
                if size == 0:
                    self.state = "trailer"
                else:
                    self.remaining, self.state = size, "chunk_data"
            elif self.state == "chunk_data":
                if len(buf) < self.remaining + 2:
                    return
                self._data(bytes(buf[: self.remaining]))
                del buf[: self.remaining + 2]
                self.state = "chunk_size"
            elif self.state == "trailer":
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                del buf[: end + 2]
                if end == 0:
                    self._complete()
            else:  # until_close
                self._data(bytes(buf))
                buf.clear()
                return

    def _data(self, data: bytes) -> None:
        if not self.streaming:
            self.body += data
            return
        self.sse += data
        sse = self.sse.replace(b"\r\n", b"\n")
        while True:
            end = sse.find(b"\n\n")
            if end < 0:
                break
            event = bytes(sse[:end])
            del sse[: end + 2]
            payload = b"\n".join(
                line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
            )
            if payload and self.on_event is not None:
                self.on_event(payload)
        self.sse = sse

    def _complete(self) -> None:
        response = Response(self.status, self.headers, bytes(self.body))
        closing = self.headers.get("connection", "").lower() == "close"
        streaming = self.streaming
        self._reset()
        if not streaming:
            self._resolve(response)
        if closing or streaming:
            self.close()

    def _resolve(self, response: Response) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(response)


# ================================================================ the light MCP client


class Target(msgspec.Struct, frozen=True):
    """Where the clients go: host, port, path, and whether requests are signed."""

    host: str
    port: int
    path: str
    signed: bool
    bare: bool

    @classmethod
    def of(cls, url: str, *, signed: bool, bare: bool) -> Target:
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 80, parts.path, signed, bare)


class McpClient:
    """One agent's view of `/mcp`: its POST connection, session id and JSON-RPC ids."""

    def __init__(
        self, target: Target, agent: dict[str, str], era: str, source: str | None = None
    ) -> None:
        from security.keys import decode_secret

        self.target = target
        self.agent = agent
        self.era = era
        self.source = source
        self.secret = decode_secret(agent["secret"]) if target.signed else b""
        self.session_id: str | None = None
        self.conn: Connection | None = None
        self.lock = asyncio.Lock()
        self.next_id = 0
        self.capabilities: dict[str, Any] = {}
        self.host_line = f"Host: {target.host}:{target.port}\r\n"

    def _head(self, method: str, body: bytes, extra: str = "") -> bytes:
        t = self.target
        lines = [f"{method} {t.path} HTTP/1.1\r\n", self.host_line, extra]
        if self.session_id is not None:
            lines.append(f"Mcp-Session-Id: {self.session_id}\r\n")
            if self.era == LEGACY_VERSION:
                lines.append(f"MCP-Protocol-Version: {LEGACY_VERSION}\r\n")
        if body:
            lines.append(
                "Content-Type: application/json\r\n"
                "Accept: application/json, text/event-stream\r\n"
                f"Content-Length: {len(body)}\r\n"
            )
        if t.signed:
            from security.signatures import sign_request

            session = {"mcp-session-id": self.session_id} if self.session_id else {}
            signed = sign_request(
                method, t.path, "", session, body, self.agent["key_id"], self.secret
            )
            lines.extend(f"{k}: {v}\r\n" for k, v in signed.items())
        lines.append("\r\n")
        return "".join(lines).encode("latin-1")

    async def _send(self, method: str, body: bytes, extra: str = "") -> Response:
        async with self.lock:
            if self.conn is None or not self.conn.usable:
                self.conn = await Connection.open(self.target.host, self.target.port, self.source)
            return await self.conn.exchange(self._head(method, body, extra), body)

    async def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """A JSON-RPC request; its `result` (raises HttpError / RpcError otherwise)."""
        self.next_id += 1
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        extra = ""
        if self.era == MODERN_VERSION:
            params = dict(params or {})
            params["_meta"] = self.meta
            extra = f"MCP-Protocol-Version: {MODERN_VERSION}\r\nMcp-Method: {method}\r\n"
            if method == "tools/call":
                extra += f"Mcp-Name: {params['name']}\r\n"
        if params is not None:
            msg["params"] = params
        r = await self._send("POST", _ENCODE(msg), extra)
        if r.status != 200:
            raise HttpError(r.status, r.body)
        if method == "initialize" and "mcp-session-id" in r.headers:
            self.session_id = r.headers["mcp-session-id"]
        reply = _reply_in(r, self.next_id)
        if "error" in reply:
            raise RpcError(reply["error"])
        return reply["result"]

    async def notify_or_reply(self, msg: dict[str, Any]) -> None:
        """A notification or a response to a server request: 202, no body expected."""
        r = await self._send("POST", _ENCODE(msg))
        if r.status != 202:
            raise HttpError(r.status, r.body)

    async def call_tool(self, name: str, arguments: dict[str, Any], **more: Any) -> dict[str, Any]:
        result = await self.request("tools/call", {"name": name, "arguments": arguments, **more})
        if result.get("isError"):
            text = " ".join(c.get("text", "") for c in result.get("content", []))
            raise ToolFailed(f"{name}: {text[:200]}")
        return result

    @property
    def meta(self) -> dict[str, Any]:
        return {
            "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
            "io.modelcontextprotocol/clientInfo": CLIENT_INFO,
            "io.modelcontextprotocol/clientCapabilities": self.capabilities,
        }

    async def initialize(self, capabilities: dict[str, Any]) -> None:
        self.capabilities = capabilities
        if self.era == MODERN_VERSION:
            return  # single exchange: every request carries its own `_meta`
        await self.request(
            "initialize",
            {
                "protocolVersion": LEGACY_VERSION,
                "capabilities": capabilities,
                "clientInfo": CLIENT_INFO,
            },
        )
        if self.session_id is None:
            raise RuntimeError("initialize: no Mcp-Session-Id in the response")
        await self.notify_or_reply({"jsonrpc": "2.0", "method": "notifications/initialized"})

    async def open_stream(self, on_message: Callable[[dict[str, Any]], None]) -> Connection:
        """The standalone GET stream; each SSE message goes to `on_message`, decoded."""
        conn = await Connection.open(self.target.host, self.target.port, self.source)
        conn.on_event = lambda data: on_message(_DECODE(data))
        try:
            async with asyncio.timeout(STREAM_HEAD_TIMEOUT_S):
                r = await conn.exchange(self._head("GET", b"", "Accept: text/event-stream\r\n"))
        except BaseException:
            conn.close()
            raise
        if r.status != 200:
            conn.close()
            raise HttpError(r.status, r.body)
        return conn

    async def delete(self) -> None:
        if self.session_id is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self._send("DELETE", b"")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


class ToolFailed(Exception):
    """A `tools/call` result with `isError: true`."""


def _reply_in(r: Response, request_id: int) -> dict[str, Any]:
    """The JSON-RPC reply to `request_id` in a JSON body or in an SSE-framed body."""
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        for event in r.body.replace(b"\r\n", b"\n").split(b"\n\n"):
            data = b"\n".join(
                line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
            )
            if data:
                msg = _DECODE(data)
                if msg.get("id") == request_id and ("result" in msg or "error" in msg):
                    return msg
        raise RuntimeError("SSE response ended without the reply")
    return _DECODE(r.body)


# ================================================================ worker side

_EXAMPLES: dict[str, str] = {}  # first message seen per error kind (this worker)


def _error_name(exc: BaseException) -> str:
    if isinstance(exc, HttpError):
        name = f"HttpError:{exc.status}"
    elif isinstance(exc, RpcError):
        name = f"RpcError:{exc.code}"
    else:
        name = type(exc).__name__
    if name not in _EXAMPLES:
        _EXAMPLES[name] = str(exc)[:300] or repr(exc)
        traceback.print_exception(exc, file=sys.stderr)
    return name


class Stats:
    def __init__(self) -> None:
        self.latencies_ms: list[float] = []
        self.ok = 0
        self.late = 0
        self.scheduled = 0
        self.errors: Counter[str] = Counter()
        self.answerer_errors: Counter[str] = Counter()
        self.connect_errors: Counter[str] = Counter()
        self.connected = 0


async def _push_answerer(b: McpClient, stats: Stats) -> Connection:
    """Answer every `elicitation/create` (and `ping`) pushed on the GET stream."""
    loop = asyncio.get_running_loop()
    replies: set[asyncio.Task[None]] = set()  # referenced until done (asyncio keeps weak refs)

    def spawn(msg_id: Any, result: dict[str, Any]) -> None:
        task = loop.create_task(reply(msg_id, result))
        replies.add(task)
        task.add_done_callback(replies.discard)

    async def reply(msg_id: Any, result: dict[str, Any]) -> None:
        try:
            await b.notify_or_reply({"jsonrpc": "2.0", "id": msg_id, "result": result})
        except Exception as exc:
            stats.answerer_errors[_error_name(exc)] += 1

    def on_message(msg: dict[str, Any]) -> None:
        method = msg.get("method")
        if method == "elicitation/create":
            spawn(msg["id"], {"action": "accept", "content": ANSWER})
        elif method == "ping" and "id" in msg:
            spawn(msg["id"], {})

    return await b.open_stream(on_message)


async def _legacy_answerer(b: McpClient, stats: Stats) -> None:
    while True:
        try:
            r = await b.call_tool("wait_for_messages", {"timeout_s": 25, "max": 10})
            for m in r.get("structuredContent", {}).get("messages", []):
                if m.get("kind") == "request":
                    await b.call_tool(
                        "respond",
                        {"request_id": m["request_id"], "action": "accept", "content": ANSWER},
                    )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            stats.answerer_errors[_error_name(exc)] += 1
            await asyncio.sleep(0.05)


async def _modern_answerer(b: McpClient, stats: Stats) -> None:
    args = {"timeout_s": 25, "max": 10}
    while True:
        try:
            r = await b.call_tool("wait_for_messages", args)
            while r.get("resultType") == "input_required":
                responses = {
                    rid: {"action": "accept", "content": ANSWER}
                    for rid, req in r.get("inputRequests", {}).items()
                    if req.get("method") == "elicitation/create"
                }
                r = await b.call_tool(
                    "wait_for_messages",
                    args,
                    inputResponses=responses,
                    requestState=r["requestState"],
                )
            for outcome in r.get("structuredContent", {}).get("answered", []):
                if "refused" in outcome:
                    stats.answerer_errors[f"refused:{outcome['refused']}"] += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            stats.answerer_errors[_error_name(exc)] += 1
            await asyncio.sleep(0.05)


async def _run_pair(
    target: Target,
    kind: str,
    pair: dict[str, Any],
    stats: Stats,
    sem: asyncio.Semaphore,
    ready: Callable[[], None],
    go: asyncio.Future[float],
    cfg: dict[str, Any],
) -> None:
    era = MODERN_VERSION if kind == "modern" else LEGACY_VERSION
    a = McpClient(target, pair["asker"], era, pair["source"])
    b = McpClient(target, pair["answerer"], era, pair["source"])
    stream: Connection | None = None
    answering: asyncio.Task[None] | None = None
    signalled = False
    try:
        async with sem:
            await b.initialize({} if kind == "legacy" else ELICITATION_CAPS)
            if target.bare:
                await b.call_tool("register", {"name": pair["answerer"]["name"]})
            await a.initialize({})
        # Outside the semaphore: today's bridge sends the GET stream's response head only
        # with its first event or keep-alive comment (up to 15 s later).
        if kind == "push":
            stream = await _push_answerer(b, stats)
        elif kind == "legacy":
            answering = asyncio.create_task(_legacy_answerer(b, stats))
        else:
            answering = asyncio.create_task(_modern_answerer(b, stats))
        stats.connected += 1
        signalled = True
        ready()
        t0 = await go
        measure_from = t0 + cfg["warmup_s"]
        end = measure_from + cfg["duration_s"]
        hard_end = end + cfg["grace_s"]
        await asyncio.sleep(max(0.0, t0 - time.time()))
        args: dict[str, Any] = {
            "to": pair["answerer"]["name"],
            "message": "meaning of life?",
            "schema": SCHEMA,
        }
        if not target.bare:
            args["timeout_s"] = ASK_TIMEOUT_S
        want_path = _EXPECTED_PATH[kind]
        interval = cfg.get("interval_s")
        late_s = cfg["late_ms"] / 1000
        next_at = t0 + random.random() * interval if interval else 0.0
        while True:
            if interval:
                if next_at >= end:
                    break
                await asyncio.sleep(max(0.0, next_at - time.time()))
                scheduled = next_at
                next_at += interval
                in_window = scheduled >= measure_from
                if in_window:
                    stats.scheduled += 1
                started = time.perf_counter() - max(0.0, time.time() - scheduled)
            else:
                if time.time() >= end:
                    break
                started = time.perf_counter()
            err: str | None = None
            try:
                async with asyncio.timeout(max(0.1, hard_end - time.time())):
                    r = await a.call_tool("ask", args)
                sc = r.get("structuredContent") or {}
                if sc.get("status") != "accepted":
                    err = f"status:{sc.get('status')}"
                elif sc.get("path") != want_path:
                    err = f"wrong_path:{sc.get('path')}"
                elif sc.get("content") != ANSWER:
                    err = "wrong_content"
            except TimeoutError:
                err = "unfinished_after_grace"
            except Exception as exc:
                err = _error_name(exc)
            done = time.time()
            latency_ms = (time.perf_counter() - started) * 1000
            if interval:  # open loop: judged by when it was due, counted if due in the window
                if not in_window:
                    pass
                elif err is not None:
                    stats.errors[err] += 1
                else:
                    stats.latencies_ms.append(latency_ms)
                    if latency_ms > late_s * 1000:
                        stats.late += 1
                        stats.errors["late"] += 1
                    else:
                        stats.ok += 1
            elif done < measure_from:
                pass
            elif err is not None:
                stats.errors[err] += 1
            elif done <= end:
                stats.ok += 1
                stats.latencies_ms.append(latency_ms)
            if err == "unfinished_after_grace":
                break
            if err is not None and done < end:
                await asyncio.sleep(0.01)  # no hot loop on a failing pair
    except Exception as exc:
        if not signalled:
            stats.connect_errors[_error_name(exc)] += 1
            ready()
        else:
            stats.errors["pair:" + _error_name(exc)] += 1
    finally:
        if answering is not None:
            answering.cancel()
            with contextlib.suppress(BaseException):
                await answering
        if stream is not None:
            stream.close()
        for c in (a, b):
            c.close()
            await c.delete()
            c.close()


async def _idle_session(
    target: Target,
    agent: dict[str, str],
    sem: asyncio.Semaphore,
    counts: Counter[str],
    streams: list[Connection],
) -> None:
    c = McpClient(target, agent, LEGACY_VERSION, agent["source"])
    try:
        async with sem:
            await c.initialize(ELICITATION_CAPS)
        c.close()
        # The head may come only with the first keep-alive (see _run_pair): not under `sem`.
        streams.append(await c.open_stream(lambda msg: None))
        counts["connected"] += 1
    except Exception as exc:
        counts["error:" + _error_name(exc)] += 1
    finally:
        c.close()  # the session lives on its id; only the GET stream stays open


def _raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def _worker_main(spec: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    target = Target(**spec["target"])
    out = sys.stdout

    def emit(obj: dict[str, Any]) -> None:
        out.write(msgspec.json.encode(obj).decode() + "\n")
        out.flush()

    async def readline() -> str:
        return (await loop.run_in_executor(None, sys.stdin.readline)).strip()

    nofile = _raise_nofile()
    sem = asyncio.Semaphore(spec["connect_concurrency"])
    t = time.perf_counter()
    if spec["role"] == "idle":
        counts: Counter[str] = Counter()
        streams: list[Connection] = []
        await asyncio.gather(
            *(_idle_session(target, a, sem, counts, streams) for a in spec["agents"])
        )
        lost = sum(1 for s in streams if not s.usable)
        emit(
            {
                "event": "ready",
                "counts": dict(counts),
                "streams_open": len(streams) - lost,
                "error_examples": _EXAMPLES,
                "connect_s": time.perf_counter() - t,
                "rss_kb": rss_kb(os.getpid()),
                "nofile": nofile,
            }
        )
        while (await readline()) == "check":
            emit({"event": "still", "streams_open": sum(1 for s in streams if s.usable)})
        for s in streams:
            s.close()
        await asyncio.sleep(0.2)
        emit({"event": "stopped"})
        return

    stats = Stats()
    pending = len(spec["pairs"])
    all_ready = asyncio.Event()

    def ready() -> None:
        nonlocal pending
        pending -= 1
        if pending == 0:
            all_ready.set()

    go: asyncio.Future[float] = loop.create_future()
    tasks = [
        asyncio.create_task(_run_pair(target, spec["kind"], p, stats, sem, ready, go, spec))
        for p in spec["pairs"]
    ]
    await all_ready.wait()
    emit(
        {
            "event": "ready",
            "connected": stats.connected,
            "connect_errors": dict(stats.connect_errors),
            "connect_s": time.perf_counter() - t,
        }
    )
    go.set_result(float((await readline()).split()[1]))
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    window = spec["warmup_s"] + spec["duration_s"]
    await asyncio.sleep(max(0.0, go.result() + window - time.time()))
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.wait(tasks, timeout=spec["grace_s"] + 30)
    for task in tasks:
        task.cancel()
    emit(
        {
            "event": "result",
            "ok": stats.ok,
            "late": stats.late,
            "scheduled": stats.scheduled,
            "latencies_ms": stats.latencies_ms,
            "errors": dict(stats.errors),
            "answerer_errors": dict(stats.answerer_errors),
            "connect_errors": dict(stats.connect_errors),
            "connected": stats.connected,
            "cpu_s": (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime),
            "cpu_window_s": window,
            "error_examples": _EXAMPLES,
        }
    )


def worker_entry() -> None:
    import logging

    logging.basicConfig(level=logging.CRITICAL)
    spec = msgspec.json.decode(sys.stdin.readline())
    try:
        import uvloop

        uvloop.run(_worker_main(spec))
    except ImportError:
        asyncio.run(_worker_main(spec))


# ================================================================ orchestrator


def server_pids(pid: int) -> list[int]:
    """`pid` and its descendants: a server that forks workers is measured whole."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children", encoding="ascii") as fh:
                    todo.extend(int(c) for c in fh.read().split())
    return out


def listener_pid(port: int) -> int | None:
    """The process listening on TCP `port` (from /proc/net/tcp and /proc/*/fd), if visible."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table, encoding="ascii") as fh:
            for line in list(fh)[1:]:
                f = line.split()
                if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f[9])
    wanted = {f"socket:[{i}]" for i in inodes}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{entry}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{entry}/fd/{fd}") in wanted:
                        return int(entry)
    return None


def nofile_limit(pid: int) -> str | None:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/limits", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("Max open files"):
                return " ".join(line.split()[3:5])
    return None


class Server:
    """A measured server: its URL, whether it is the bare relay, its process tree."""

    def __init__(self, label: str, url: str, pid: int | None, *, bare: bool) -> None:
        self.label, self.url, self.pid, self.bare = label, url, pid, bare

    def target(self) -> dict[str, Any]:
        return msgspec.structs.asdict(Target.of(self.url, signed=not self.bare, bare=self.bare))

    def cpu(self) -> float | None:
        if self.pid is None:
            return None
        values = [cpu_s(p) for p in server_pids(self.pid)]
        return sum(v for v in values if v is not None)

    def runq(self) -> float | None:
        """Seconds the server's main threads waited for a CPU while runnable."""
        if self.pid is None:
            return None
        values = [runq_wait_s(p) for p in server_pids(self.pid)]
        return sum(v for v in values if v is not None)

    def rss(self) -> int | None:
        if self.pid is None:
            return None
        values = [rss_kb(p) for p in server_pids(self.pid)]
        return sum(v for v in values if v is not None)


def _source_for_pair(i: int) -> str:
    return f"127.1.{i // 250}.{i % 250 + 1}"


def _source_for_idle(j: int, per_address: int = 200) -> str:
    """Idle sessions spread over addresses, below the bridge's per-address connection cap."""
    return f"127.3.0.{j // per_address + 1}"


def run_cell(
    name: str,
    kind: str,
    server: Server,
    pairs: list[dict[str, Any]],
    args: argparse.Namespace,
    logdir: Path,
    rate: float | None = None,
) -> dict[str, Any]:
    print(f"  cell {name}: {len(pairs)} pairs on {server.label} …", flush=True)
    warmup = max(args.warmup, len(pairs) / 100)
    workers = [
        Worker(
            Path(__file__).resolve(),
            {
                "role": "pairs",
                "kind": kind,
                "target": server.target(),
                "pairs": chunk,
                "warmup_s": warmup,
                "duration_s": args.duration,
                "grace_s": args.grace,
                "late_ms": args.late_ms,
                "connect_concurrency": args.connect_concurrency,
                "interval_s": len(pairs) / rate if rate else None,
            },
            logdir / f"worker-{name}-{i}.log",
        )
        for i, chunk in enumerate(chunks(pairs, args.workers))
    ]
    spy = None
    try:
        ready = [w.read(args.connect_timeout) for w in workers]
        spy = _profile(name, server, args, warmup, logdir)  # after set-up: asks only
        rss_start = server.rss()
        t0 = time.time() + 0.3
        for w in workers:
            w.send(f"go {t0}")
        measure_from, end = t0 + warmup, t0 + warmup + args.duration
        rss_peak = rss_start or 0
        cpu_from = cpu_to = runq_from = runq_to = None
        while time.time() < end + 0.2:
            now = time.time()
            if cpu_from is None and now >= measure_from:
                cpu_from, runq_from = server.cpu(), server.runq()
            if cpu_to is None and now >= end:
                cpu_to, runq_to = server.cpu(), server.runq()
            rss_peak = max(rss_peak, server.rss() or 0)
            time.sleep(min(0.25, max(0.005, (measure_from if cpu_from is None else end) - now)))
        results = [w.read(warmup + args.duration + args.grace + 90) for w in workers]
    finally:
        for w in workers:
            w.finish()
        if spy is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(60)
    latencies = sorted(x for r in results for x in r["latencies_ms"])
    errors: Counter[str] = Counter()
    answerer_errors: Counter[str] = Counter()
    connect_errors: Counter[str] = Counter()
    for r in results:
        errors.update(r["errors"])
        answerer_errors.update(r["answerer_errors"])
        connect_errors.update(r["connect_errors"])
    ok = sum(r["ok"] for r in results)
    late = sum(r["late"] for r in results)
    completed = ok + late  # open loop: a late ask was still served; the server's work counts
    server_cpu = cpu_to - cpu_from if cpu_from is not None and cpu_to is not None else None
    client_cpu = sum(r["cpu_s"] for r in results)
    cell = {
        "cell": name,
        "kind": kind,
        "server": server.label,
        "pairs": len(pairs),
        "offered_asks_per_s": rate,
        "scheduled_in_window": sum(r["scheduled"] for r in results) if rate else None,
        "connected_pairs": sum(r["connected"] for r in results),
        "connect_s": round(max(r["connect_s"] for r in ready), 2),
        "duration_s": args.duration,
        "warmup_s": warmup,
        "ok": ok,
        "late": late,
        "errors": sum(errors.values()) + sum(connect_errors.values()),
        "error_kinds": dict(errors),
        "connect_errors": dict(connect_errors),
        "answerer_errors": dict(answerer_errors),
        "error_examples": {k: v for r in results for k, v in r["error_examples"].items()},
        "asks_per_s": round(completed / args.duration, 1),
        "p50_ms": _round(percentile(latencies, 50)),
        "p99_ms": _round(percentile(latencies, 99)),
        "max_ms": _round(latencies[-1]) if latencies else None,
        "server_cpu_pct": round(100 * server_cpu / args.duration, 1)
        if server_cpu is not None
        else None,
        "server_runqueue_wait_pct": round(100 * (runq_to - runq_from) / args.duration, 1)
        if runq_from is not None and runq_to is not None
        else None,
        "server_cpu_ms_per_ask": round(1000 * server_cpu / completed, 3)
        if server_cpu is not None and completed
        else None,
        "client_processes": len(workers),
        "client_cpu_pct": round(100 * client_cpu / (warmup + args.duration), 1),
        "client_cpu_ms_per_ask": round(
            1000 * client_cpu / completed * args.duration / (warmup + args.duration), 3
        )
        if completed
        else None,
        "server_rss_kb_start": rss_start,
        "server_rss_kb_peak": rss_peak,
        "loadavg_after": list(os.getloadavg()),
    }
    if spy is not None:
        out = _profile_path(_profile_key(name, server), args)
        cell["profile"] = {**profile_summary(out), "file": str(out)}
    print(
        f"    {cell['asks_per_s']} asks/s, p50 {_fmt(cell['p50_ms'])} ms, "
        f"p99 {_fmt(cell['p99_ms'])} ms, errors {cell['errors']} {cell['error_kinds'] or ''}"
        f", server {cell['server_cpu_ms_per_ask']} ms/ask ({cell['server_cpu_pct']}% CPU, "
        f"{cell['server_runqueue_wait_pct']}% waiting for one), "
        f"client {cell['client_cpu_pct']}%",
        flush=True,
    )
    return cell


def _profile_key(name: str, server: Server) -> str:
    """`push@100` is the bridge; a peer's cell is prefixed by its label (`bare:`, `unsealed:`)."""
    return name if server.label == "bridge" else f"{server.label}:{name}"


def _profile_path(key: str, args: argparse.Namespace) -> Path:
    return args.out.parent / f"light_load-profile-{key.replace('@', '-').replace(':', '-')}.txt"


def _profile(
    name: str, server: Server, args: argparse.Namespace, warmup: float, logdir: Path
) -> subprocess.Popen[Any] | None:
    if _profile_key(name, server) not in args.profile or server.pid is None:
        return None
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out = _profile_path(_profile_key(name, server), args)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"    py-spy top-down → {out}", flush=True)
    return subprocess.Popen(
        [
            spy,
            "record",
            "-p",
            str(server.pid),
            "-d",
            str(int(warmup + args.duration + 4)),
            "-o",
            str(out),
            "--format",
            "raw",
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(logdir / f"py-spy-{name}.log", "w"),
    )


_STDLIB = frozenset(sys.stdlib_module_names)


def _frame_owner(frame: str) -> str:
    """Who a py-spy frame `func (pkg/module.py:line)` belongs to: a package, or stdlib."""
    path = frame.rpartition(" (")[2].rsplit(":", 1)[0]
    top = path.split("/", 1)[0] if "/" in path else path.removesuffix(".py")
    if top == "asyncio":
        return "asyncio"
    if top in _STDLIB or top.startswith("<"):
        return "stdlib"
    return top


def profile_summary(path: Path, top: int = 15) -> dict[str, Any]:
    """Where the sampled server CPU went, from py-spy's raw folded stacks.

    `self_pct_by_owner` gives each sample to the innermost frame that is not stdlib or
    asyncio (so json/hmac work lands on whoever called it); `inclusive_pct_by_owner`
    counts a sample once for every package on its stack, below the entry frames up to
    aiohttp's `run_app`; `top_self_pct` names the hottest innermost functions.
    """
    inclusive: Counter[str] = Counter()
    owner_self: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = 0
    with contextlib.suppress(OSError), open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            frames = [f for f in stack.split(";") if " (" in f]
            entry = max((k for k, f in enumerate(frames) if f.startswith("run_app ")), default=-1)
            frames = frames[entry + 1 :]
            total += n
            owners = [_frame_owner(f) for f in frames]
            for owner in set(owners):
                inclusive[owner] += n
            inner = next((o for o in reversed(owners) if o not in ("stdlib", "asyncio")), None)
            owner_self[inner or (owners[-1] if owners else "event loop")] += n
            leaf[frames[-1] if frames else "event loop"] += n

    def pct(counter: Counter[str], k: int | None = None) -> dict[str, float]:
        return {key: round(100 * v / total, 1) for key, v in counter.most_common(k)}

    if not total:
        return {"samples": 0}
    return {
        "samples": total,
        "self_pct_by_owner": pct(owner_self),
        "inclusive_pct_by_owner": pct(inclusive),
        "top_self_pct": pct(leaf, top),
    }


def _round(v: float | None, digits: int = 3) -> float | None:
    return None if v is None else round(v, digits)


def _fmt(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def run_idle(
    server: Server,
    agents: list[dict[str, str]],
    pairs: list[dict[str, Any]],
    args: argparse.Namespace,
    logdir: Path,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Connect the idle sessions, measure RSS, run `push` among them, let them go."""
    print(f"  idle: opening {len(agents)} sessions with GET streams …", flush=True)
    time.sleep(1.0)
    rss_before, cpu_before = server.rss(), server.cpu()
    t = time.perf_counter()
    workers = [
        Worker(
            Path(__file__).resolve(),
            {
                "role": "idle",
                "target": server.target(),
                "agents": chunk,
                "connect_concurrency": args.connect_concurrency,
            },
            logdir / f"idle-{i}.log",
        )
        for i, chunk in enumerate(chunks(agents, args.idle_workers))
    ]
    cells: list[dict[str, Any]] = []
    try:
        readies = [w.read(args.connect_timeout) for w in workers]
        connect_s = time.perf_counter() - t
        cpu_after = server.cpu()
        time.sleep(2.0)
        rss_after = server.rss()
        counts: Counter[str] = Counter()
        for r in readies:
            counts.update(r["counts"])
        connected = counts.pop("connected", 0)
        info: dict[str, Any] = {
            "requested": len(agents),
            "connected": connected,
            "streams_open": sum(r["streams_open"] for r in readies),
            "errors": dict(counts),
            "error_examples": {k: v for r in readies for k, v in r["error_examples"].items()},
            "connect_s": round(connect_s, 1),
            "server_rss_kb_before": rss_before,
            "server_rss_kb_with_idle": rss_after,
            "server_kb_per_session": round((rss_after - rss_before) / connected, 1)
            if connected and rss_after and rss_before
            else None,
            "projected_server_rss_mb_at_10000": round(
                (rss_before + (rss_after - rss_before) / connected * 10_000) / 1024, 1
            )
            if connected and rss_after and rss_before
            else None,
            "server_cpu_ms_per_session_setup": round(1000 * (cpu_after - cpu_before) / connected, 2)
            if connected and cpu_after is not None and cpu_before is not None
            else None,
            "client_rss_kb": [r["rss_kb"] for r in readies],
            "client_nofile": [r["nofile"] for r in readies],
            "server_nofile": nofile_limit(server.pid) if server.pid else None,
        }
        print(
            f"    {connected} sessions in {connect_s:.1f} s, server RSS {rss_before} → "
            f"{rss_after} kB, errors {info['errors'] or 0}",
            flush=True,
        )
        cells.append(run_cell(f"idle+push@{len(pairs)}", "push", server, pairs, args, logdir))
        for w in workers:
            w.send("check")
        info["streams_open_after_cell"] = sum(w.read(60)["streams_open"] for w in workers)
        info["server_rss_kb_after_cell"] = server.rss()
    finally:
        for w in workers:
            with contextlib.suppress(OSError):
                w.send("stop")
            w.finish()
    return info, cells


# ================================================================ targets (issue 11)


def _target(
    text: str, cell: str, value: float | None, limit: float, peer: float | None = None
) -> dict[str, Any]:
    above = text.lstrip().startswith("≥")
    met = None if value is None else (value >= limit if above else value <= limit)
    return {"target": text, "cell": cell, "value": value, "peer": peer, "met": met}


def judge(cells: list[dict[str, Any]], idle: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 11's performance targets, and issue 13's sealing budget when the unsealed peer
    ran, one row per (target, cell), met or missed."""
    bare = {
        (c["kind"], c["pairs"], c["offered_asks_per_s"]): c for c in cells if c["server"] == "bare"
    }
    unsealed = {c["cell"]: c for c in cells if c["server"] == "unsealed"}
    plain = {c["cell"]: c for c in cells if c["server"] == "bridge"}
    out: list[dict[str, Any]] = []
    for c in cells:
        if c["server"] != "bridge":
            continue
        peer_unsealed = unsealed.get(c["cell"])
        if peer_unsealed is not None:
            base_ms, ms = peer_unsealed["server_cpu_ms_per_ask"], c["server_cpu_ms_per_ask"]
            extra = round(100 * (ms / base_ms - 1), 1) if ms and base_ms else None
            out.append(_target("sealing ≤ +10 % CPU/ask", c["cell"], extra, 10, base_ms))
        peer = bare.get((c["kind"], c["pairs"], c["offered_asks_per_s"]))
        ms, name = c["server_cpu_ms_per_ask"], c["cell"]
        closed = not c["offered_asks_per_s"] and not name.startswith("idle+")
        if closed and c["kind"] in ("push", "modern") and 40 <= c["pairs"] <= 100:
            bare_ms = peer["server_cpu_ms_per_ask"] if peer else None
            out.append(_target("server CPU/ask ≤ 0.5 ms", name, ms, 0.5, bare_ms))
            if peer is not None or c["kind"] == "push":
                ratio = round(ms / bare_ms, 2) if ms and bare_ms else None
                out.append(_target("CPU/ask ≤ 0.25x bare relay", name, ratio, 0.25, bare_ms))
            out.append(
                _target(
                    "≥ 1,500 asks/s",
                    name,
                    c["asks_per_s"],
                    1500,
                    peer["asks_per_s"] if peer else None,
                )
            )
        if c["offered_asks_per_s"]:
            out.append(
                _target("open loop p50 ≤ 3 ms", name, c["p50_ms"], 3, peer and peer["p50_ms"])
            )
            out.append(
                _target("open loop p99 ≤ 20 ms", name, c["p99_ms"], 20, peer and peer["p99_ms"])
            )
        if c["kind"] == "legacy":
            out.append(_target("legacy CPU/ask ≤ 0.6 ms", name, ms, 0.6))
        if name.startswith("idle+"):
            base = plain.get(name.removeprefix("idle+"))
            base_ms = base["server_cpu_ms_per_ask"] if base else None
            ratio = round(ms / base_ms, 2) if ms and base_ms else None
            out.append(_target("CPU/ask with idle ≤ 1.2x without", name, ratio, 1.2, base_ms))
        out.append(_target("zero errors", name, c["errors"], 0, peer["errors"] if peer else None))
    if idle.get("server_rss_kb_with_idle"):
        mb = round(idle["server_rss_kb_with_idle"] / 1024, 1)
        row = _target(f"RSS with {idle['requested']} idle ≤ 600 MB", "idle", mb, 600)
        if idle["connected"] < 10_000:
            row["met"] = None  # fewer than the 10,000 sessions: not judged
        out.append(row)
        if idle["connected"] < 10_000 and idle.get("projected_server_rss_mb_at_10000"):
            projected = idle["projected_server_rss_mb_at_10000"]
            out.append(_target("projected RSS at 10,000 ≤ 600 MB", "idle", projected, 600))
    return out


def _print_report(
    cells: list[dict[str, Any]], idle: dict[str, Any], targets: list[dict[str, Any]]
) -> None:
    headers = [
        "cell",
        "server",
        "pairs",
        "asks/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "ok",
        "errors",
        "srv ms/ask",
        "srv cpu%",
        "srv runq%",
        "cli cpu%",
        "cli procs",
        "srv RSS MB",
    ]
    rows = [
        [
            c["cell"],
            c["server"],
            c["pairs"],
            c["asks_per_s"],
            _fmt(c["p50_ms"]),
            _fmt(c["p99_ms"]),
            _fmt(c["max_ms"], 1),
            c["ok"],
            c["errors"],
            _fmt(c["server_cpu_ms_per_ask"], 3),
            c["server_cpu_pct"],
            c.get("server_runqueue_wait_pct"),
            c["client_cpu_pct"],
            c["client_processes"],
            _fmt((c["server_rss_kb_peak"] or 0) / 1024, 1),
        ]
        for c in cells
    ]
    print()
    print(format_table(headers, rows))
    if idle:
        print(
            f"\nidle: {idle['connected']}/{idle['requested']} sessions with GET streams in "
            f"{idle['connect_s']} s ({idle.get('streams_open_after_cell')} streams still open "
            f"after the cell); server RSS {idle['server_rss_kb_before']} → "
            f"{idle['server_rss_kb_with_idle']} kB ({idle['server_kb_per_session']} kB/session); "
            f"server setup {idle['server_cpu_ms_per_session_setup']} ms CPU/session; "
            f"server nofile {idle['server_nofile']}; errors {idle['errors'] or 0}"
        )
    for c in cells:
        if c["errors"] or c["answerer_errors"]:
            print(
                f"  {c['cell']} ({c['server']}): errors {c['error_kinds']} connect "
                f"{c['connect_errors']} answerer {c['answerer_errors']}"
            )
            for kind, text in c["error_examples"].items():
                print(f"    {kind}: {text}")
    print()
    print(
        format_table(
            ["target", "cell", "value", "bare / baseline", "met"],
            [
                [
                    t["target"],
                    t["cell"],
                    t["value"],
                    t["peer"],
                    {True: "met", False: "MISSED", None: "not judged"}[t["met"]],
                ]
                for t in targets
            ],
        )
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--cells",
        nargs="+",
        choices=["push", "modern", "legacy", "open", "idle"],
        default=["push", "modern", "legacy", "open", "idle"],
    )
    p.add_argument("--pairs", type=int, nargs="+", default=[40, 100], help="closed-loop pairs")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per cell")
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds (≥ pairs/100)")
    p.add_argument(
        "--grace", type=float, default=ASK_TIMEOUT_S + 5, help="seconds after the window"
    )
    p.add_argument("--open-rate", type=float, default=500.0, help="asks/s offered (open loop)")
    p.add_argument("--open-pairs", type=int, default=100)
    p.add_argument("--late-ms", type=float, default=100.0, help="open loop: later is an error")
    p.add_argument("--idle", type=int, default=10_000, help="idle sessions with GET streams")
    p.add_argument("--idle-pairs", type=int, default=40, help="pairs asking among them")
    p.add_argument("--idle-workers", type=int, default=4, help="client processes holding them")
    p.add_argument("--workers", type=int, default=2, help="client processes per pair cell")
    p.add_argument("--connect-concurrency", type=int, default=64, help="per client process")
    p.add_argument("--connect-timeout", type=float, default=600.0)
    p.add_argument(
        "--bridge-url",
        help="measure this running bridge (base URL, e.g. http://127.0.0.1:8765) instead of "
        "starting one; needs --admin-token to register the benchmark's agents",
    )
    p.add_argument("--admin-token", default=os.environ.get("LIGHTHOUSE_ADMIN_TOKEN"))
    p.add_argument(
        "--server-pid",
        type=int,
        help="process of --bridge-url (default: whoever listens on its port)",
    )
    p.add_argument("--no-bare", action="store_true", help="skip the bare relay peer")
    p.add_argument(
        "--unsealed-peer",
        action="store_true",
        help="also run every closed-loop cell on a second bridge with encryption at rest "
        "off (benchmarks/_unsealed_bridge.py): what sealing costs an ask, same run",
    )
    p.add_argument(
        "--profile",
        nargs="*",
        default=[],
        metavar="CELL",
        help="py-spy record the server during these cells (e.g. push@100, bare:push@100, "
        "unsealed:push@100); raw folded stacks land beside --out, a summary in the cell's JSON",
    )
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    args = p.parse_args(argv)
    if args.bridge_url and not args.admin_token:
        p.error("--bridge-url needs --admin-token (or LIGHTHOUSE_ADMIN_TOKEN)")

    from tests.harness import BridgeProcess, free_port

    client_nofile = _raise_nofile()  # inherited by the servers started here
    workdir = Path(tempfile.mkdtemp(prefix="light-load-"))
    logdir = workdir / "logs"
    logdir.mkdir()
    idle_n = args.idle if "idle" in args.cells else 0
    max_pairs = max(
        [
            *args.pairs,
            args.open_pairs if "open" in args.cells else 0,
            args.idle_pairs if idle_n else 0,
        ]
    )
    serve_args = (
        *("--rate", "1000000", "--burst", "1000000"),
        *("--ip-rate", "1000000", "--ip-burst", "1000000"),
        *("--max-sessions", str(idle_n + 2 * max_pairs + 1000)),
        *("--guard-p99-ms", "60000"),
    )
    bridge: Any = None
    unsealed_bridge: Any = None
    bare_proc: subprocess.Popen[Any] | None = None
    cells: list[dict[str, Any]] = []
    idle_info: dict[str, Any] = {}
    started = time.time()
    try:
        if args.bridge_url:
            base = args.bridge_url.rstrip("/")
            pid = args.server_pid or listener_pid(urlsplit(base).port or 80)
            ours = Server("bridge", base + "/mcp", pid, bare=False)
            token = args.admin_token
            print(f"bridge at {base} (pid {pid}; CPU unmeasured if None)", flush=True)
        else:
            bridge = BridgeProcess(workdir, extra_args=serve_args).start()
            ours = Server("bridge", bridge.mcp_url, bridge.proc.pid, bare=False)
            base, token = bridge.url, bridge.admin_token
            print(f"bridge pid {ours.pid} on {base} (durable store {bridge.db})", flush=True)
        unsealed: Server | None = None
        if args.unsealed_peer and not args.bridge_url:
            # `python -m benchmarks._unsealed_bridge` runs in the bridge's work directory
            path = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
            os.environ["PYTHONPATH"] = os.pathsep.join(path)
            unsealed_bridge = BridgeProcess(
                workdir / "unsealed", extra_args=serve_args, module="benchmarks._unsealed_bridge"
            )
            unsealed_bridge.workdir.mkdir()
            unsealed_bridge.start()
            pid = unsealed_bridge.proc.pid
            unsealed = Server("unsealed", unsealed_bridge.mcp_url, pid, bare=False)
            print(f"unsealed bridge pid {pid} on {unsealed_bridge.url}", flush=True)
        bare: Server | None = None
        if not args.no_bare and {"push", "open"} & set(args.cells):
            port = free_port()
            bare_proc = subprocess.Popen(
                [
                    sys.executable,
                    str(REPO / "benchmarks" / "_bare_relay.py"),
                    "--json-response",
                    *("--port", str(port)),
                ],
                stdout=open(logdir / "bare.log", "w"),  # noqa: SIM115
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
            wait_http(f"http://127.0.0.1:{port}/", bare_proc)
            bare = Server("bare", f"http://127.0.0.1:{port}/mcp", bare_proc.pid, bare=True)
            print(f"bare relay pid {bare.pid} on {bare.url}", flush=True)

        t = time.perf_counter()
        # Agents per kind: a 2026-07-28 answerer stays "reachable" on the bridge for a while
        # after its last call, so a later cell must not reuse its name.
        kinds = [k for k in ("push", "modern", "legacy") if k in args.cells or k == "push"]
        names = [f"ll-{k}-{r}{i}" for k in kinds for r in ("ask", "ans") for i in range(max_pairs)]
        names += [f"ll-idle{j}" for j in range(idle_n)]
        creds = {ours.label: register_agents(base, token, names)}
        if unsealed is not None:
            names_closed = [n for n in names if not n.startswith("ll-idle")]
            creds[unsealed.label] = register_agents(
                unsealed_bridge.url, unsealed_bridge.admin_token, names_closed
            )
        print(f"registered {len(names)} agents in {time.perf_counter() - t:.1f} s", flush=True)

        def pair_list(n: int, server: Server, kind: str = "push") -> list[dict[str, Any]]:
            def who(name: str) -> dict[str, str]:
                if server.bare:
                    return {"name": name, "key_id": "", "secret": ""}
                return creds[server.label][name]

            return [
                {
                    "asker": who(f"ll-{kind}-ask{i}"),
                    "answerer": who(f"ll-{kind}-ans{i}"),
                    "source": _source_for_pair(i),
                }
                for i in range(n)
            ]

        def cell(kind: str, n: int, server: Server, rate: float | None = None) -> None:
            name = f"open@{rate:g}rps" if rate else f"{kind}@{n}"
            cells.append(
                run_cell(name, kind, server, pair_list(n, server, kind), args, logdir, rate)
            )

        for n in args.pairs:
            print(f"{n} pairs", flush=True)
            for kind in ("push", "modern", "legacy"):
                if kind in args.cells:
                    cell(kind, n, ours)
                    if unsealed is not None:
                        cell(kind, n, unsealed)
                    if kind == "push" and bare is not None:
                        cell(kind, n, bare)
        if "open" in args.cells:
            print(f"open loop, {args.open_rate:g} asks/s offered", flush=True)
            cell("push", args.open_pairs, ours, args.open_rate)
            if bare is not None:
                cell("push", args.open_pairs, bare, args.open_rate)
        if idle_n:
            if not any(
                c["cell"] == f"push@{args.idle_pairs}" and c["server"] == "bridge" for c in cells
            ):
                cell("push", args.idle_pairs, ours)  # the baseline without idle sessions
            idle_agents = [
                {**creds[ours.label][f"ll-idle{j}"], "source": _source_for_idle(j)}
                for j in range(idle_n)
            ]
            idle_info, idle_cells = run_idle(
                ours, idle_agents, pair_list(args.idle_pairs, ours), args, logdir
            )
            cells.extend(idle_cells)
    finally:
        if bare_proc is not None and bare_proc.poll() is None:
            bare_proc.terminate()
            try:
                bare_proc.wait(15)
            except subprocess.TimeoutExpired:
                bare_proc.kill()
                bare_proc.wait(5)
        for b in (bridge, unsealed_bridge):
            if b is not None and b.proc is not None:
                proc = b.proc
                try:
                    print(f"bridge exited with {b.stop(timeout=30)}", flush=True)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)

    targets = judge(cells, idle_info)
    _print_report(cells, idle_info, targets)
    payload = {
        "benchmark": "light_load",
        "machine": machine_info(
            ["lighthouse-bridge", "mcp", "aiohttp", "uvicorn", "uvloop", "msgspec"], repo=REPO
        ),
        "config": {
            "cells": args.cells,
            "pairs": args.pairs,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "grace_s": args.grace,
            "open_rate": args.open_rate,
            "open_pairs": args.open_pairs,
            "late_ms": args.late_ms,
            "idle": idle_n,
            "idle_pairs": args.idle_pairs,
            "workers": args.workers,
            "idle_workers": args.idle_workers,
            "bridge_url": args.bridge_url,
            "serve_args": None if args.bridge_url else list(serve_args),
            "ask_timeout_s": ASK_TIMEOUT_S,
            "client_nofile": client_nofile,
        },
        "cells": cells,
        "idle": idle_info,
        "targets": targets,
        "wall_s": round(time.time() - started, 1),
    }
    write_json(args.out, payload)
    print(f"wrote {args.out}")
    if args.keep:
        print(f"work directory kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if "--worker" in sys.argv[1:]:
        worker_entry()
    else:
        sys.exit(main())
