"""SMSGate (capcom6/android-sms-gateway): the user's own Android phone as the gateway.

Sending: ``POST {base}/messages`` with basic auth; the bridge chooses the message ID, so a
request retried after a timeout is refused as a duplicate (409) instead of sent twice.
Receiving: the bridge registers its webhook URL for ``sms:received``, ``sms:sent``,
``sms:delivered``, ``sms:failed`` (and ``mms:downloaded`` where the app offers it) with
``POST {base}/webhooks``. Each webhook is signed: ``X-Signature`` is the hex HMAC-SHA256, keyed
with the app's signing key, of the raw body followed by the ``X-Timestamp`` value (unix seconds);
stale timestamps are refused.

The base URL is the phone's local server (``http://<phone>:8080``) or the cloud server
(:data:`CLOUD_URL`); in cloud mode the SMSGate server relays the messages, so it is a third party.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from datetime import datetime
from typing import Any
from urllib.parse import quote

import aiohttp

from bridges.core.errors import ConversionError, LoginError, SendError

from .base import (
    BackendEvent,
    EventCallback,
    Media,
    MediaRef,
    MessageReceived,
    MessageState,
    RetryPolicy,
    StatusUpdate,
    WebhookForbidden,
    WebhookMalformed,
    WebhookRequest,
    data_url,
    decode_data_url,
    default_filename,
    now_ms,
)
from .http import Unreachable, request

log = logging.getLogger("caliopen.sms.smsgate")

CLOUD_URL = "https://api.sms-gate.app/3rdparty/v1"
#: Webhook events the bridge needs, and the suffix of the webhook ID it registers for each.
EVENTS = {"sms:received": "received", "sms:sent": "sent", "sms:delivered": "delivered", "sms:failed": "failed"}
#: Registered too where the app supports it (newer versions); refused ones are skipped.
OPTIONAL_EVENTS = {"mms:downloaded": "mms"}
STATUS_EVENTS = {
    "sms:sent": (MessageState.SENT, "sentAt"),
    "sms:delivered": (MessageState.DELIVERED, "deliveredAt"),
    "sms:failed": (MessageState.FAILED, "failedAt"),
}


def sign(key: str, body: bytes, timestamp: str) -> str:
    """The ``X-Signature`` SMSGate puts on a webhook. No I/O."""
    return hmac.new(key.encode(), body + timestamp.encode(), hashlib.sha256).hexdigest()


def parse_time(value: Any) -> int:
    """Milliseconds since the epoch from an RFC 3339 string; now when it is missing or odd."""
    if isinstance(value, str) and value:
        try:
            return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
        except ValueError:
            pass
    return now_ms()


class SmsGateBackend:
    """One SMSGate account (a phone in local mode, or a cloud account)."""

    name = "smsgate"
    can_send_media = False

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        username: str,
        password: str,
        signing_key: str,
        webhook_url: str,
        max_age: float = 300,
        policy: RetryPolicy | None = None,
        hook_key: str | None = None,
    ) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.auth = (username, password)
        self.signing_key = signing_key
        self.webhook_url = webhook_url
        self.max_age = max_age
        self.hook_key = hook_key or webhook_url
        self.policy = policy or RetryPolicy()
        self.third_party = self.base_url.startswith("https://api.sms-gate.app")
        self._on_event: EventCallback | None = None
        self.registered: list[str] = []

    @property
    def what(self) -> str:
        return f"SMSGate at {self.base_url}"

    def hook_id(self, suffix: str) -> str:
        """A webhook ID stable for this login (``hook_key``), so registering again replaces, never adds."""
        digest = hashlib.sha256(self.hook_key.encode()).hexdigest()[:12]
        return f"caliopen-{digest}-{suffix}"

    # --- settings -------------------------------------------------------------------------

    async def check(self) -> None:
        """List the webhooks: proves the address and the credentials (I/O). Raises LoginError."""
        if not self.signing_key:
            raise LoginError("The webhook signing key is empty: copy it from the app's Settings → Webhooks.")
        try:
            res = await request(self.session, "GET", f"{self.base_url}/webhooks", policy=self.policy,
                                what=self.what, auth=self.auth)
        except Unreachable as e:
            raise LoginError(f"Could not reach SMSGate: {e}. Check the address and that the app is running.") from e
        if res.status in (401, 403):
            raise LoginError("SMSGate refused the username or password.")
        if res.status != 200 or not isinstance(res.json(), list):
            raise LoginError(f"{self.what} answered HTTP {res.status}: is this the SMSGate API address?")

    # --- sending --------------------------------------------------------------------------

    async def send(self, to: list[str], text: str, media: list[Media]) -> str:
        """Queue a text message on the phone; returns its ID (I/O). Raises SendError."""
        if media:
            raise SendError("SMSGate sends text only: pictures and files cannot be sent through it.")
        if not text:
            raise SendError("There is no text to send.")
        message_id = secrets.token_hex(16)
        payload = {"id": message_id, "textMessage": {"text": text}, "phoneNumbers": list(to),
                   "withDeliveryReport": True}
        try:
            res = await request(self.session, "POST", f"{self.base_url}/messages", policy=self.policy,
                                what=self.what, auth=self.auth, json=payload)
        except Unreachable as e:
            raise SendError(f"{e}; the message was not sent.", retryable=True) from e
        body = res.json()
        if res.status == 202 and isinstance(body, dict):
            return str(body.get("id") or message_id)
        if res.status == 409:
            return message_id  # an earlier attempt of this same request got through
        if res.status in (401, 403):
            raise SendError("SMSGate refused the credentials; log in again with `login sms smsgate`.")
        reason = body.get("message") if isinstance(body, dict) else None
        raise SendError(f"SMSGate refused the message (HTTP {res.status}{': ' + str(reason) if reason else ''}).")

    # --- receiving ------------------------------------------------------------------------

    async def start_receiving(self, on_event: EventCallback) -> None:
        """Register the bridge's webhook for each event (I/O).

        Raises LoginError when the credentials are refused and
        :class:`bridges.sms.backends.http.Unreachable` when the gateway does not answer.
        """
        self._on_event = on_event
        registered = []
        for event, suffix in {**EVENTS, **OPTIONAL_EVENTS}.items():
            hook = {"id": self.hook_id(suffix), "url": self.webhook_url, "event": event}
            res = await request(self.session, "POST", f"{self.base_url}/webhooks", policy=self.policy,
                                what=self.what, auth=self.auth, json=hook)
            if res.status in (401, 403):
                raise LoginError("SMSGate refused the username or password.")
            if res.status not in (200, 201):
                if event in OPTIONAL_EVENTS:
                    log.info("SMSGate did not take the %s webhook (HTTP %d); MMS will not be bridged",
                             event, res.status)
                    continue
                raise LoginError(f"SMSGate refused to register the {event} webhook (HTTP {res.status}).")
            registered.append(hook["id"])
        self.registered = registered

    async def stop(self) -> None:
        self._on_event = None

    async def unregister(self) -> None:
        """Delete the webhooks this bridge registered (I/O); errors are logged, not raised."""
        for suffix in [*EVENTS.values(), *OPTIONAL_EVENTS.values()]:
            try:
                await request(self.session, "DELETE", f"{self.base_url}/webhooks/{quote(self.hook_id(suffix))}",
                              policy=self.policy, what=self.what, auth=self.auth)
            except Unreachable as e:
                log.warning("Could not delete an SMSGate webhook: %s", e)

    def verify(self, headers: Any, body: bytes) -> None:
        """Check ``X-Signature`` and ``X-Timestamp``. Raises WebhookForbidden. No I/O."""
        signature = headers.get("X-Signature")
        timestamp = headers.get("X-Timestamp")
        if not signature or not timestamp:
            raise WebhookForbidden("unsigned SMSGate webhook")
        try:
            ts = int(timestamp)
        except ValueError:
            raise WebhookForbidden("SMSGate webhook with an unreadable timestamp") from None
        if abs(time.time() - ts) > self.max_age:
            raise WebhookForbidden("stale SMSGate webhook timestamp")
        if not hmac.compare_digest(sign(self.signing_key, body, timestamp), signature.strip().lower()):
            raise WebhookForbidden("wrong SMSGate webhook signature")

    def parse_webhook(self, req: WebhookRequest) -> list[BackendEvent]:
        """Verify and parse one SMSGate webhook (no I/O). See :class:`WebhookBackend`."""
        if req.kind != "smsgate":
            raise WebhookForbidden(f"SMSGate does not call {req.kind}")
        self.verify(req.headers, req.body)
        try:
            envelope = json.loads(req.body)
        except (ValueError, UnicodeDecodeError):
            raise WebhookMalformed("the body is not JSON") from None
        if not isinstance(envelope, dict) or not isinstance(envelope.get("payload"), dict):
            raise WebhookMalformed("no payload object")
        event = envelope.get("event")
        payload: dict[str, Any] = envelope["payload"]
        message_id = payload.get("messageId")
        if event in ("sms:received", "mms:downloaded", *STATUS_EVENTS) and not (
                isinstance(message_id, str) and message_id):
            raise WebhookMalformed(f"{event} without a messageId")
        if event == "sms:received":
            sender = payload.get("phoneNumber") or payload.get("sender")
            text = payload.get("message")
            if not isinstance(sender, str) or not isinstance(text, str):
                raise WebhookMalformed("sms:received without phoneNumber or message")
            return [MessageReceived(id=message_id, sender=sender, text=text,
                                    timestamp=parse_time(payload.get("receivedAt")),
                                    to=payload.get("recipient") if isinstance(payload.get("recipient"), str) else None)]
        if event in STATUS_EVENTS:
            state, time_key = STATUS_EVENTS[event]
            reason = payload.get("reason")
            return [StatusUpdate(id=message_id, state=state, timestamp=parse_time(payload.get(time_key)),
                                 error=str(reason) if state == MessageState.FAILED and reason else None,
                                 recipient=payload.get("phoneNumber"))]
        if event == "mms:downloaded":
            return [self._mms(message_id, payload)]
        return []  # system:ping, sms:data-received, mms:received: nothing to bridge

    def _mms(self, message_id: str, payload: dict[str, Any]) -> MessageReceived:
        sender = payload.get("phoneNumber") or payload.get("sender")
        attachments = payload.get("attachments")
        if not isinstance(sender, str) or not isinstance(attachments, list):
            raise WebhookMalformed("mms:downloaded without phoneNumber or attachments")
        media = []
        for att in attachments:
            if not isinstance(att, dict) or "partId" not in att:
                raise WebhookMalformed("an MMS attachment without partId")
            mimetype = str(att.get("contentType") or "application/octet-stream")
            if mimetype.startswith(("text/plain", "application/smil")):
                continue  # the text is in "body"; SMIL is layout
            name = att.get("name") if isinstance(att.get("name"), str) else None
            if isinstance(att.get("data"), str) and att["data"]:
                try:
                    ref = data_url(base64.b64decode(att["data"], validate=True), mimetype)
                except ValueError:
                    raise WebhookMalformed("an MMS attachment with bad base64") from None
            else:
                ref = f"{self.base_url}/inbox/{quote(message_id)}/attachments/{int(att['partId'])}"
            media.append(MediaRef(ref=ref, mimetype=mimetype, filename=name))
        text = payload.get("body")
        return MessageReceived(id=message_id, sender=sender, text=text if isinstance(text, str) else "",
                               timestamp=parse_time(payload.get("receivedAt")), media=tuple(media))

    async def fetch_media(self, ref: MediaRef) -> Media:
        """An MMS attachment: inline, or from the gateway's inbox API (I/O).

        Raises ConversionError when it is gone, Unreachable when the gateway does not answer.
        """
        inline = decode_data_url(ref)
        if inline is not None:
            return inline
        if not ref.ref.startswith(self.base_url + "/"):
            raise ConversionError("an attachment pointed outside the SMSGate server")
        # Unreachable propagates: the core keeps the message queued and tries again later.
        res = await request(self.session, "GET", ref.ref, policy=self.policy, what=self.what, auth=self.auth)
        if res.status != 200:
            raise ConversionError(f"an attachment could not be downloaded (HTTP {res.status})")
        return Media(data=res.body, mimetype=ref.mimetype, filename=ref.filename or default_filename(ref.mimetype))
