"""A small in-test implementation of the core's ``BridgeAPI`` for the SMS connector's tests.

It records what the connector queues (deduplicating on login, kind and remote ID as the core
does), its login states and metadata, and serves registered webhooks on a real aiohttp server at
``/_caliopen/<network>/...``, like the core's HTTP server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web

from bridges.core.events import RemoteEvent, RemoteEventKind
from bridges.core.network import LoginState, WebhookHandler
from bridges.sandbox.synapse import free_port


class BridgeDouble:
    def __init__(self) -> None:
        self.port = free_port()
        self.queued: list[RemoteEvent] = []
        self.keys: set[tuple[str, str, str]] = set()
        self.states: list[tuple[str, LoginState, str | None]] = []
        self.metadata: dict[str, dict[str, Any]] = {}
        self.webhooks: dict[str, WebhookHandler] = {}
        self.fail_next_queue = 0
        self.stored_messages: set[tuple[str, str]] = set()  # (login, remote ID) the core has mapped
        self.gate: asyncio.Event | None = None  # when set, queue_remote_event waits for it
        self.waiting = 0  # calls held at the gate
        self._public_url = f"http://127.0.0.1:{self.port}"
        self._runner: web.AppRunner | None = None
        self._changed = asyncio.Event()

    # --- BridgeAPI ----------------------------------------------------------------------

    async def queue_remote_event(self, event: RemoteEvent) -> bool:
        if self.gate is not None:
            self.waiting += 1
            self._changed.set()
            try:
                await self.gate.wait()
            finally:
                self.waiting -= 1
        if self.fail_next_queue:
            self.fail_next_queue -= 1
            raise RuntimeError("the database is unavailable")
        RemoteEvent.from_json(event.to_json())  # what the core stores must round-trip
        key = (event.login_id, event.kind.value, event.remote_id)
        if key in self.keys:
            return False
        self.keys.add(key)
        self.queued.append(event)
        self._changed.set()
        return True

    async def save_login_metadata(self, login_id: str, metadata: dict[str, Any]) -> None:
        self.metadata[login_id] = dict(metadata)

    async def set_login_state(self, login_id: str, state: LoginState, error: str | None = None) -> None:
        self.states.append((login_id, state, error))
        self._changed.set()

    async def is_bridged(self, login_id: str, remote_id: str) -> bool:
        return (login_id, remote_id) in self.stored_messages or any(
            k[0] == login_id and k[2] == remote_id for k in self.keys)

    def register_webhook(self, network: str, handler: WebhookHandler) -> str:
        self.webhooks[network] = handler
        return f"/_caliopen/{network}"

    @property
    def public_url(self) -> str:
        return self._public_url

    # --- the HTTP server ----------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/_caliopen/{network}/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        handler = self.webhooks.get(request.match_info["network"])
        if handler is None:
            return web.Response(status=404)
        return await handler(request)

    # --- for tests ----------------------------------------------------------------------

    def events(self, kind: RemoteEventKind | None = None) -> list[RemoteEvent]:
        return [e for e in self.queued if kind is None or e.kind == kind]

    def state_of(self, login_id: str) -> LoginState | None:
        states = [s for lid, s, _ in self.states if lid == login_id]
        return states[-1] if states else None

    async def wait_for(self, check: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            result = check()
            if result:
                return result
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError(f"timed out waiting for {what}; queued: {self.queued}; states: {self.states}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.2))
            except asyncio.TimeoutError:
                pass
