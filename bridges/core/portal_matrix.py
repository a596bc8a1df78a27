"""Matrix → remote, inside a portal's queue.

A user's message is claimed once (``matrix_event``), converted into a
:class:`MatrixMessage` (media downloaded and decrypted, thread and reply resolved to remote
messages), and handed to the connector. Success is stored as a message mapping and shown as a
message status; failure is shown as a status and a notice the user can read. Retryable
failures are retried with backoff first.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..db import MessageRow
from .errors import CaliopenError, NotSupported, SendError
from .events import Media, MatrixMessage, MessageRef
from .matrix_api import IncomingEvent
from .metrics import METRICS
from .portal_base import PortalBase
from .network import SupportsReactions, SupportsReadReceipts, SupportsRedactions

log = logging.getLogger("caliopen.portal.matrix")

MEDIA_TYPES = ("m.image", "m.file", "m.audio", "m.video")


class MatrixHandling(PortalBase):
    async def handle_matrix(self, evt: IncomingEvent) -> None:
        bridge = self.bridge
        if not await bridge.store.matrix_events.claim(evt.event_id, evt.room_id):
            return  # handled before (a replayed transaction)
        try:
            disabled = bridge.network_disabled_for(evt.sender, self.network)
            if disabled:
                raise SendError(disabled)
            if evt.type == "m.room.message":
                await self._matrix_message(evt)
            elif evt.type == "m.reaction":
                await self._matrix_reaction(evt)
            elif evt.type == "m.room.redaction":
                await self._matrix_redaction(evt)
            await bridge.store.matrix_events.set_state(evt.event_id, "done")
        except asyncio.CancelledError:
            await bridge.store.matrix_events.release(evt.event_id)
            raise
        except CaliopenError as e:
            await self._report_failure(evt, e.user_message, getattr(e, "retryable", False))
        except Exception as e:
            self.log.exception("Sending a Matrix event to %s failed", self.network)
            await self._report_failure(evt, f"internal error ({type(e).__name__})", False)

    async def _report_failure(self, evt: IncomingEvent, message: str, retryable: bool) -> None:
        bridge = self.bridge
        METRICS.matrix_failures.labels(self.network).inc()
        await bridge.store.matrix_events.set_state(evt.event_id, "failed", message)
        await bridge.matrix.send_status(evt.room_id, evt.event_id, ok=False, error=message, retriable=retryable)
        await bridge.matrix.send_notice(evt.room_id, f"Your message was not sent: {message}")

    async def _ref(self, mxid: str | None) -> MessageRef | None:
        if not mxid:
            return None
        row = await self.bridge.store.messages.by_mxid(mxid)
        if row is None or row.login_id != self.login_id:
            return None
        return MessageRef(row.remote_id, row.metadata)

    async def _matrix_message(self, evt: IncomingEvent) -> None:
        bridge = self.bridge
        content = evt.content
        rel = content.get("m.relates_to") or {}
        if rel.get("rel_type") == "m.replace":
            raise NotSupported(f"Editing is not supported on {self.network}.")
        msgtype = str(content.get("msgtype", "m.text"))
        media = None
        if msgtype in MEDIA_TYPES:
            data = await bridge.matrix.download(content)
            info = content.get("info") or {}
            media = Media(data=data, mimetype=str(info.get("mimetype") or "application/octet-stream"),
                          filename=str(content.get("filename") or content.get("body") or "file"))
        thread_root = await self._ref(rel.get("event_id")) if rel.get("rel_type") == "m.thread" else None
        reply_to = await self._ref((rel.get("m.in_reply_to") or {}).get("event_id"))
        fmt = content.get("formatted_body") if content.get("format") == "org.matrix.custom.html" else None
        msg = MatrixMessage(
            event_id=evt.event_id, portal=self.ref, sender_mxid=evt.sender, msgtype=msgtype,
            body=str(content.get("body", "")), formatted_body=fmt, media=media,
            thread_root=thread_root, reply_to=reply_to, timestamp=evt.timestamp,
        )
        client = bridge.client_for(self.login_id)
        attempts = bridge.send_retries
        delay = bridge.send_retry_delay
        for attempt in range(attempts + 1):
            try:
                sent = await client.handle_matrix_message(msg)
                break
            except SendError as e:
                if not e.retryable or attempt == attempts:
                    raise
                self.log.info("Send failed (attempt %d), retrying in %ss", attempt + 1, delay)
                await asyncio.sleep(delay)
                delay *= 2
        await bridge.store.messages.insert(MessageRow(
            login_id=self.login_id, remote_id=sent.remote_id, part_id="0", portal_id=self.portal_id,
            mxid=evt.event_id, room_mxid=evt.room_id, sender_id="", timestamp=sent.timestamp or evt.timestamp,
            thread_root_id=thread_root.remote_id if thread_root else None, metadata=sent.metadata,
            delivery=sent.state.value,
        ))
        METRICS.matrix_messages.labels(self.network).inc()
        await bridge.matrix.send_status(evt.room_id, evt.event_id, ok=True)

    async def _matrix_reaction(self, evt: IncomingEvent) -> None:
        client = self.bridge.client_for(self.login_id)
        rel = evt.content.get("m.relates_to") or {}
        target = await self._ref(rel.get("event_id"))
        if target is None:
            return
        if not isinstance(client, SupportsReactions):
            raise NotSupported(f"Reactions are not supported on {self.network}.")
        await client.handle_matrix_reaction(self.ref, target, str(rel.get("key", "")))

    async def _matrix_redaction(self, evt: IncomingEvent) -> None:
        client = self.bridge.client_for(self.login_id)
        target = await self._ref(evt.redacts)
        if target is None:
            return
        if not isinstance(client, SupportsRedactions):
            raise NotSupported(f"Deleting messages is not supported on {self.network}.")
        await client.handle_matrix_redaction(self.ref, target)

    def enqueue_read(self, event_id: str, timestamp: int | None) -> None:
        self.submit(lambda: self.handle_matrix_read(event_id, timestamp))

    async def handle_matrix_read(self, event_id: str, timestamp: int | None) -> None:
        """The user read the room up to ``event_id``: tell the network, when it cares."""
        client = self.bridge.client_for(self.login_id)
        if not isinstance(client, SupportsReadReceipts):
            return
        target = await self.bridge.store.messages.by_mxid(event_id)
        if target is None:
            return
        rows = await self.bridge.store.messages.up_to(target.room_mxid, target.timestamp)
        unread: dict[str, Any] = {}
        for row in rows:
            if row.sender_id and row.remote_id not in unread:
                unread[row.remote_id] = MessageRef(row.remote_id, row.metadata)
        if unread:
            await client.handle_matrix_read(self.ref, list(unread.values()))
