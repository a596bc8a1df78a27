"""Twilio Programmable Messaging: a number rented from Twilio.

Sending: ``POST {api}/2010-04-01/Accounts/{sid}/Messages.json`` (form, basic auth with the
Account SID and Auth Token) with ``StatusCallback`` pointing at the bridge. Outgoing MMS media
must be at a public URL: the bridge serves it itself (:class:`MediaHost`) under an unguessable
path. Receiving: Twilio calls the number's ``SmsUrl`` (the bridge sets it when
``configure_number`` is on) and the status callback; both are signed with ``X-Twilio-Signature``
over the public URL and the sorted form parameters, checked with the ``twilio`` package's
``RequestValidator``. Incoming media (``MediaUrl0..N``) are fetched with the account's credentials.

The API base URL is configurable (``https://api.twilio.com`` by default), and so is the public
URL Twilio calls, because behind a proxy the URL Twilio signs is the public one.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import parse_qsl, quote

import aiohttp
from multidict import MultiDict
from twilio.request_validator import RequestValidator, get_signature_algorithm

from bridges.core.errors import ConversionError, LoginError, SendError

from .base import (
    BackendEvent,
    EventCallback,
    Media,
    MediaHost,
    MediaRef,
    MessageReceived,
    MessageState,
    RetryPolicy,
    StatusUpdate,
    WebhookForbidden,
    WebhookMalformed,
    WebhookRequest,
    default_filename,
    now_ms,
)
from .http import Unreachable, request

log = logging.getLogger("caliopen.sms.twilio")

API_URL = "https://api.twilio.com"
MAX_BODY = 1600  # Twilio refuses longer bodies (error 21617)
ACCOUNT_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")
STATES = {
    "accepted": MessageState.QUEUED, "scheduled": MessageState.QUEUED, "queued": MessageState.QUEUED,
    "sending": MessageState.QUEUED, "sent": MessageState.SENT, "delivered": MessageState.DELIVERED,
    "read": MessageState.DELIVERED, "failed": MessageState.FAILED, "undelivered": MessageState.FAILED,
    "canceled": MessageState.FAILED,
}
# What the person sees for the delivery errors that happen most (twilio.com/docs/api/errors).
ERRORS = {
    "30003": "the phone is switched off or out of reach",
    "30004": "the recipient blocks messages",
    "30005": "the number does not exist",
    "30006": "the number is a landline or its carrier cannot take SMS",
    "30007": "the carrier filtered it as spam",
    "30008": "the carrier gave no reason",
}
INBOUND = "twilio-inbound"
STATUS = "twilio-status"


class TwilioBackend:
    """One Twilio number of one account."""

    name = "twilio"
    third_party = True
    can_send_media = True

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        account_sid: str,
        auth_token: str,
        phone_number: str,
        webhook_base: str,
        api_url: str = API_URL,
        media_host: MediaHost | None = None,
        configure_number: bool = True,
        max_media_size: int = 20 * 1024 * 1024,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.session = session
        self.account_sid = account_sid.strip()
        self.auth_token = auth_token.strip()
        self.auth = (self.account_sid, self.auth_token)
        self.phone_number = phone_number
        self.webhook_base = webhook_base.rstrip("/")
        self.api_url = api_url.rstrip("/")
        self.media_host = media_host
        self.configure_number = configure_number
        self.max_media_size = max_media_size
        self.policy = policy or RetryPolicy()
        self.validator = RequestValidator(self.auth_token)
        self.number_sid: str | None = None
        self._on_event: EventCallback | None = None

    what = "Twilio"

    @property
    def account_url(self) -> str:
        return f"{self.api_url}/2010-04-01/Accounts/{quote(self.account_sid)}"

    @property
    def inbound_url(self) -> str:
        return f"{self.webhook_base}/{INBOUND}"

    @property
    def status_url(self) -> str:
        return f"{self.webhook_base}/{STATUS}"

    async def _get(self, url: str, **kwargs: Any) -> Any:
        return await request(self.session, "GET", url, policy=self.policy, what=self.what, auth=self.auth, **kwargs)

    # --- settings -------------------------------------------------------------------------

    async def check(self) -> None:
        """Fetch the account and find the number in it (I/O). Raises LoginError."""
        if not ACCOUNT_SID.match(self.account_sid):
            raise LoginError("An Account SID is AC followed by 32 hexadecimal characters (see the Twilio console).")
        if not self.auth_token:
            raise LoginError("The Auth Token is empty.")
        try:
            res = await self._get(f"{self.account_url}.json")
            if res.status in (401, 403, 404):
                raise LoginError("Twilio refused the Account SID or Auth Token.")
            account = res.json()
            if res.status != 200 or not isinstance(account, dict):
                raise LoginError(f"Twilio answered HTTP {res.status} for the account.")
            if account.get("status") not in (None, "active"):
                raise LoginError(f"The Twilio account is {account.get('status')}.")
            await self._find_number()
        except Unreachable as e:
            raise LoginError(f"Could not reach Twilio: {e}.") from e

    async def _find_number(self) -> str:
        res = await self._get(f"{self.account_url}/IncomingPhoneNumbers.json",
                              params={"PhoneNumber": self.phone_number})
        if res.status in (401, 403):
            raise LoginError("Twilio refused the Account SID or Auth Token.")
        body = res.json()
        numbers = body.get("incoming_phone_numbers") if isinstance(body, dict) else None
        if res.status != 200 or not isinstance(numbers, list):
            raise LoginError(f"Twilio answered HTTP {res.status} for the account's numbers.")
        for number in numbers:
            if isinstance(number, dict) and number.get("phone_number") == self.phone_number:
                self.number_sid = str(number["sid"])
                return self.number_sid
        raise LoginError(f"{self.phone_number} is not a number of this Twilio account.")

    # --- sending --------------------------------------------------------------------------

    async def send(self, to: list[str], text: str, media: list[Media]) -> str:
        """Create a Message; returns its SID (I/O). Raises SendError."""
        if len(to) != 1:
            raise SendError("Twilio sends to one number at a time: group conversations cannot be answered "
                            "through Twilio.")
        if len(text) > MAX_BODY:
            raise SendError(f"The message has {len(text)} characters; Twilio takes at most {MAX_BODY}. "
                            "Send it in shorter parts.")
        if not text and not media:
            raise SendError("There is no text to send.")
        form: list[tuple[str, str]] = [("To", to[0]), ("From", self.phone_number), ("StatusCallback", self.status_url)]
        if text:
            form.append(("Body", text))
        if media:
            if self.media_host is None:
                raise SendError("This bridge cannot publish files for Twilio to fetch.")
            form.extend(("MediaUrl", self.media_host.publish(m)) for m in media)
        try:
            res = await request(self.session, "POST", f"{self.account_url}/Messages.json", policy=self.policy,
                                what=self.what, auth=self.auth, data=form)
        except Unreachable as e:
            raise SendError(f"{e}; the message was not sent.", retryable=True) from e
        body = res.json()
        if res.status in (200, 201) and isinstance(body, dict) and body.get("sid"):
            return str(body["sid"])
        if res.status == 401:
            raise SendError("Twilio refused the credentials; log in again with `login sms twilio`.")
        detail = ""
        if isinstance(body, dict) and body.get("message"):
            detail = f": {body['message']}" + (f" (error {body['code']})" if body.get("code") else "")
        raise SendError(f"Twilio refused the message{detail or f' (HTTP {res.status})'}.")

    # --- receiving ------------------------------------------------------------------------

    async def start_receiving(self, on_event: EventCallback) -> None:
        """Point the number's incoming-message webhook at the bridge, when asked to (I/O).

        Raises LoginError when Twilio refuses, Unreachable when it does not answer.
        """
        self._on_event = on_event
        if not self.configure_number:
            return
        sid = self.number_sid or await self._find_number()
        res = await request(self.session, "POST", f"{self.account_url}/IncomingPhoneNumbers/{quote(sid)}.json",
                            policy=self.policy, what=self.what, auth=self.auth,
                            data={"SmsUrl": self.inbound_url, "SmsMethod": "POST"})
        if res.status in (401, 403):
            raise LoginError("Twilio refused the Account SID or Auth Token.")
        if res.status != 200:
            raise LoginError(f"Twilio refused to set the number's webhook (HTTP {res.status}).")

    async def stop(self) -> None:
        self._on_event = None

    async def unregister(self) -> None:
        """Nothing to undo: the number keeps its webhook until it is pointed elsewhere."""

    def parse_webhook(self, req: WebhookRequest) -> list[BackendEvent]:
        """Verify and parse an incoming-message or status-callback request (no I/O)."""
        if req.kind not in (INBOUND, STATUS):
            raise WebhookForbidden(f"Twilio does not call {req.kind}")
        signature = req.headers.get("X-Twilio-Signature")
        if not signature:
            raise WebhookForbidden("unsigned Twilio webhook")
        if req.method != "POST" or not req.content_type.startswith("application/x-www-form-urlencoded"):
            raise WebhookMalformed("not a form POST")
        try:
            params = MultiDict(parse_qsl(req.body.decode("ascii"), keep_blank_values=True, strict_parsing=False,
                                         errors="strict"))
        except (UnicodeDecodeError, ValueError):
            raise WebhookMalformed("the form is not URL-encoded UTF-8") from None
        algorithm = get_signature_algorithm(req.headers.get("X-Twilio-Webhooks-Signature-Settings"))
        if not self.validator.validate(req.url, params, signature, algorithm):
            raise WebhookForbidden("wrong Twilio webhook signature")
        if params.get("AccountSid") != self.account_sid:
            raise WebhookForbidden("Twilio webhook for another account")
        sid = params.get("MessageSid") or params.get("SmsSid")
        if not sid:
            raise WebhookMalformed("no MessageSid")
        if req.kind == STATUS:
            return self._status(sid, params)
        return [self._inbound(sid, params)]

    def _status(self, sid: str, params: MultiDict[str]) -> list[BackendEvent]:
        status = params.get("MessageStatus") or params.get("SmsStatus")
        if not status:
            raise WebhookMalformed("a status callback without MessageStatus")
        state = STATES.get(status)
        if state is None:
            return []  # receiving/received: about incoming messages
        error = None
        if state == MessageState.FAILED:
            code = params.get("ErrorCode") or ""
            error = ERRORS.get(code, f"Twilio reported it {status}") + (f" (Twilio error {code})" if code else "")
        return [StatusUpdate(id=sid, state=state, timestamp=now_ms(), error=error, recipient=params.get("To"))]

    def _inbound(self, sid: str, params: MultiDict[str]) -> MessageReceived:
        sender = params.get("From")
        if not sender:
            raise WebhookMalformed("an incoming message without From")
        try:
            count = int(params.get("NumMedia") or 0)
        except ValueError:
            raise WebhookMalformed("NumMedia is not a number") from None
        media = []
        for i in range(count):
            url = params.get(f"MediaUrl{i}")
            if not url:
                raise WebhookMalformed(f"MediaUrl{i} is missing")
            media.append(MediaRef(ref=url, mimetype=params.get(f"MediaContentType{i}") or "application/octet-stream"))
        return MessageReceived(id=sid, sender=sender, to=params.get("To"), text=params.get("Body") or "",
                               timestamp=now_ms(), media=tuple(media))

    async def fetch_media(self, ref: MediaRef) -> Media:
        """Download an incoming MMS attachment (I/O).

        The account's credentials are sent only to the configured API; Twilio's redirect to its
        media store is followed without them. Raises ConversionError when it is gone or too big,
        Unreachable when Twilio does not answer (the core tries again later).
        """
        auth = self.auth if ref.ref.startswith(self.api_url + "/") else None
        res = await request(self.session, "GET", ref.ref, policy=self.policy, what=self.what, auth=auth)
        if res.status != 200:
            raise ConversionError(f"an attachment could not be downloaded (HTTP {res.status})")
        if len(res.body) > self.max_media_size:
            raise ConversionError(f"an attachment is too big ({len(res.body)} bytes)")
        mimetype = ref.mimetype
        if mimetype == "application/octet-stream":
            mimetype = res.headers.get("Content-Type", mimetype).split(";")[0]
        return Media(data=res.body, mimetype=mimetype, filename=ref.filename or default_filename(mimetype))
