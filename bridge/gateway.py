"""`lighthouse mcp`: a stdio MCP gateway for hosts that cannot sign requests.

A host (an IDE agent) starts `lighthouse mcp --agent NAME` as a plain stdio MCP server. The
gateway holds the agent's key and talks to the bridge as that agent over signed Streamable
HTTP: the bridge's tools are offered to the host under the same names and schemas and every
call is forwarded unchanged; questions the bridge pushes (`elicitation/create`) are put to
the host and its answer goes back to the bridge.

Order matters. The bridge routes an `ask` by what the recipient's session declared, and a
session declares its capabilities once, at initialize. So the gateway serves the host's
handshake first and opens its bridge session only after the host's `initialized`,
declaring elicitation exactly when the host did; a host without it gets its questions from
the legacy mailbox (`wait_for_messages` + `respond`). Before it touches stdio the gateway
checks the key with one session-less request (the 2026-07-28 single exchange), which also
fetches the tool list: a wrong key or an unreachable bridge is one line on stderr and a
non-zero exit instead of a host that hangs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp.client import Client
from mcp.client.context import ClientRequestContext
from mcp.client.session import ElicitationFnT
from mcp.client.streamable_http import streamable_http_client
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.runner import serve_loop
from mcp.server.session import ServerSession
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError
from mcp_types.jsonrpc import CONNECTION_CLOSED

from security import LighthouseAuth, decode_secret

from .config import env_url

log = logging.getLogger("lighthouse.gateway")

# the exit codes of `bridge.cli` (not imported: under `python -m bridge.cli` that module is
# `__main__`, and a second copy's exception class would not be the one `main` catches)
EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3

SINGLE_EXCHANGE = "2026-07-28"
READ_TIMEOUT_S = 3900.0  # outlasts the longest ask (1 h) a pending elicitation may wait for
CONNECT_WAIT_S = 30.0  # how long a tool call waits for the bridge session to come (back) up
RETRY_MAX_S = 30.0
PING_S, PING_TIMEOUT_S = 30.0, 15.0  # notice a bridge that restarted while the host idles
SHUTDOWN_S = 5.0

try:
    VERSION = metadata.version("lighthouse-bridge")
except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
    VERSION = "0"


class _OneLine(logging.Filter):
    """Hosts show a server's stderr line by line: a traceback would read as a dozen errors.
    Below DEBUG, a record with an exception keeps one line naming it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and not logging.getLogger().isEnabledFor(logging.DEBUG):
            error = record.exc_info[1]
            record.msg, record.args = f"{record.getMessage()}: {error!r}", None
            record.exc_info = record.exc_text = None
        return True


def _quiet_sdk() -> None:
    """At shutdown the SDK reports messages still in flight (a cancelled call's late
    response) as errors; they are expected then, so only DEBUG shows them."""
    if not logging.getLogger().isEnabledFor(logging.DEBUG):
        logging.getLogger("mcp").setLevel(logging.CRITICAL)


class GatewayError(Exception):
    """An expected failure: one line on stderr and this exit code, never a traceback."""

    def __init__(self, message: str, code: int = EXIT_FAIL) -> None:
        super().__init__(message)
        self.code = code


def _fail(message: str) -> None:
    """One line on stderr: hosts show a server's stderr as its log."""
    print(f"lighthouse mcp: {message}", file=sys.stderr, flush=True)


# -- credentials -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Credentials:
    agent: str
    key_id: str
    secret: str = field(repr=False)  # never printed, logged or put in an error


def load_credentials(agent: str, path: str | None) -> Credentials:
    """The agent's key from `--credentials FILE` or LIGHTHOUSE_KEY_ID / LIGHTHOUSE_SECRET.

    The file is the JSON `lighthouse agents add` prints; its `agent` must match `--agent`,
    so a host configured with the wrong file fails here rather than acting as someone else.
    """
    if path:
        try:
            data = json.loads(Path(path).read_text())
        except OSError as exc:
            raise GatewayError(
                f"cannot read credentials file {path}: {exc.strerror}", EXIT_USAGE
            ) from None
        except ValueError:
            raise GatewayError(
                f"credentials file {path} is not JSON (expected the output of "
                "`lighthouse agents add`)",
                EXIT_USAGE,
            ) from None
        fields = ("agent", "key_id", "secret")
        if not isinstance(data, dict) or not all(
            isinstance(data.get(k), str) and data[k] for k in fields
        ):
            raise GatewayError(
                f"credentials file {path} needs the fields agent, key_id and secret", EXIT_USAGE
            )
        if data["agent"] != agent:
            raise GatewayError(
                f"credentials file {path} is for agent {data['agent']!r}, not {agent!r}",
                EXIT_USAGE,
            )
        key_id, secret = data["key_id"], data["secret"]
    else:
        key_id = os.environ.get("LIGHTHOUSE_KEY_ID", "")
        secret = os.environ.get("LIGHTHOUSE_SECRET", "")
        if not key_id or not secret:
            raise GatewayError(
                f"no credentials for agent {agent!r}: pass --credentials FILE (the JSON from "
                "`lighthouse agents add`) or set LIGHTHOUSE_KEY_ID and LIGHTHOUSE_SECRET",
                EXIT_USAGE,
            )
    try:
        decode_secret(secret)
    except ValueError as exc:  # the message names the problem, never the value
        raise GatewayError(
            f"the secret for agent {agent!r} is malformed: {exc}", EXIT_USAGE
        ) from None
    return Credentials(agent, key_id, secret)


def mcp_endpoint(url: str) -> str:
    """`--url` is the bridge's base URL (like LIGHTHOUSE_URL); `.../mcp` is accepted too."""
    url = url.rstrip("/")
    return url if url.endswith("/mcp") else url + "/mcp"


# -- the signed client to the bridge -----------------------------------------------------


class _Refusals:
    """The bridge's last HTTP refusal. The SDK reports a 401 as a bare internal error; the
    bridge's JSON body names the reason (unknown key, bad signature, ...)."""

    def __init__(self) -> None:
        self.last: str | None = None

    async def hook(self, response: httpx2.Response) -> None:
        if response.status_code not in (401, 403, 429):
            return
        await response.aread()
        try:
            body = response.json()
        except ValueError:
            body = None
        reason = body.get("reason") if isinstance(body, dict) else None
        self.last = f"HTTP {response.status_code}" + (f" {reason}" if reason else "")


@asynccontextmanager
async def bridge_client(
    url: str,
    creds: Credentials,
    refusals: _Refusals,
    *,
    mode: str,
    elicitation_callback: ElicitationFnT | None = None,
) -> AsyncIterator[Client]:
    """Like `bridge.client.connect`, plus the refusal hook, and the HTTP client is closed."""
    http = httpx2.AsyncClient(
        auth=LighthouseAuth(creds.key_id, creds.secret),
        timeout=httpx2.Timeout(30.0, read=READ_TIMEOUT_S),
        event_hooks={"response": [refusals.hook]},
    )
    client = Client(
        streamable_http_client(url, http_client=http),
        mode=mode,
        elicitation_callback=elicitation_callback,
        client_info=types.Implementation(name="lighthouse-gateway", version=VERSION),
    )
    async with http, client:
        yield client


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def describe(exc: BaseException, url: str, creds: Credentials, refusals: _Refusals) -> GatewayError:
    """One sentence for a failed bridge exchange (the SDK nests errors in task groups)."""
    if refusals.last is not None:
        return GatewayError(
            f"the bridge at {url} refused agent {creds.agent!r} (key {creds.key_id}): "
            f"{refusals.last}; check the credentials or run `lighthouse agents rotate-key`",
            EXIT_FAIL,
        )
    leaves = _leaves(exc)
    for leaf in leaves:
        if isinstance(leaf, httpx2.TransportError | OSError):
            return GatewayError(f"cannot reach the bridge at {url}: {leaf}", EXIT_UNAVAILABLE)
    leaf = leaves[0]
    if isinstance(leaf, MCPError):
        return GatewayError(f"the bridge at {url} answered with an error: {leaf}", EXIT_FAIL)
    return GatewayError(f"talking to the bridge at {url} failed: {type(leaf).__name__}: {leaf}")


async def preflight(url: str, creds: Credentials) -> list[types.Tool]:
    """Check the key and fetch the tool list with session-less requests, so nothing shows
    on the bridge as this agent's session before the host has said what it can do."""
    refusals = _Refusals()
    try:
        async with bridge_client(url, creds, refusals, mode=SINGLE_EXCHANGE) as client:
            tools: list[types.Tool] = []
            cursor: str | None = None
            while True:
                page = await client.list_tools(cursor=cursor)
                tools.extend(page.tools)
                cursor = page.next_cursor
                if not cursor:
                    return tools
    except Exception as exc:
        raise describe(exc, url, creds, refusals) from None


# -- the gateway ---------------------------------------------------------------------------


def _error_result(text: str) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=f"lighthouse gateway: {text}")],
        is_error=True,
    )


def _host_elicits(session: ServerSession) -> bool:
    """Form elicitation, as the bridge sends it. An empty `elicitation: {}` means form."""
    caps = session.client_capabilities
    el = caps.elicitation if caps is not None else None
    return el is not None and (el.form is not None or el.url is None)


def _retriable(exc: BaseException) -> bool:
    """Failures where the request certainly did not run, so resending it is safe: the
    bridge lost the session (restart: 404) or refused the connection outright."""
    for leaf in _leaves(exc):
        if isinstance(leaf, MCPError) and leaf.error.message == "Session terminated":
            return True
        if isinstance(leaf, httpx2.ConnectError):
            return True
    return False


class Gateway:
    """One host on stdio, one agent session on the bridge.

    The bridge session is opened after the host's `initialized` (see the module docstring)
    and re-opened when the bridge loses it (restart), with backoff.
    """

    def __init__(self, url: str, creds: Credentials, tools: list[types.Tool]) -> None:
        self.url = url
        self.creds = creds
        self.tools = tools
        self.host: ServerSession | None = None
        self.failure: str | None = None
        self._host_ready = anyio.Event()
        self._upstream: Client | None = None
        self._changed = anyio.Event()  # set (and replaced) whenever `_upstream` changes
        self._wake = anyio.Event()  # the session was lost, or we are stopping
        self._stopping = False
        self.stopped = anyio.Event()
        self.server: Server[Any] = Server(
            "lighthouse-gateway",
            version=VERSION,
            instructions=(
                f"Lighthouse coordination bridge, as agent {creds.agent!r}: ask other agents "
                "questions (ask), answer theirs (wait_for_messages + respond), send messages."
            ),
            on_list_tools=self._list_tools,
            on_call_tool=self._call_tool,
        )
        self.server.add_notification_handler(
            "notifications/initialized", types.NotificationParams, self._initialized
        )

    # -- host side -------------------------------------------------------------------------

    async def _initialized(
        self, ctx: ServerRequestContext[Any], _: types.NotificationParams
    ) -> None:
        if self.host is None:
            self.host = ctx.session
            self._host_ready.set()

    async def _list_tools(
        self, ctx: ServerRequestContext[Any], _: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=self.tools)

    async def _call_tool(
        self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        """Forward unchanged: the bridge's result, or its JSON-RPC error as ours."""
        if self.host is None:  # a host that skipped `initialized`; its capabilities are known
            self.host = ctx.session
            self._host_ready.set()
        for attempt in (1, 2):
            client = await self._connected()
            if client is None:
                return _error_result(self.failure or "not connected to the bridge")
            try:
                return await client.call_tool(params.name, params.arguments)
            except Exception as exc:
                if attempt == 1 and _retriable(exc):
                    self._lose(client)
                    continue
                if isinstance(exc, MCPError) and exc.code == CONNECTION_CLOSED:
                    # the call may or may not have run: say so rather than resend it
                    self._lose(client)
                    return _error_result(
                        "lost the connection to the bridge during this call; reconnecting"
                    )
                if isinstance(exc, MCPError):
                    raise
                message = describe(exc, self.url, self.creds, _Refusals())
                log.warning("%s failed: %s", params.name, message)
                return _error_result(str(message))
        raise AssertionError("unreachable")

    async def _elicit(
        self, context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        """The bridge's question, put to the host; its answer (or error) goes back as is.
        An error makes the bridge move the request to the legacy mailbox: nothing is lost."""
        assert self.host is not None  # the bridge session opens after the host's
        try:
            return await self.host.send_request(
                types.ElicitRequest(params=params), types.ElicitResult
            )
        except MCPError as exc:
            return exc.error
        except Exception as exc:
            return types.ErrorData(code=types.INTERNAL_ERROR, message=f"host did not answer: {exc}")

    # -- bridge side -----------------------------------------------------------------------

    async def _connected(self) -> Client | None:
        with anyio.move_on_after(CONNECT_WAIT_S):
            while self._upstream is None and not self._stopping:
                await self._changed.wait()
        return self._upstream

    def _set_upstream(self, client: Client | None) -> None:
        self._upstream = client
        self._changed.set()
        self._changed = anyio.Event()

    def _lose(self, client: Client) -> None:
        if self._upstream is client:
            self._set_upstream(None)
            self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        self._changed.set()

    async def _hold(self, client: Client) -> None:
        """Until the session is lost or we stop. An idle host makes no calls, so a ping
        now and then notices a bridge that restarted (and forgot the session) in time to
        be online again for the next push."""
        while not self._wake.is_set():
            with anyio.move_on_after(PING_S):
                await self._wake.wait()
                return
            try:
                with anyio.fail_after(PING_TIMEOUT_S):
                    await client.session.send_ping()  # Client's warns: ping is legacy-only
            except Exception as exc:
                log.warning(
                    "lost the bridge session (%s); reconnecting", str(exc) or type(exc).__name__
                )
                return

    async def run_upstream(self) -> None:
        """Hold the agent's bridge session for as long as the host is connected."""
        try:
            await self._host_ready.wait()
            assert self.host is not None
            elicits = _host_elicits(self.host)
            delay = 1.0
            while not self._stopping:
                refusals = _Refusals()
                self._wake = anyio.Event()
                try:
                    async with bridge_client(
                        self.url,
                        self.creds,
                        refusals,
                        mode="legacy",
                        elicitation_callback=self._elicit if elicits else None,
                    ) as client:
                        log.info(
                            "connected to %s as %s (elicitation %s)",
                            self.url,
                            self.creds.agent,
                            "forwarded" if elicits else "off: legacy mailbox",
                        )
                        if self.failure is not None:
                            _fail(f"connected to the bridge at {self.url} again")
                        self.failure, delay = None, 1.0
                        self._set_upstream(client)
                        await self._hold(client)
                        self._set_upstream(None)
                except Exception as exc:
                    self._set_upstream(None)
                    message = str(describe(exc, self.url, self.creds, refusals))
                    if message != self.failure:
                        _fail(f"{message} (retrying)")
                    self.failure = message
                if not self._stopping:
                    with anyio.move_on_after(delay):
                        await _wait_until(lambda: self._stopping, self._changed)
                    delay = min(delay * 2, RETRY_MAX_S)
        finally:
            self.stopped.set()


async def _wait_until(done: Any, changed: anyio.Event) -> None:
    while not done():
        await changed.wait()


async def serve(url: str, creds: Credentials) -> None:
    """Serve one host on stdin/stdout until stdin closes."""
    tools = await preflight(url, creds)
    gateway = Gateway(url, creds, tools)
    async with AsyncExitStack() as stack:
        read, write = await stack.enter_async_context(stdio_server())
        async with anyio.create_task_group() as tg:
            tg.start_soon(gateway.run_upstream)
            try:
                await serve_loop(
                    gateway.server,
                    read,
                    write,
                    lifespan_state={},
                    init_options=gateway.server.create_initialization_options(),
                )
            finally:
                # Leave the bridge session properly (DELETE), so the bridge stops routing
                # pushes to it at once; bounded, then cut.
                gateway.stop()
                _quiet_sdk()
                with anyio.move_on_after(SHUTDOWN_S, shield=True):
                    await gateway.stopped.wait()
                tg.cancel_scope.cancel()


# -- command line ----------------------------------------------------------------------------


def cmd_mcp(args: argparse.Namespace) -> int:
    for handler in logging.getLogger().handlers:
        handler.addFilter(_OneLine())
    try:
        creds = load_credentials(args.agent, args.credentials)
        anyio.run(serve, mcp_endpoint(args.url or env_url()), creds)
    except GatewayError as exc:
        _fail(str(exc))
        return exc.code
    return EXIT_OK


def add_commands(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "mcp",
        help="stdio MCP gateway for hosts that cannot sign requests",
        description="Serve MCP on stdin/stdout for a host (an IDE agent) and talk to the "
        "bridge as AGENT with signed requests. The key comes from --credentials FILE (the "
        "JSON `lighthouse agents add` prints) or LIGHTHOUSE_KEY_ID and LIGHTHOUSE_SECRET.",
    )
    p.add_argument("--agent", required=True, help="the agent this host acts as")
    p.add_argument("--url", help="bridge URL (default: LIGHTHOUSE_URL or http://127.0.0.1:8765)")
    p.add_argument("--credentials", metavar="FILE", help="JSON from `lighthouse agents add`")
    p.set_defaults(func=cmd_mcp)
