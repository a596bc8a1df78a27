"""What every portal has: its row, its room, and its one ordered queue.

Everything that happens to a portal (remote events from the durable inbox, Matrix events from
the user) goes through :meth:`PortalBase.submit` and is handled one at a time, in order, by the
portal's worker. The two directions build on this in :mod:`portal_remote` and
:mod:`portal_matrix`; :mod:`portal` puts them together.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Awaitable, Callable, cast

from ..db import PortalRow
from .events import ChatInfo, PortalRef

if TYPE_CHECKING:
    from .bridge import Bridge
    from .portal import Portal

log = logging.getLogger("caliopen.portal")

Job = Callable[[], Awaitable[Any]]


class PortalBase:
    def __init__(self, bridge: Bridge, row: PortalRow) -> None:
        self.bridge = bridge
        self.row = row
        self.log = log.getChild(f"{row.login_id}.{abs(hash(row.portal_id)) % 10**8}")
        self._queue: asyncio.Queue[tuple[Job, asyncio.Future[Any]]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._room_lock = asyncio.Lock()

    # --- identity ---------------------------------------------------------------------------

    @property
    def login_id(self) -> str:
        return self.row.login_id

    @property
    def portal_id(self) -> str:
        return self.row.portal_id

    @property
    def network(self) -> str:
        return self.row.network

    @property
    def mxid(self) -> str | None:
        return self.row.mxid

    @property
    def ref(self) -> PortalRef:
        return PortalRef(self.portal_id, self.login_id, self.row.name, dict(self.row.metadata))

    # --- the ordered queue ----------------------------------------------------------------

    def submit(self, job: Job) -> asyncio.Future[Any]:
        """Queue a job; it runs after every job queued before it. Returns its future."""
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((job, fut))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(), name=f"portal-{self.login_id}")
        return fut

    async def _work(self) -> None:
        while True:
            try:
                job, fut = await asyncio.wait_for(self._queue.get(), timeout=60)
            except asyncio.TimeoutError:
                if self._queue.empty():
                    return
                continue
            try:
                result = await job()
            except asyncio.CancelledError:
                if not fut.done():
                    fut.cancel()
                raise
            except Exception as e:
                self.log.exception("A portal job failed")
                if not fut.done():
                    fut.set_exception(e)
            else:
                if not fut.done():
                    fut.set_result(result)

    async def stop(self) -> None:
        if self._worker:
            self._worker.cancel()
            try:
                await self._worker
            except (asyncio.CancelledError, Exception):
                pass

    # --- the room ------------------------------------------------------------------------

    async def ensure_room(self, info: ChatInfo | None = None) -> str:
        """Create the Matrix room when there is none yet (encrypted from its first event)."""
        async with self._room_lock:
            if self.row.mxid:
                return self.row.mxid
            bridge = self.bridge
            login = bridge.logins[self.login_id]
            if info is None:
                info = await bridge.client_for(self.login_id).get_chat_info(self.ref)
            ghosts = []
            for member in info.members:
                ghosts.append(await bridge.ensure_ghost(self.network, member, login))
            self.row.name = info.name or self.row.name
            self.row.topic = info.topic
            self.row.is_direct = info.is_direct
            space = await bridge.ensure_space(login)
            room_id = await bridge.matrix.create_room(
                name=self.row.name, topic=self.row.topic, invite=[login.user_mxid], ghosts=ghosts,
                is_direct=info.is_direct, encrypted=self.row.encrypted, space=space,
            )
            self.row.mxid = room_id
            self.row.metadata.setdefault("members", [m.remote_id for m in info.members])
            await bridge.store.portals.upsert(self.row)
            bridge.portals_by_mxid[room_id] = cast("Portal", self)  # every portal is a Portal
            if space:
                try:
                    await bridge.matrix.add_to_space(space, room_id)
                except Exception:
                    self.log.warning("Could not add the room to the login's space", exc_info=True)
            self.log.info("Created portal room %s", room_id)
            return room_id
