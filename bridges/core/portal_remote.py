"""Remote → Matrix, inside a portal's queue.

An event comes from the durable inbox (``remote_inbox``). It is converted by the connector
after the room exists, sent through the sender's ghost (or, with double puppeting, as the user
when the user wrote it with another client) with a transaction ID derived from its remote ID
(a resend after a crash is deduplicated by the homeserver), and its message mapping is stored
in the same database transaction that deletes it from the inbox.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from mautrix.util.async_db import Connection

from ..db import InboxRow, MessageRow
from .errors import ConversionError
from .events import ConvertedMessage, ConvertedPart, DeliveryState, RemoteEvent, RemoteEventKind
from .ids import remote_txn_id
from .metrics import METRICS
from .portal_base import PortalBase

log = logging.getLogger("caliopen.portal.remote")

PRIVACY_KEY = "org.caliopen.privacy"
#: Tries (about 30 s in all) for an event about a message whose mapping is not stored yet.
TARGET_WAITS = 4


class _TargetNotBridged(Exception):
    """The message an event is about is not (yet) bridged."""


class RemoteHandling(PortalBase):
    def enqueue_remote(self, row: InboxRow, event: RemoteEvent) -> None:
        """Queue a stored remote event on this portal."""
        self.submit(lambda: self.handle_remote(row, event))

    def retry_later(self, row: InboxRow, event: RemoteEvent, transient: bool = False) -> None:
        """Queue the event again after a delay (doubling; at most 30 s while the homeserver is
        unavailable, 60 s for other failures, which count towards giving up)."""
        async def retry() -> None:
            if transient:
                row.waits += 1
                await asyncio.sleep(min(2 ** row.waits, 30))
            else:
                await asyncio.sleep(min(2 ** (row.attempts + 1), 60))
                row.attempts += 1
            self.enqueue_remote(row, event)

        self.bridge.spawn(retry())

    async def handle_remote(self, row: InboxRow, event: RemoteEvent) -> None:
        """Bridge one stored remote event; on failure leave it in the inbox for a retry."""
        bridge = self.bridge
        try:
            if event.kind == RemoteEventKind.MESSAGE:
                await self._remote_message(row, event)
            elif event.kind == RemoteEventKind.DELIVERY:
                await self._remote_delivery(event)
                await bridge.store.inbox.delete(row.id)
            elif event.kind == RemoteEventKind.READ_RECEIPT:
                await self._remote_read(event)
                await bridge.store.inbox.delete(row.id)
            elif event.kind == RemoteEventKind.CHAT_INFO:
                if event.chat_info and self.mxid is None:
                    await self.ensure_room(event.chat_info)
                await bridge.store.inbox.delete(row.id)
            else:
                await self._remote_relation(row, event)
        except asyncio.CancelledError:
            raise
        except _TargetNotBridged:
            if row.attempts < TARGET_WAITS:
                self.retry_later(row, event)
            else:
                self.log.debug("Dropped a %s event about a message that was never bridged", event.kind.value)
                await bridge.store.inbox.delete(row.id)
        except Exception as e:
            METRICS.remote_failures.labels(self.network).inc()
            if bridge.matrix.is_transient(e):
                # The homeserver is down or overloaded: keep the event, however long it takes.
                self.log.warning("Homeserver unavailable (%s); remote event %s waits", type(e).__name__, row.id)
                self.retry_later(row, event, transient=True)
                return
            await bridge.store.inbox.bump_attempts(row.id)
            if row.attempts + 1 >= bridge.max_remote_attempts:
                self.log.error("Giving up on remote event %s after %d attempts: %s", row.id, row.attempts + 1,
                               type(e).__name__, exc_info=True)
                await bridge.store.inbox.delete(row.id)
                if self.mxid:
                    await bridge.matrix.send_notice(
                        self.mxid, f"A {self.network} message could not be bridged ({type(e).__name__}).")
                return
            self.log.warning("Remote event %s failed (%s); it stays queued", row.id, type(e).__name__,
                             exc_info=True)
            self.retry_later(row, event)

    async def _remote_message(self, row: InboxRow, event: RemoteEvent) -> None:
        bridge = self.bridge
        store = bridge.store
        if await store.messages.exists(self.login_id, event.remote_id):
            await store.inbox.delete(row.id)
            return
        room_id = await self.ensure_room(event.chat_info)
        login = bridge.logins[self.login_id]
        if event.sender.is_from_me and await bridge.matrix.puppet(room_id, login.user_mxid):
            sender = login.user_mxid  # double puppeting: written with another client, shown as the user's
        else:
            sender = await bridge.ensure_ghost(self.network, event.sender, login)
            await bridge.matrix.ensure_in_room(room_id, sender)
        client = bridge.client_for(self.login_id)
        try:
            converted = await client.convert_remote(self.ref, event)
        except ConversionError as e:
            converted = ConvertedMessage(parts=[ConvertedPart("error", {
                "msgtype": "m.notice", "body": f"A message could not be converted: {e.user_message}"})])
        # Threads and replies stay inside this room: a root bridged into another portal (the
        # correspondents changed) makes this message start a thread of its own here.
        thread_root = await self._find(converted.thread_root_id, same_portal=True) if converted.thread_root_id else None
        reply_to = await self._find(converted.reply_to_id, same_portal=True) if converted.reply_to_id else None
        rows = []
        for index, part in enumerate(converted.parts):
            content = dict(part.content)
            if part.media is not None:
                content.update(await bridge.matrix.upload(room_id, part.media, encrypted=self.row.encrypted))
                info = dict(content.get("info") or {})
                info.setdefault("mimetype", part.media.mimetype)
                info.setdefault("size", len(part.media.data))
                if part.media.width and part.media.height:
                    info.setdefault("w", part.media.width)
                    info.setdefault("h", part.media.height)
                content["info"] = info
            if thread_root is not None:
                content["m.relates_to"] = {
                    "rel_type": "m.thread", "event_id": thread_root.mxid, "is_falling_back": reply_to is None,
                    "m.in_reply_to": {"event_id": (reply_to or thread_root).mxid},
                }
            elif reply_to is not None:
                content["m.relates_to"] = {"m.in_reply_to": {"event_id": reply_to.mxid}}
            if converted.privacy is not None:
                content[PRIVACY_KEY] = converted.privacy
            if event.sender.is_from_me:
                content["org.caliopen.from_me"] = True
            mxid = await bridge.matrix.send(
                room_id, sender, content, event_type=part.event_type,
                txn_id=remote_txn_id(self.login_id, event.remote_id, part.part_id), timestamp=event.timestamp,
            )
            rows.append(MessageRow(
                login_id=self.login_id, remote_id=event.remote_id, part_id=part.part_id, portal_id=self.portal_id,
                mxid=mxid, room_mxid=room_id, sender_id=event.sender.remote_id, timestamp=event.timestamp,
                thread_root_id=thread_root.remote_id if thread_root else None, metadata=converted.metadata,
                privacy=converted.privacy, part_index=index,
            ))
        conn: Connection
        async with store.db.acquire() as conn, conn.transaction():
            for r in rows:
                await store.messages.insert(r, conn)
            await store.inbox.delete(row.id, conn)
        METRICS.remote_messages.labels(self.network).inc()

    async def _find(self, remote_id: str, same_portal: bool = False) -> MessageRow | None:
        """The first part of a bridged message of this login (of this portal, if asked)."""
        row = await self.bridge.store.messages.first_part(self.login_id, remote_id)
        if row is not None and same_portal and row.portal_id != self.portal_id:
            return None
        return row

    async def _remote_delivery(self, event: RemoteEvent) -> None:
        target = await self._find(event.target_id or "")
        if target is None:
            raise _TargetNotBridged()
        state = DeliveryState(event.data.get("state", DeliveryState.SENT.value))
        order = [DeliveryState.QUEUED, DeliveryState.SENT, DeliveryState.DELIVERED]
        old = DeliveryState(target.delivery) if target.delivery else DeliveryState.QUEUED
        if state != DeliveryState.FAILED and old in order and state in order and order.index(state) <= order.index(old):
            return  # an older or repeated status arriving late changes nothing
        if old == DeliveryState.FAILED:
            return
        await self.bridge.store.messages.set_delivery(self.login_id, target.remote_id, state.value)
        if state == DeliveryState.DELIVERED:
            ghost = await self.bridge.portal_ghost(self)
            if ghost:
                await self.bridge.matrix.mark_read(target.room_mxid, ghost, target.mxid)
        elif state == DeliveryState.FAILED:
            error = str(event.data.get("error") or "the network reported a failure")
            await self.bridge.matrix.send_status(target.room_mxid, target.mxid, ok=False, error=error)
            await self.bridge.matrix.send_notice(target.room_mxid, f"Your message was not delivered: {error}")

    async def _remote_read(self, event: RemoteEvent) -> None:
        login = self.bridge.logins[self.login_id]
        if event.sender.is_from_me:
            # "The user read it elsewhere" can only be shown as the user (double puppeting); a
            # receipt from a ghost of the user's own address would mislead, so without it: nothing.
            if self.mxid is None or not await self.bridge.matrix.puppet(self.mxid, login.user_mxid):
                return
            target = await self._find(event.target_id or "")
            if target is None:
                raise _TargetNotBridged()
            await self.bridge.matrix.mark_read(target.room_mxid, login.user_mxid, target.mxid)
            return
        target = await self._find(event.target_id or "")
        if target is None:
            raise _TargetNotBridged()
        ghost = await self.bridge.ensure_ghost(self.network, event.sender, login)
        await self.bridge.matrix.ensure_in_room(target.room_mxid, ghost)
        await self.bridge.matrix.mark_read(target.room_mxid, ghost, target.mxid)

    async def _remote_relation(self, row: InboxRow, event: RemoteEvent) -> None:
        """Edits, reactions and redactions of bridged messages."""
        bridge = self.bridge
        target = await self._find(event.target_id or "")
        if target is None or self.mxid is None:
            await bridge.store.inbox.delete(row.id)
            return
        login = bridge.logins[self.login_id]
        sender = await bridge.ensure_ghost(self.network, event.sender, login)
        txn = remote_txn_id(self.login_id, f"{event.kind.value}:{event.remote_id}", "0")
        content: dict[str, Any]
        if event.kind == RemoteEventKind.REDACTION:
            await bridge.matrix.redact(self.mxid, target.mxid, sender)
        elif event.kind == RemoteEventKind.REACTION:
            content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": target.mxid,
                                        "key": str(event.data.get("key", ""))}}
            await bridge.matrix.send(self.mxid, sender, content, event_type="m.reaction", txn_id=txn)
        elif event.kind == RemoteEventKind.EDIT:
            converted = await bridge.client_for(self.login_id).convert_remote(self.ref, event)
            new = dict(converted.parts[0].content)
            content = {**new, "body": "* " + str(new.get("body", "")),
                       "m.new_content": new, "m.relates_to": {"rel_type": "m.replace", "event_id": target.mxid}}
            await bridge.matrix.send(self.mxid, sender, content, txn_id=txn, timestamp=event.timestamp)
        await bridge.store.inbox.delete(row.id)
