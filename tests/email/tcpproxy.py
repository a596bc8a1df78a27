"""A tiny TCP proxy for fault injection: forwards to a server and can cut connections.

``cut_after`` cuts every connection once that many bytes went from the server to the client
(counted from when it was set); :meth:`TcpProxy.cut` cuts them all now.
"""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.cut_after: int | None = None
        self.downstream_bytes = 0
        self.cuts = 0
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut_after_bytes(self, count: int) -> None:
        self.downstream_bytes = 0
        self.cut_after = count

    def cut(self) -> None:
        """Abort every connection (RST) now."""
        for w in list(self._writers):
            transport = w.transport
            with contextlib.suppress(Exception):
                transport.abort()
        if self._writers:
            self.cuts += 1
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, downstream: bool) -> None:
            try:
                while data := await src.read(16384):
                    if downstream:
                        self.downstream_bytes += len(data)
                        if self.cut_after is not None and self.downstream_bytes >= self.cut_after:
                            dst.write(data[: max(0, len(data) // 2)])
                            self.cut()
                            return
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))
        self._writers.discard(writer)
        self._writers.discard(up_writer)
