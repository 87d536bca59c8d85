"""A TCP proxy the test controls, between a client and a server it must not disturb.

`cut()` drops every live connection and refuses new ones (the server looks unreachable);
`restore()` accepts again on the same port. `stall()` is the silent drop: connections stay
open, new ones are accepted, and nothing is forwarded any more, either way. The shared
PostgreSQL is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self._stalled = False

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._stalled:  # accepted, never answered
            self._links.add(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._links.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    if self._stalled:
                        continue  # swallowed: the peer waits for an answer that never comes
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._links.difference_update((writer, up_writer))

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for link in list(self._links):
            link.transport.abort()
        self._links.clear()

    def stall(self) -> None:
        self._stalled = True

    async def restore(self) -> None:
        self._stalled = False
        await self.start()

    async def close(self) -> None:
        await self.cut()
