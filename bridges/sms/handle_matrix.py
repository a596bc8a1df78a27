"""Matrix → SMS: what the user writes in a portal, sent through the login's backend.

Capabilities: none beyond the required ``handle_matrix_message`` (SMS has no edits, reactions,
redactions, read receipts or typing). Delivery comes back later as DELIVERY events
(:mod:`handle_remote`); the message starts QUEUED.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bridges.core.errors import SendError
from bridges.core.events import DeliveryState, MatrixMessage, SentMessage

from . import ids
from .backends.base import Media, now_ms
from .convert import LABELS
from .errors import NotAnswerable, media_not_supported

if TYPE_CHECKING:
    from .client import SmsClient

SENT_PORTALS_KEPT = 2000


def outgoing_text(msg: MatrixMessage) -> str:
    """The SMS text of a Matrix message. No I/O.

    Emotes read ``* text``; for a file, the body is sent only when it is a caption (not just
    the file's name).
    """
    if msg.media is not None:
        body = msg.body.strip()
        return "" if body in ("", msg.media.filename) else body
    if msg.msgtype == "m.emote":
        return f"* {msg.body}"
    return msg.body


async def send_message(client: SmsClient, msg: MatrixMessage) -> SentMessage:
    """Send through the backend (I/O). Raises SendError with a message for the user."""
    recipients = ids.portal_members(msg.portal.portal_id)
    for r in recipients:
        if not ids.is_phone_number(r):
            raise NotAnswerable(ids.display_name(r))
    backend = client.backend
    media = []
    if msg.media is not None:
        if not backend.can_send_media:
            raise media_not_supported(LABELS.get(backend.name, backend.name))
        media.append(Media(data=msg.media.data, mimetype=msg.media.mimetype, filename=msg.media.filename))
    text = outgoing_text(msg)
    if not text and not media:
        raise SendError("There is no text to send.")
    message_id = await backend.send(recipients, text, media)
    client.sent_portals[message_id] = msg.portal.portal_id
    while len(client.sent_portals) > SENT_PORTALS_KEPT:
        client.sent_portals.pop(next(iter(client.sent_portals)))
    return SentMessage(remote_id=message_id, timestamp=now_ms(), metadata={"backend": backend.name},
                       state=DeliveryState.QUEUED)
