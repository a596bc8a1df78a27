"""What the emulators share: serving an aiohttp app on loopback, an outgoing HTTP session for
the webhooks they send, and stopping both (with their background tasks)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiohttp import web


class EmulatorServer:
    port: int
    _runner: web.AppRunner | None
    _session: aiohttp.ClientSession | None
    _tasks: set[asyncio.Task[Any]]

    async def _serve(self, app: web.Application) -> None:
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self._session = aiohttp.ClientSession()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._session:
            await self._session.close()
        if self._runner:
            await self._runner.cleanup()
