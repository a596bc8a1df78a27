"""The Matrix side: the appservice, the bot and ghost intents, encryption, media.

This is the only module that talks to the homeserver. It implements
:class:`bridges.core.matrix_api.MatrixAPI` for the core and hands the core decrypted
:class:`bridges.core.matrix_api.IncomingEvent` values.

Transactions from the homeserver: a missing token gets 401, a wrong one 403, neither is
processed. A transaction is answered once its events are handled, so a crash makes the
homeserver send it again; transactions and events already handled are remembered in the
database, so a replay is processed once.
"""

from __future__ import annotations

import asyncio
import hashlib

import aiohttp
import json
import logging
from typing import Any, Awaitable, Callable

from aiohttp import web
from mautrix.appservice import AppService, IntentAPI
from mautrix.appservice.state_store.asyncpg import PgASStateStore
from mautrix.crypto.attachments import decrypt_attachment, encrypt_attachment
from mautrix.client import ClientAPI, StoreUpdatingAPI
from mautrix.errors import DecryptionError, MatrixConnectionError, MatrixRequestError, MForbidden
from mautrix.types import (
    Event,
    EventType,
    Membership,
    RoomCreatePreset,
    StateEvent,
)
from mautrix.util.async_db import Database

from ..core.events import Media
from ..db.matrix_events import Transactions
from ..core.matrix_api import IncomingEvent
from .crypto import Crypto
from .double_puppet import SOURCE_KEY, DoublePuppets, is_refusal, is_token_refusal

log = logging.getLogger("caliopen.matrix")

EventSink = Callable[[IncomingEvent], Awaitable[None]]
MembershipSink = Callable[[StateEvent], Awaitable[None]]

# Portal rooms created at once. Creating a room is a dozen state events at the homeserver; a
# burst of fifty in parallel makes every one of them wait for all the others.
ROOM_CREATION_CONCURRENCY = 4
# Read receipts set as users (double puppeting) whose echo is awaited, at most.
PUPPET_RECEIPTS_KEPT = 1000


class _AppService(AppService):
    """mautrix's AppService with the token answers of the spec and durable replay protection."""

    side: MatrixSide

    def _token_of(self, request: web.Request) -> str | None:
        token = request.rel_url.query.get("access_token")
        auth = request.headers.get("Authorization", "")
        if token is None and auth.startswith("Bearer "):
            token = auth.removeprefix("Bearer ")
        return token

    def _check_token(self, request: web.Request) -> bool:
        return self._token_of(request) == self.hs_token

    async def _http_handle_transaction(self, request: web.Request) -> web.Response:
        token = self._token_of(request)
        if token is None:
            return web.json_response({"errcode": "M_UNAUTHORIZED", "error": "Missing token"}, status=401)
        if token != self.hs_token:
            log.warning("Refused a transaction with a wrong hs_token from %s", request.remote)
            return web.json_response({"errcode": "M_FORBIDDEN", "error": "Wrong token"}, status=403)
        # Homeservers may count transaction IDs from 1 again after a restart (Synapse does when
        # it kept no state for the appservice), so a replay is the same ID with the same body.
        raw = await request.read()
        txn_id = request.match_info["transaction_id"] + ":" + hashlib.sha256(raw).hexdigest()[:32]
        try:
            body = json.loads(raw)
            events = body["events"]
            if not isinstance(events, list):
                raise TypeError("events is not a list")
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
            log.warning("Refused malformed transaction %s: %s", txn_id, type(e).__name__)
            return web.json_response({"errcode": "M_BAD_JSON", "error": "Malformed transaction"}, status=400)
        if await self.side.store_seen_txn(txn_id):
            return web.json_response({})
        ephemeral = body.get("ephemeral") or body.get("de.sorunome.msc2409.ephemeral") or []
        await self.side.handle_transaction(events, ephemeral)
        await self.side.store_mark_txn(txn_id)
        return web.json_response({})


class MatrixSide:
    """Implements MatrixAPI for the core on mautrix's appservice and crypto."""

    def __init__(self, config: Any, db: Database) -> None:
        self.config = config
        self.db = db
        self.domain: str = config["homeserver.domain"]
        self.bot_mxid: str = config.bot_mxid
        # One state store for the appservice and the OlmMachine (find_shared_rooms lives here).
        self.state_store = PgASStateStore(db)
        self.transactions = Transactions(db)
        self.az = _AppService(
            server=config["homeserver.address"],
            domain=self.domain,
            as_token=config["appservice.as_token"],
            hs_token=config["appservice.hs_token"],
            bot_localpart=config["appservice.bot.username"],
            id=config["appservice.id"],
            state_store=self.state_store,
            verify_ssl=config["homeserver.verify_ssl"],
            aiohttp_params={"client_max_size": 64 * 1024 * 1024},
            ephemeral_events=True,
            bridge_name="caliopen",
        )
        self.az.side = self
        prefixes = [config[f"networks.{n}.ghost_prefix"] for n in config["networks"]]
        self.crypto = Crypto(self.az, self.bot_mxid, config["homeserver.address"], db, self.state_store,
                             prefixes, self.domain)
        self.puppets = DoublePuppets(self.az, config.get("homeserver.double_puppet_as_token", "") or "",
                                     config["appservice.id"])
        # Users joined to rooms as seen by their double puppet, and the read receipts the bridge
        # set as a user whose echo (an m.receipt from the homeserver) is still to come.
        self._puppet_in_room: set[tuple[str, str]] = set()
        # (The homeserver sends nothing for a receipt older than the user's own: the oldest
        # entries go after PUPPET_RECEIPTS_KEPT.)
        self._puppet_receipts: dict[tuple[str, str, str], None] = {}
        self.on_event: EventSink | None = None
        self.on_bot_invite: Callable[[str, str, bool], Awaitable[None]] | None = None
        self._encrypted_rooms: dict[str, bool] = {}
        # Hot-path caches: building an IntentAPI is costly, and asking the state store whether
        # a ghost is in a room is a query per message. Both are kept here; a ghost's entry goes
        # when a membership event says it left (or the homeserver refuses its message).
        self._intents: dict[str, IntentAPI] = {}
        self._ghost_in_room: set[tuple[str, str]] = set()
        # Rooms are created a few at a time: the first portals open (and their messages flow)
        # while the others wait, instead of all finishing together at the end of a burst.
        self._room_creation = asyncio.Semaphore(ROOM_CREATION_CONCURRENCY)
        self._ready = asyncio.Event()
        self._az_started = self._crypto_started = False

    # --- lifecycle ----------------------------------------------------------------------

    @property
    def app(self) -> web.Application:
        return self.az.app

    async def start(self) -> None:
        await PgASStateStore.upgrade_table.upgrade(self.db)
        host, port = self.config["appservice.hostname"], self.config["appservice.port"]
        await self.az.start(host, port)
        self._az_started = True
        await self.wait_for_homeserver()
        bot = self.bot_intent
        await bot.ensure_registered()
        await self.crypto.start()
        self._crypto_started = True
        try:
            await bot.set_displayname(self.config["appservice.bot.displayname"])
        except MatrixRequestError:
            log.warning("Could not set the bot's display name", exc_info=True)
        self._ready.set()
        try:
            await self.az.ping_self()
        except Exception:
            log.debug("Homeserver ping failed (older homeserver?)", exc_info=True)

    async def stop(self) -> None:
        if self._crypto_started:
            await self.crypto.stop()
        await self.crypto.client.api.session.close()
        if self._az_started:
            await self.az.stop()

    # --- replay protection (used by _AppService) ----------------------------------------

    async def store_seen_txn(self, txn_id: str) -> bool:
        return await self.transactions.seen(txn_id)

    async def store_mark_txn(self, txn_id: str) -> None:
        await self.transactions.mark(txn_id)

    # --- incoming --------------------------------------------------------------------------

    async def handle_transaction(self, events: list[dict[str, Any]], ephemeral: list[dict[str, Any]]) -> None:
        await self._ready.wait()
        tasks = []
        by_room: dict[str, list[Event]] = {}
        for raw in events:
            if "state_key" not in raw and (raw.get("content") or {}).get(SOURCE_KEY) == self.puppets.source:
                continue  # the echo of what the bridge sent as a user (double puppeting)
            try:
                evt = Event.deserialize(raw)
            except Exception:
                log.warning("Skipped an event that does not parse: %s", raw.get("event_id"))
                continue
            by_room.setdefault(str(raw.get("room_id")), []).append(evt)
        for raw in ephemeral:
            if raw.get("type") in ("m.receipt", "m.typing") and raw.get("room_id"):
                tasks.append(self._handle_ephemeral(raw))
        # Rooms in parallel, events of one room in order.
        tasks.extend(self._handle_room_events(evts) for evts in by_room.values())
        await asyncio.gather(*tasks)

    async def _handle_room_events(self, events: list[Event]) -> None:
        for evt in events:
            try:
                await self._handle_event(evt)
            except Exception:
                log.exception("Failed to handle Matrix event %s in %s", evt.event_id, evt.room_id)

    async def _handle_ephemeral(self, raw: dict[str, Any]) -> None:
        if self.on_event is None:
            return
        content = raw.get("content") or {}
        if raw["type"] == "m.receipt" and self._puppet_receipts:
            content = self._without_puppet_receipts(raw["room_id"], content)
            if not content:
                return
        try:
            await self.on_event(
                IncomingEvent(room_id=raw["room_id"], event_id="", sender="", type=raw["type"],
                              content=content, timestamp=0)
            )
        except Exception:
            log.exception("Failed to handle %s in %s", raw.get("type"), raw.get("room_id"))

    async def _handle_event(self, evt: Event) -> None:
        if isinstance(evt, StateEvent):
            await self.state_store.update_state(evt)
            if evt.type == EventType.ROOM_ENCRYPTION:
                self._encrypted_rooms[evt.room_id] = True
            if evt.type == EventType.ROOM_MEMBER:
                if evt.content.membership != Membership.JOIN:
                    self._ghost_in_room.discard((evt.room_id, evt.state_key))
                    self._puppet_in_room.discard((evt.room_id, evt.state_key))
                await self.crypto.handle_member_event(evt)
                if (evt.state_key == self.bot_mxid and evt.content.membership == Membership.INVITE
                        and self.on_bot_invite):
                    is_direct = bool(getattr(evt.content, "is_direct", False))
                    await self.on_bot_invite(evt.room_id, evt.sender, is_direct)
                    return
        if evt.sender == self.bot_mxid or self.crypto.is_ghost(evt.sender):
            return
        encrypted = False
        if evt.type == EventType.ROOM_ENCRYPTED:
            encrypted = True
            try:
                evt = await self.crypto.decrypt(evt)  # type: ignore[arg-type]
            except DecryptionError as e:
                log.warning("Could not decrypt %s in %s: %s", evt.event_id, evt.room_id, type(e).__name__)
                await self.send_status(evt.room_id, evt.event_id, ok=False, error=(
                    "The bridge could not decrypt this message. It asked your devices for the keys; "
                    "send it again if it does not go through."), retriable=True)
                return
        if self.on_event is None:
            return
        raw = evt.serialize()
        await self.on_event(
            IncomingEvent(
                room_id=evt.room_id,
                event_id=evt.event_id,
                sender=evt.sender,
                type=str(evt.type),
                content=raw.get("content") or {},
                timestamp=raw.get("origin_server_ts", 0),
                state_key=raw.get("state_key"),
                encrypted=encrypted,
                redacts=raw.get("redacts") or (raw.get("content") or {}).get("redacts"),
                unsigned=raw.get("unsigned") or {},
            )
        )

    # --- MatrixAPI ----------------------------------------------------------------------

    @property
    def bot_intent(self) -> IntentAPI:
        return self.intent(self.bot_mxid)

    def intent(self, mxid: str) -> IntentAPI:
        intent = self._intents.get(mxid)
        if intent is None:
            intent = self._intents[mxid] = self.az.intent.user(mxid)
        return intent

    async def _ensure_ghost_joined(self, room_id: str, mxid: str) -> None:
        if (room_id, mxid) in self._ghost_in_room:
            return
        await self.intent(mxid).ensure_joined(room_id, bot=self.bot_intent)
        self._ghost_in_room.add((room_id, mxid))

    async def ensure_ghost(self, mxid: str, displayname: str | None, avatar_url: str | None = None) -> None:
        intent = self.intent(mxid)
        await intent.ensure_registered()
        if displayname:
            await intent.set_displayname(displayname)
        if avatar_url:
            await intent.set_avatar_url(avatar_url)

    async def is_encrypted(self, room_id: str) -> bool:
        if room_id not in self._encrypted_rooms:
            self._encrypted_rooms[room_id] = bool(await self.state_store.is_encrypted(room_id))
        return self._encrypted_rooms[room_id]

    async def create_room(self, *, name: str | None, topic: str | None, invite: list[str], ghosts: list[str],
                          is_direct: bool, encrypted: bool, space: str | None = None) -> str:
        bot = self.bot_intent
        initial_state: list[dict[str, Any]] = []
        if encrypted:
            initial_state.append({"type": "m.room.encryption", "state_key": "",
                                  "content": {"algorithm": "m.megolm.v1.aes-sha2"}})
        if space:
            initial_state.append({"type": "m.space.parent", "state_key": space,
                                  "content": {"via": [self.domain], "canonical": True}})
        power = {"users": {**{g: 50 for g in ghosts}, **{u: 50 for u in invite}},
                 "events": {"m.room.encryption": 100, "m.room.power_levels": 100, "m.room.tombstone": 100}}
        async with self._room_creation:
            room_id = await bot.create_room(
                name=name, topic=topic, is_direct=is_direct, invitees=list(invite) + list(ghosts),
                initial_state=initial_state, preset=RoomCreatePreset.PRIVATE, power_level_override=power,
            )
        if encrypted:
            self._encrypted_rooms[room_id] = True
            await self.state_store.set_encryption_info(room_id, {"algorithm": "m.megolm.v1.aes-sha2"})
        await self.state_store.set_membership(room_id, self.bot_mxid, Membership.JOIN)
        for user in invite:
            await self.state_store.set_membership(room_id, user, Membership.INVITE)
        for ghost in ghosts:
            await self._ensure_ghost_joined(room_id, ghost)
        return room_id

    async def create_space(self, *, name: str, topic: str | None, invite: list[str]) -> str:
        bot = self.bot_intent
        return await bot.create_room(
            name=name, topic=topic, invitees=invite, preset=RoomCreatePreset.PRIVATE,
            creation_content={"type": "m.space"},
            power_level_override={"users": {u: 50 for u in invite}},
        )

    async def add_to_space(self, space_id: str, room_id: str) -> None:
        await self.bot_intent.send_state_event(
            space_id, EventType.SPACE_CHILD, {"via": [self.domain]}, state_key=room_id
        )

    async def ensure_in_room(self, room_id: str, mxid: str) -> None:
        if mxid == self.bot_mxid:
            await self.bot_intent.ensure_joined(room_id)
            await self.load_room_state(room_id)
            return
        if self.crypto.is_ghost(mxid):
            await self._ensure_ghost_joined(room_id, mxid)
            return
        member = await self.state_store.get_membership(room_id, mxid)
        if member not in (Membership.JOIN, Membership.INVITE):
            await self.bot_intent.invite_user(room_id, mxid)
            await self.crypto.drop_outbound_session(room_id)

    async def load_room_state(self, room_id: str) -> None:
        """Fetch a room's state after joining it: the appservice never saw the earlier events,
        and without the members and the encryption event nothing can be shared or encrypted."""
        for evt in await self.bot_intent.get_state(room_id):
            await self.state_store.update_state(evt)
            if evt.type == EventType.ROOM_ENCRYPTION:
                self._encrypted_rooms[room_id] = True
            elif evt.type == EventType.ROOM_MEMBER:
                await self.crypto.handle_member_event(evt)

    async def send(self, room_id: str, sender: str, content: dict[str, Any], *, event_type: str = "m.room.message",
                   txn_id: str | None = None, timestamp: int | None = None) -> str:
        puppet = self.puppets.active(sender)
        intent = puppet or self.intent(sender)
        etype = EventType.find(event_type, t_class=EventType.Class.MESSAGE)
        if sender != self.bot_mxid and self.crypto.is_ghost(sender):
            await self._ensure_ghost_joined(room_id, sender)
        if await self.is_encrypted(room_id):
            encrypted = await self.crypto.encrypt(room_id, etype, content)
            etype, content = EventType.ROOM_ENCRYPTED, encrypted
        if puppet is not None:
            content = {**(content.serialize() if hasattr(content, "serialize") else content),
                       SOURCE_KEY: self.puppets.source}
        kwargs: dict[str, Any] = {}
        if timestamp:
            kwargs["timestamp"] = timestamp
        # ClientAPI's send, not IntentAPI's: the intent's power-level pre-check costs three
        # state-store queries per message, and the homeserver checks the same thing anyway.
        try:
            return await ClientAPI.send_message_event(intent, room_id, etype, content, txn_id=txn_id, **kwargs)
        except MatrixRequestError as e:
            if puppet is not None and is_refusal(e):
                self._puppet_in_room.discard((room_id, sender))
                if is_token_refusal(e):
                    self.puppets.refuse(sender, e)
            elif isinstance(e, MForbidden):
                self._ghost_in_room.discard((room_id, sender))
            raise

    async def upload(self, room_id: str, media: Media, *, encrypted: bool) -> dict[str, Any]:
        data = media.data
        if encrypted:
            data, file_info = encrypt_attachment(data)
            mxc = await self.bot_intent.upload_media(data, mime_type="application/octet-stream",
                                                     filename=None)
            file_info.url = mxc
            return {"file": file_info.serialize()}
        mxc = await self.bot_intent.upload_media(data, mime_type=media.mimetype, filename=media.filename)
        return {"url": mxc}

    async def download(self, content: dict[str, Any]) -> bytes:
        if "file" in content:
            f = content["file"]
            data = await self.bot_intent.download_media(f["url"])
            return decrypt_attachment(data, f["key"]["k"], f["hashes"]["sha256"], f["iv"])
        return await self.bot_intent.download_media(content["url"])

    async def redact(self, room_id: str, event_id: str, sender: str, reason: str | None = None) -> None:
        puppet = self.puppets.active(sender)
        if puppet is not None:
            await ClientAPI.redact(puppet, room_id, event_id, reason=reason,
                                   extra_content={SOURCE_KEY: self.puppets.source})
            return
        await self.intent(sender).redact(room_id, event_id, reason=reason)

    async def send_notice(self, room_id: str, text: str, html: str | None = None) -> str:
        content: dict[str, Any] = {"msgtype": "m.notice", "body": text}
        if html:
            content.update(format="org.matrix.custom.html", formatted_body=html)
        return await self.send(room_id, self.bot_mxid, content)

    async def send_status(self, room_id: str, event_id: str, *, ok: bool, error: str | None = None,
                          retriable: bool = False) -> None:
        content: dict[str, Any] = {
            "network": "caliopen",
            "relates_to": {"rel_type": "m.reference", "event_id": event_id},
            "status": "SUCCESS" if ok else ("FAIL_RETRIABLE" if retriable else "FAIL_PERMANENT"),
        }
        if error:
            content["reason"] = "m.foreign_network_error"
            content["message"] = error
        try:
            await self.send(room_id, self.bot_mxid, content, event_type="com.beeper.message_send_status",
                            txn_id="status-" + hashlib.sha256(f"{event_id}{ok}{error}".encode()).hexdigest()[:24])
        except MatrixRequestError:
            log.warning("Could not send a message status in %s", room_id, exc_info=True)

    async def mark_read(self, room_id: str, sender: str, event_id: str) -> None:
        puppet = self.puppets.active(sender)
        if puppet is None:
            await self.intent(sender).mark_read(room_id, event_id)
            return
        # Remembered first: the homeserver may push the receipt back before it answers.
        echo = (room_id, event_id, sender)
        self._puppet_receipts[echo] = None
        while len(self._puppet_receipts) > PUPPET_RECEIPTS_KEPT:
            del self._puppet_receipts[next(iter(self._puppet_receipts))]
        try:
            await ClientAPI.set_fully_read_marker(puppet, room_id, fully_read=event_id, read_receipt=event_id)
        except BaseException as e:
            self._puppet_receipts.pop(echo, None)
            if is_token_refusal(e):
                self.puppets.refuse(sender, e)
            raise

    def _without_puppet_receipts(self, room_id: str, content: dict[str, Any]) -> dict[str, Any]:
        """An m.receipt content without the receipts the bridge itself set as a user (no I/O)."""
        kept: dict[str, Any] = {}
        for event_id, receipts in content.items():
            by_type: dict[str, Any] = {}
            for rtype, readers in (receipts or {}).items():
                if rtype == "m.read" and isinstance(readers, dict):
                    readers = {user: data for user, data in readers.items()
                               if not self._take_puppet_receipt((room_id, event_id, user))}
                if readers:
                    by_type[rtype] = readers
            if by_type:
                kept[event_id] = by_type
        return kept

    def _take_puppet_receipt(self, echo: tuple[str, str, str]) -> bool:
        if echo in self._puppet_receipts:
            del self._puppet_receipts[echo]
            return True
        return False

    async def puppet(self, room_id: str, user_mxid: str) -> bool:
        if (room_id, user_mxid) in self._puppet_in_room and self.puppets.active(user_mxid) is not None:
            return True
        intent = await self.puppets.intent(user_mxid)
        if intent is None:
            return False
        member = await self.state_store.get_membership(room_id, user_mxid)
        if member == Membership.INVITE:
            # The user has not answered the portal's invite yet: acting as them means accepting it.
            try:
                await StoreUpdatingAPI.join_room_by_id(intent, room_id)
            except MatrixRequestError as e:
                if self.is_transient(e):
                    raise
                log.warning("Could not join %s to %s as their double puppet (%s)", user_mxid, room_id,
                            type(e).__name__)
                if is_token_refusal(e):
                    self.puppets.refuse(user_mxid, e)
                return False
        elif member != Membership.JOIN:
            return False  # the user left (or was never asked): the message goes through a ghost
        self._puppet_in_room.add((room_id, user_mxid))
        return True

    def is_transient(self, error: BaseException) -> bool:
        if isinstance(error, (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError, MatrixConnectionError)):
            return True
        if isinstance(error, MatrixRequestError):
            return error.http_status >= 500 or error.http_status == 429
        return False

    async def wait_for_homeserver(self) -> None:
        """Wait until the homeserver answers, logging while it does not (it may start later)."""
        delay = 1.0
        while True:
            try:
                async with self.az.http_session.get(
                    f"{self.config['homeserver.address'].rstrip('/')}/_matrix/client/versions"
                ) as resp:
                    if resp.status == 200:
                        return
                    raise MatrixConnectionError(f"HTTP {resp.status}")
            except Exception as e:
                if not self.is_transient(e):
                    raise
                log.warning("The homeserver at %s is unreachable (%s); retrying in %.0f s",
                            self.config["homeserver.address"], type(e).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30)

    async def set_typing(self, room_id: str, sender: str, typing: bool) -> None:
        puppet = self.puppets.active(sender)
        if puppet is not None:
            await ClientAPI.set_typing(puppet, room_id, timeout=30000 if typing else 0)
            return
        await self.intent(sender).set_typing(room_id, timeout=30000 if typing else 0)
