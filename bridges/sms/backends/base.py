"""The interface every SMS backend implements, and the events it produces.

A backend speaks one gateway's protocol (SMSGate's REST API, Twilio's REST API, gammu-smsd's
spool directories). It knows nothing of Matrix or of the bridge's core: it sends text and media,
and reports what arrives as :data:`BackendEvent` values through the ``on_event`` callback given to
:meth:`SmsBackend.start_receiving`.

Backends that receive through webhooks (SMSGate, Twilio) also implement
:class:`WebhookBackend`: the bridge's HTTP server hands them each request as a
:class:`WebhookRequest`; they verify its signature and parse it, and the caller queues the
events before acknowledging the request.

Errors: ``check`` raises :class:`bridges.core.errors.LoginError`, ``send`` raises
:class:`bridges.core.errors.SendError` (``retryable`` when the gateway was unreachable or
failed), ``parse_webhook`` raises :class:`WebhookForbidden` or :class:`WebhookMalformed`.
Their messages are plain sentences for the user, and never contain message text or secrets.
"""

from __future__ import annotations

import base64
import binascii
import enum
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from bridges.core.errors import ConversionError


class MessageState(str, enum.Enum):
    """Where an outgoing message is, as far as the gateway knows."""

    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True)
class Media:
    """A file, in memory: an MMS attachment to send, or one that was fetched."""

    data: bytes
    mimetype: str
    filename: str


@dataclass(frozen=True)
class MediaRef:
    """An attachment of a received message, not fetched yet.

    ``ref`` is backend-specific (a URL the backend fetches with its credentials) or a
    ``data:`` URL when the gateway sent the content inline.
    """

    ref: str
    mimetype: str
    filename: str | None = None

    def to_json(self) -> dict[str, str | None]:
        return {"ref": self.ref, "mimetype": self.mimetype, "filename": self.filename}

    @classmethod
    def from_json(cls, data: Mapping[str, str | None]) -> MediaRef:
        return cls(ref=str(data["ref"]), mimetype=str(data.get("mimetype") or "application/octet-stream"),
                   filename=data.get("filename"))


@dataclass(frozen=True)
class MessageReceived:
    """An SMS or MMS that arrived.

    Args:
        id: the gateway's ID of the message; the same message delivered twice has the same ID.
        sender: the sender's number as the gateway gave it (normalised by the bridge later).
        to: the number that received it (ours), when the gateway says.
        text: the whole text (multipart SMS already joined).
        timestamp: milliseconds since the epoch.
        media: MMS attachments, to fetch with :meth:`SmsBackend.fetch_media`.
        participants: for a group MMS, every number in the conversation other than ours
            (the sender included); empty for a one-to-one message.
    """

    id: str
    sender: str
    text: str
    timestamp: int
    to: str | None = None
    media: tuple[MediaRef, ...] = ()
    participants: tuple[str, ...] = ()


@dataclass(frozen=True)
class StatusUpdate:
    """A change in the state of a message we sent (``id`` is what ``send`` returned)."""

    id: str
    state: MessageState
    timestamp: int
    error: str | None = None
    recipient: str | None = None


BackendEvent = MessageReceived | StatusUpdate
EventCallback = Callable[[BackendEvent], Awaitable[None]]


@dataclass(frozen=True)
class WebhookRequest:
    """One HTTP request a gateway made to the bridge, as the backend needs it.

    ``url`` is the public URL the gateway called (what it signed), query string included;
    ``kind`` is the last path segment after the login's secret path (``smsgate``,
    ``twilio-inbound``, ``twilio-status``).
    """

    method: str
    url: str
    kind: str
    headers: Mapping[str, str]
    body: bytes
    content_type: str = ""


class WebhookForbidden(Exception):
    """The request is not signed, or signed wrongly, or too old: answer 403, bridge nothing."""


class WebhookMalformed(Exception):
    """The request is signed but cannot be understood: answer 400, bridge nothing."""


class MediaHost(Protocol):
    """Serves files at public, unguessable URLs (for gateways that fetch outgoing media)."""

    def publish(self, media: Media) -> str:
        """Make ``media`` available; returns its public URL. No I/O."""


@runtime_checkable
class SmsBackend(Protocol):
    """One gateway account or modem, for one phone number."""

    name: str  # "smsgate", "twilio", "gammu"
    third_party: bool  # True when a company other than the carrier sees the messages
    can_send_media: bool

    async def check(self) -> None:
        """Verify the settings and credentials against the gateway (I/O).

        Raises :class:`bridges.core.errors.LoginError` with a plain message when they do not work.
        """

    async def send(self, to: list[str], text: str, media: list[Media]) -> str:
        """Send a message to E.164 numbers; returns the gateway's message ID (I/O).

        Transient failures are retried a few times; then :class:`bridges.core.errors.SendError`
        with ``retryable=True``. Refusals raise it with ``retryable=False``.
        """

    async def start_receiving(self, on_event: EventCallback) -> None:
        """Start delivering events to ``on_event`` (register webhooks, watch directories).

        Returns promptly. ``on_event`` returns once the event is stored; a backend acknowledges
        or forgets its copy only after that.
        """

    async def stop(self) -> None:
        """Stop receiving; leave the gateway's configuration in place."""

    async def unregister(self) -> None:
        """Remove what ``start_receiving`` set up on the gateway (at logout)."""

    async def fetch_media(self, ref: MediaRef) -> Media:
        """Download a received attachment (I/O). Raises ConversionError when it is gone."""


@runtime_checkable
class WebhookBackend(SmsBackend, Protocol):
    """A backend that receives through HTTP requests the gateway makes to the bridge."""

    def parse_webhook(self, request: WebhookRequest) -> list[BackendEvent]:
        """Verify and parse one webhook request (no I/O).

        Raises :class:`WebhookForbidden` when the signature is missing, wrong or stale, and
        :class:`WebhookMalformed` when it is signed but unreadable. An event the bridge does not
        use gives an empty list.
        """


def now_ms() -> int:
    return int(time.time() * 1000)


def data_url(data: bytes, mimetype: str) -> str:
    return f"data:{mimetype};base64,{base64.b64encode(data).decode()}"


def decode_data_url(ref: MediaRef) -> Media | None:
    """The content of a ``data:`` reference, or None when ``ref`` is not one. No I/O."""
    if not ref.ref.startswith("data:"):
        return None
    head, _, payload = ref.ref.partition(",")
    if not head.endswith(";base64"):
        raise ConversionError("an attachment had an unreadable inline encoding")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ConversionError("an attachment had unreadable inline content") from e
    return Media(data=data, mimetype=ref.mimetype, filename=ref.filename or default_filename(ref.mimetype))


_EXTENSIONS = {
    "image/jpeg": "jpg", "image/png": "png", "image/gif": "gif", "image/webp": "webp",
    "video/mp4": "mp4", "video/3gpp": "3gp", "audio/amr": "amr", "audio/mpeg": "mp3",
    "audio/ogg": "ogg", "text/vcard": "vcf", "text/x-vcard": "vcf", "application/pdf": "pdf",
}


def default_filename(mimetype: str, stem: str = "attachment") -> str:
    return f"{stem}.{_EXTENSIONS.get(mimetype.split(';')[0].strip().lower(), 'bin')}"


@dataclass
class RetryPolicy:
    """How often a backend retries a request that failed for a transient reason."""

    attempts: int = 3
    first_delay: float = 0.5
    timeout: float = 30.0


__all__ = [
    "BackendEvent",
    "EventCallback",
    "Media",
    "MediaHost",
    "MediaRef",
    "MessageReceived",
    "MessageState",
    "RetryPolicy",
    "SmsBackend",
    "StatusUpdate",
    "WebhookBackend",
    "WebhookForbidden",
    "WebhookMalformed",
    "WebhookRequest",
    "data_url",
    "decode_data_url",
    "default_filename",
    "now_ms",
]
