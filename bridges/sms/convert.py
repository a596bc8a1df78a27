"""SMS and MMS ↔ Matrix content, and the privacy block every bridged message carries.

Capabilities: none (conversion only). ``convert_message`` may do I/O (it downloads MMS
attachments through the backend); everything else here is pure.
"""

from __future__ import annotations

import logging
from typing import Any

from bridges.core.errors import ConversionError
from bridges.core.events import ConvertedMessage, ConvertedPart
from bridges.core.events import Media as MatrixMedia

from .backends.base import MediaRef, SmsBackend

log = logging.getLogger("caliopen.sms.convert")

LABELS = {"smsgate": "SMSGate", "twilio": "Twilio", "gammu": "GSM modem"}


def privacy(backend: SmsBackend) -> dict[str, Any]:
    """What is known of the privacy of an SMS leg (``org.caliopen.privacy``). No I/O."""
    seen_by = ["mobile carriers"]
    if backend.name == "twilio":
        seen_by.append("Twilio")
    elif backend.name == "smsgate" and backend.third_party:
        seen_by.append("SMSGate cloud server")
    return {
        "transport": "carrier_plaintext",
        "end_to_end": False,
        "backend": backend.name,
        "third_party": backend.third_party,
        "seen_by": seen_by,
        "summary": "SMS travels unencrypted between mobile carriers"
                   + (f"; {seen_by[-1]} also sees it" if backend.third_party else "; no other company sees it"),
    }


def msgtype_for(mimetype: str) -> str:
    major = mimetype.split("/", 1)[0].lower()
    return {"image": "m.image", "video": "m.video", "audio": "m.audio"}.get(major, "m.file")


def message_data(text: str, media: tuple[MediaRef, ...], backend: str) -> dict[str, Any]:
    """The JSON stored with a queued message (handed back to :func:`convert_message`)."""
    return {"text": text, "media": [m.to_json() for m in media], "backend": backend}


async def convert_message(backend: SmsBackend, data: dict[str, Any], *, max_media_size: int) -> ConvertedMessage:
    """A received SMS or MMS as Matrix events: the text, then one event per attachment.

    Downloads attachments (I/O). An attachment that is gone or too big becomes a notice and the
    rest is bridged; a gateway that does not answer raises, so the core tries again later.
    """
    parts: list[ConvertedPart] = []
    text = str(data.get("text") or "")
    if text:
        parts.append(ConvertedPart("text", {"msgtype": "m.text", "body": text}))
    for i, raw in enumerate(data.get("media") or []):
        ref = MediaRef.from_json(raw)
        try:
            media = await backend.fetch_media(ref)
        except ConversionError as e:
            parts.append(ConvertedPart(f"media{i}", {"msgtype": "m.notice",
                                                     "body": f"An attachment could not be bridged: {e.user_message}."}))
            continue
        if len(media.data) > max_media_size:
            parts.append(ConvertedPart(f"media{i}", {
                "msgtype": "m.notice",
                "body": f"An attachment ({media.filename}, {len(media.data)} bytes) is larger than this bridge takes."}))
            continue
        parts.append(ConvertedPart(
            f"media{i}", {"msgtype": msgtype_for(media.mimetype), "body": media.filename, "filename": media.filename},
            media=MatrixMedia(data=media.data, mimetype=media.mimetype, filename=media.filename)))
    if not parts:
        parts.append(ConvertedPart("text", {"msgtype": "m.text", "body": ""}))
    return ConvertedMessage(parts=parts, privacy=privacy(backend), metadata={"backend": backend.name})
