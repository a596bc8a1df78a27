"""End-to-end encryption for the bridge's side of every portal (mautrix OlmMachine).

The bot user has one device. It gets its to-device messages (room keys, key requests) by
running ``/sync`` with a filter that drops every room event ("sync mode": works on a stock
homeserver). For that the bot is an ordinary user of the appservice's namespace, and the
registration's ``sender_localpart`` is a name nobody uses.

Ghosts send encrypted events with the bot's device. Members other than ghosts get the room
keys. The crypto and state stores live in the bridge's own database (``crypto_*``/``mx_*``
tables, owned by mautrix, ignored by alembic).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Any

from mautrix.appservice import AppService
from mautrix.client import Client, InternalEventType
from mautrix.crypto import OlmMachine, OutboundGroupSession, PgCryptoStore
from mautrix.errors import EncryptionError, SessionNotFound
from mautrix.types import (
    EncryptedEvent,
    EventFilter,
    EventType,
    Filter,
    LoginType,
    MessageEvent,
    RoomEventFilter,
    RoomFilter,
    RoomID,
    StateEvent,
    StateFilter,
    TrustState,
)
from mautrix.util.async_db import Database

log = logging.getLogger("caliopen.matrix.crypto")

PICKLE_KEY = "caliopen.matrix.crypto"


class _CryptoStore(PgCryptoStore):
    """mautrix's store, with each room's outbound group session also kept in memory.

    Every message the bridge sends reads its room's session; without this that is a query and
    an unpickling per message. Writes still go to the database first (write-through), so a
    restart finds the same state. One bridge process owns the store.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._outbound: dict[str, OutboundGroupSession] = {}

    async def get_outbound_group_session(self, room_id: RoomID) -> OutboundGroupSession | None:
        session = self._outbound.get(room_id)
        if session is None:
            session = await super().get_outbound_group_session(room_id)
            if session is not None:
                self._outbound[room_id] = session
        return session

    async def add_outbound_group_session(self, session: OutboundGroupSession) -> None:
        await super().add_outbound_group_session(session)
        self._outbound[session.room_id] = session

    async def update_outbound_group_session(self, session: OutboundGroupSession) -> None:
        await super().update_outbound_group_session(session)
        self._outbound[session.room_id] = session

    async def remove_outbound_group_session(self, room_id: RoomID) -> None:
        self._outbound.pop(room_id, None)
        await super().remove_outbound_group_session(room_id)

    async def remove_outbound_group_sessions(self, rooms: list[RoomID]) -> None:
        for room_id in rooms:
            self._outbound.pop(room_id, None)
        await super().remove_outbound_group_sessions(rooms)


class Crypto:
    """The bot's encryption device: encrypts what the bridge sends, decrypts what users send."""

    def __init__(self, az: AppService, bot_mxid: str, homeserver_url: str, db: Database, state_store: Any,
                 ghost_prefixes: list[str], domain: str) -> None:
        self.az = az
        self.bot_mxid = bot_mxid
        self.db = db
        self.state_store = state_store
        self._ghost_prefixes = [f"@{p}" for p in ghost_prefixes]
        self._suffix = f":{domain}"
        self.crypto_db = Database.create(
            str(db.url), upgrade_table=PgCryptoStore.upgrade_table, log=logging.getLogger("mau.crypto.db")
        )
        self.store = _CryptoStore("", PICKLE_KEY, self.crypto_db)
        self.client = Client(
            base_url=homeserver_url,
            mxid=bot_mxid,
            sync_store=self.store,
            state_store=state_store,
            log=logging.getLogger("mau.crypto.client"),
        )
        self.machine = OlmMachine(self.client, self.store, state_store)
        # Clients without cross-signing must still get keys.
        self.machine.share_keys_min_trust = TrustState.UNVERIFIED
        self.machine.send_keys_min_trust = TrustState.UNVERIFIED
        self.machine.allow_key_share = self._allow_key_share
        self._share_locks: dict[str, asyncio.Lock] = {}
        self._sync_task: asyncio.Future | None = None

    def is_ghost(self, mxid: str) -> bool:
        return mxid.endswith(self._suffix) and any(mxid.startswith(p) for p in self._ghost_prefixes)

    async def _allow_key_share(self, device: Any, request: Any) -> bool:
        # A member of the room who lost a key may have it again; others get nothing.
        members = await self.state_store.get_members(request.room_id)
        return device.user_id in members

    async def start(self) -> None:
        """Load or create the bot's device, upload its keys, start the to-device sync."""
        # Share the bridge database's pool (asyncpg copies the pool, so only once it exists).
        self.crypto_db.override_pool(self.db)
        await self.crypto_db.start()
        await self.store.open()
        device_id = await self.store.get_device_id()
        self.client.api.token = self.az.as_token
        await self.client.login(
            login_type=LoginType.APPSERVICE,
            identifier=self.bot_mxid,
            device_name="Caliopen bridge",
            device_id=device_id,
            store_access_token=True,
            update_hs_url=False,
        )
        await self.machine.load()
        if not device_id:
            await self.store.put_device_id(self.client.device_id)
            log.info("Created the bridge's encryption device %s", self.client.device_id)
            await self.machine.share_keys()
        elif self.machine.account.shared:
            resp = await self.client.query_keys([self.bot_mxid])
            own = resp.device_keys.get(self.bot_mxid, {}).get(self.client.device_id)
            if own is None or not own.keys:
                log.warning("The homeserver lost the bridge device's keys; uploading them again")
                self.machine.account.shared = False
                await self.machine.share_keys()
        else:
            await self.machine.share_keys()
        self.client.add_event_handler(InternalEventType.SYNC_STOPPED, self._on_sync_stopped)
        self._sync_task = self.client.start(self._filter())

    async def _on_sync_stopped(self, data: dict[str, Any]) -> None:
        if data.get("error"):
            # Without its to-device messages the bridge can decrypt nothing: stop loudly (a
            # supervisor restarts it) rather than run deaf.
            log.critical("The encryption device's sync failed for good: %s", data["error"])
            os.kill(os.getpid(), signal.SIGTERM)

    async def stop(self) -> None:
        self.client.stop()
        if self._sync_task:
            try:
                await asyncio.wait_for(asyncio.shield(self._sync_task), 2)
            except (asyncio.TimeoutError, asyncio.CancelledError, Exception):
                pass
        await self.store.close()

    @staticmethod
    def _filter() -> Filter:
        everything = EventType.find("*")
        return Filter(
            account_data=EventFilter(types=[everything]),
            presence=EventFilter(not_types=[everything]),
            # rooms=[] makes the homeserver skip rooms altogether (not only filter their events
            # out): the bot is in every portal, and each message would otherwise cost a sync.
            room=RoomFilter(
                rooms=[],
                include_leave=False,
                state=StateFilter(not_types=[everything]),
                timeline=RoomEventFilter(not_types=[everything]),
                account_data=RoomEventFilter(not_types=[everything]),
                ephemeral=RoomEventFilter(not_types=[everything]),
            ),
        )

    async def encrypt(self, room_id: str, event_type: EventType, content: dict[str, Any]) -> Any:
        """Encrypt content for the room, sharing a new group session first when needed."""
        try:
            return await self.machine.encrypt_megolm_event(room_id, event_type, content)
        except EncryptionError:
            lock = self._share_locks.setdefault(room_id, asyncio.Lock())
            async with lock:
                try:
                    return await self.machine.encrypt_megolm_event(room_id, event_type, content)
                except EncryptionError:
                    users = await self.members_to_share_with(room_id)
                    await self.machine.share_group_session(room_id, users)
            return await self.machine.encrypt_megolm_event(room_id, event_type, content)

    async def members_to_share_with(self, room_id: str) -> list[str]:
        members = await self.state_store.get_members(room_id)
        return [m for m in members if not self.is_ghost(m) and m != self.bot_mxid]

    async def drop_outbound_session(self, room_id: str) -> None:
        """After the bridge itself changed membership, the next message gets a new session."""
        await self.store.remove_outbound_group_session(room_id)

    async def handle_member_event(self, evt: StateEvent) -> None:
        if self.is_ghost(evt.state_key):
            return
        await self.machine.handle_member_event(evt)

    async def decrypt(self, evt: EncryptedEvent, wait: float = 3.0) -> MessageEvent:
        """Decrypt; on a missing session wait for the key, then ask the sender's devices."""
        try:
            return await self.machine.decrypt_megolm_event(evt)
        except SessionNotFound as e:
            session_id = e.session_id
        log.debug("Waiting for the key of session %s (event %s)", session_id, evt.event_id)
        if await self.machine.wait_for_session(evt.room_id, session_id, timeout=wait):
            return await self.machine.decrypt_megolm_event(evt)
        content = evt.content
        try:
            await self.machine.request_room_key(
                evt.room_id, content.sender_key, session_id,
                from_devices={evt.sender: [content.device_id]}, timeout=wait * 2,
            )
        except Exception:
            log.warning("Key request for session %s failed", session_id, exc_info=True)
        if await self.machine.wait_for_session(evt.room_id, session_id, timeout=wait * 2):
            return await self.machine.decrypt_megolm_event(evt)
        return await self.machine.decrypt_megolm_event(evt)
