"""A Twilio REST API (2010-04-01) server for tests, held to its published spec.

It serves the account, its incoming phone numbers, Messages.json (create and fetch) and media,
checks basic auth with the Account SID and Auth Token, and validates every request and response
against ``twilio-api-v2010-openapi.json`` (see :mod:`tests.emulators.openapi_check`). Like Twilio,
it fetches each outgoing ``MediaUrl`` when a message is created, and calls the bridge's webhooks
(the number's ``SmsUrl``, each message's ``StatusCallback``) as form POSTs signed with
``RequestValidator.compute_signature`` over the URL it was given (the public one) and the
sorted parameters.

Test controls: :meth:`inject_sms` (SMS or MMS), :meth:`status` (also duplicated or out of
order), :meth:`fail_next_sends`, :meth:`post_raw`, and the records :attr:`sent`,
:attr:`deliveries`, :attr:`fetched_media`, :attr:`checker.violations`. ``route`` maps the
public URL the emulator signs to the address it actually calls (a proxy in front of the bridge).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import re
import secrets
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, Callable
from urllib.parse import urlencode

import aiohttp
from aiohttp import web
from multidict import MultiDict
from twilio.request_validator import RequestValidator

from bridges.sandbox.synapse import free_port

from .openapi_check import SpecChecker, validating_middleware
from .server import EmulatorServer

SPEC = "twilio-api-v2010-openapi.json"
E164 = re.compile(r"^\+[1-9]\d{6,14}$")
API = "/2010-04-01/Accounts"


def sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def rfc2822() -> str:
    return formatdate(usegmt=True).replace("GMT", "+0000")


@dataclass
class Delivery:
    kind: str  # "inbound" or "status"
    url: str
    status: int
    body: bytes
    params: list[tuple[str, str]]


@dataclass
class Message:
    sid: str
    to: str
    from_: str
    body: str
    status: str
    direction: str
    status_callback: str | None = None
    media: list[tuple[str, str, bytes]] = field(default_factory=list)  # (ME sid, content type, data)
    error_code: int | None = None


class TwilioEmulator(EmulatorServer):
    def __init__(self, *, account_sid: str | None = None, auth_token: str | None = None,
                 numbers: tuple[str, ...] = ("+15005550006",), route: Callable[[str], str] | None = None,
                 auto_status: bool = False) -> None:
        self.account_sid = account_sid or sid("AC")
        self.auth_token = auth_token or secrets.token_hex(16)
        self.numbers = {n: {"sid": sid("PN"), "sms_url": None, "sms_method": "POST"} for n in numbers}
        self.route = route or (lambda url: url)
        self.auto_status = auto_status
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.checker = SpecChecker(SPEC, self.base_url)
        self.messages: dict[str, Message] = {}
        self.sent: list[Message] = []
        self.deliveries: list[Delivery] = []
        self.fetched_media: list[tuple[str, int, str, bytes]] = []  # (url, status, content type, data)
        self._fail_next = 0
        self._fail_status = 503
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def violations(self) -> list[str]:
        return self.checker.violations

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(middlewares=[validating_middleware(self.checker), self._auth])
        app.router.add_get(f"{API}/{{AccountSid}}.json", self._account)
        app.router.add_get(f"{API}/{{AccountSid}}/IncomingPhoneNumbers.json", self._numbers)
        app.router.add_post(f"{API}/{{AccountSid}}/IncomingPhoneNumbers/{{Sid}}.json", self._update_number)
        app.router.add_post(f"{API}/{{AccountSid}}/Messages.json", self._create_message)
        app.router.add_get(f"{API}/{{AccountSid}}/Messages/{{Sid}}.json", self._fetch_message)
        app.router.add_get(f"{API}/{{AccountSid}}/Messages/{{MessageSid}}/Media/{{Sid}}", self._media)
        await self._serve(app)

    # --- the API --------------------------------------------------------------------------

    @staticmethod
    def _error(status: int, code: int, message: str) -> web.Response:
        return web.json_response({"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
                                  "status": status}, status=status)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        expected = "Basic " + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if not hmac.compare_digest(request.headers.get("Authorization", ""), expected):
            return self._error(401, 20003, "Authenticate")
        if request.match_info.get("AccountSid", self.account_sid) != self.account_sid:
            return self._error(404, 20404, "The requested resource was not found")
        return await handler(request)

    def _uri(self, tail: str) -> str:
        return f"{API}/{self.account_sid}{tail}"

    async def _account(self, request: web.Request) -> web.Response:
        if request.match_info["AccountSid"] != self.account_sid:
            return self._error(404, 20404, "The requested resource was not found")
        return web.json_response({
            "sid": self.account_sid, "owner_account_sid": self.account_sid, "friendly_name": "Emulated account",
            "status": "active", "type": "Full", "date_created": rfc2822(), "date_updated": rfc2822(),
            "auth_token": self.auth_token, "uri": f"{API}/{self.account_sid}.json", "subresource_uris": {},
        })

    def _number_json(self, number: str) -> dict[str, Any]:
        n = self.numbers[number]
        return {"sid": n["sid"], "account_sid": self.account_sid, "phone_number": number, "friendly_name": number,
                "sms_url": n["sms_url"] or "", "sms_method": n["sms_method"], "api_version": "2010-04-01",
                "capabilities": {"sms": True, "mms": True, "voice": True}, "status": "in-use",
                "date_created": rfc2822(), "date_updated": rfc2822(),
                "uri": self._uri(f"/IncomingPhoneNumbers/{n['sid']}.json")}

    async def _numbers(self, request: web.Request) -> web.Response:
        wanted = request.query.get("PhoneNumber")
        items = [self._number_json(n) for n in self.numbers if wanted in (None, n)]
        uri = self._uri("/IncomingPhoneNumbers.json")
        return web.json_response({"incoming_phone_numbers": items, "page": 0, "page_size": 50, "start": 0,
                                  "end": max(0, len(items) - 1), "uri": uri, "first_page_uri": uri,
                                  "next_page_uri": None, "previous_page_uri": None})

    async def _update_number(self, request: web.Request) -> web.Response:
        number = next((n for n, v in self.numbers.items() if v["sid"] == request.match_info["Sid"]), None)
        if number is None:
            return self._error(404, 20404, "The requested resource was not found")
        form = await request.post()
        for key, attr in (("SmsUrl", "sms_url"), ("SmsMethod", "sms_method")):
            if key in form:
                self.numbers[number][attr] = str(form[key])
        return web.json_response(self._number_json(number))

    def _message_json(self, msg: Message) -> dict[str, Any]:
        return {
            "sid": msg.sid, "account_sid": self.account_sid, "api_version": "2010-04-01", "body": msg.body,
            "to": msg.to, "from": msg.from_, "status": msg.status, "direction": msg.direction,
            "num_media": str(len(msg.media)), "num_segments": str(max(1, -(-len(msg.body) // 153))),
            "date_created": rfc2822(), "date_updated": rfc2822(), "date_sent": None, "error_code": msg.error_code,
            "error_message": None, "price": None, "price_unit": "USD", "messaging_service_sid": None,
            "uri": self._uri(f"/Messages/{msg.sid}.json"),
            "subresource_uris": {"media": self._uri(f"/Messages/{msg.sid}/Media.json")},
        }

    async def _create_message(self, request: web.Request) -> web.Response:
        if self._fail_next > 0:
            self._fail_next -= 1
            return self._error(self._fail_status, 20500, "Internal Server Error")
        form = await request.post()
        to, from_, body = str(form.get("To", "")), str(form.get("From", "")), str(form.get("Body", ""))
        media_urls = [str(u) for u in form.getall("MediaUrl", [])]
        if not E164.match(to):
            return self._error(400, 21211, f"Invalid 'To' Phone Number: {to}")
        if from_ not in self.numbers:
            return self._error(400, 21606, f"The From phone number {from_} is not a valid, SMS-capable inbound "
                                           "phone number or short code for your account.")
        if not body and not media_urls:
            return self._error(400, 21602, "Message body is required.")
        if len(body) > 1600:
            return self._error(400, 21617, "The concatenated message body exceeds the 1600 character limit.")
        msg = Message(sid("MM" if media_urls else "SM"), to, from_, body, "queued", "outbound-api",
                      status_callback=str(form["StatusCallback"]) if "StatusCallback" in form else None)
        for url in media_urls:  # Twilio fetches the media when it takes the message
            assert self._session is not None
            try:
                async with self._session.get(self.route(url)) as resp:
                    data = await resp.read()
                    status = resp.status
                    ctype = resp.headers.get("Content-Type", "application/octet-stream").split(";")[0]
            except aiohttp.ClientError:
                status, ctype, data = 0, "", b""
            self.fetched_media.append((url, status, ctype, data))
            if status != 200:
                return self._error(400, 11200, f"HTTP retrieval failure for {url}")
            msg.media.append((sid("ME"), ctype, data))
        self.messages[msg.sid] = msg
        self.sent.append(msg)
        self._changed.set()
        if self.auto_status and msg.status_callback:
            self._spawn(self._progress(msg))
        return web.json_response(self._message_json(msg), status=201)

    async def _fetch_message(self, request: web.Request) -> web.Response:
        msg = self.messages.get(request.match_info["Sid"])
        if msg is None:
            return self._error(404, 20404, "The requested resource was not found")
        return web.json_response(self._message_json(msg))

    async def _media(self, request: web.Request) -> web.Response:
        msg = self.messages.get(request.match_info["MessageSid"])
        for me_sid, ctype, data in (msg.media if msg else []):
            if me_sid == request.match_info["Sid"]:
                return web.Response(body=data, content_type=ctype)
        return self._error(404, 20404, "The requested resource was not found")

    # --- test controls --------------------------------------------------------------------

    def fail_next_sends(self, count: int, status: int = 503) -> None:
        """Answer the next ``count`` message creations with ``status``."""
        self._fail_next = count
        self._fail_status = status

    def sign(self, url: str, params: list[tuple[str, str]], token: str | None = None) -> str:
        return RequestValidator(token or self.auth_token).compute_signature(url, MultiDict(params))

    async def post_raw(self, url: str, params: list[tuple[str, str]], *, signature: str | None = None,
                       kind: str = "raw", body: bytes | None = None,
                       content_type: str = "application/x-www-form-urlencoded") -> Delivery:
        """POST a form to the bridge at the (public) ``url``: signed unless ``signature`` is given."""
        assert self._session is not None
        headers = {"Content-Type": content_type}
        sig = self.sign(url, params) if signature is None else signature
        if sig:
            headers["X-Twilio-Signature"] = sig
        data = body if body is not None else urlencode(params).encode()
        try:
            async with self._session.post(self.route(url), data=data, headers=headers) as resp:
                delivery = Delivery(kind, url, resp.status, await resp.read(), params)
        except aiohttp.ClientError:
            delivery = Delivery(kind, url, 0, b"", params)  # no connection
        self.deliveries.append(delivery)
        return delivery

    async def inject_sms(self, from_: str, body: str, *, to: str | None = None,
                         media: list[tuple[bytes, str]] = (), message_sid: str | None = None,  # type: ignore[assignment]
                         url: str | None = None) -> tuple[str, Delivery]:
        """A message arrives on one of the account's numbers; Twilio calls its SmsUrl."""
        to = to or next(iter(self.numbers))
        target = url or self.numbers[to]["sms_url"]
        assert target, f"{to} has no SmsUrl configured"
        msg = Message(message_sid or sid("MM" if media else "SM"), to, from_, body, "received", "inbound")
        for data, ctype in media:
            msg.media.append((sid("ME"), ctype, data))
        self.messages[msg.sid] = msg
        params = [("ToCountry", "US"), ("ToState", "CA"), ("SmsMessageSid", msg.sid), ("NumMedia", str(len(media))),
                  ("ToCity", ""), ("FromZip", ""), ("SmsSid", msg.sid), ("FromState", ""), ("SmsStatus", "received"),
                  ("FromCity", ""), ("Body", body), ("FromCountry", "FR"), ("To", to), ("MessagingServiceSid", ""),
                  ("ToZip", ""), ("NumSegments", str(max(1, -(-len(body) // 153)))), ("MessageSid", msg.sid),
                  ("AccountSid", self.account_sid), ("From", from_), ("ApiVersion", "2010-04-01")]
        for i, (me_sid, ctype, _) in enumerate(msg.media):
            params += [(f"MediaContentType{i}", ctype),
                       (f"MediaUrl{i}", f"{self.base_url}{self._uri(f'/Messages/{msg.sid}/Media/{me_sid}')}")]
        return msg.sid, await self.post_raw(target, params, kind="inbound")

    async def status(self, message_sid: str, status: str, *, error_code: int | None = None) -> Delivery:
        """Call a sent message's StatusCallback with ``status``."""
        msg = self.messages[message_sid]
        assert msg.status_callback, "the message has no StatusCallback"
        msg.status = status
        params = [("SmsSid", msg.sid), ("SmsStatus", status), ("MessageStatus", status), ("To", msg.to),
                  ("MessageSid", msg.sid), ("AccountSid", self.account_sid), ("From", msg.from_),
                  ("ApiVersion", "2010-04-01")]
        if error_code is not None:
            msg.error_code = error_code
            params.append(("ErrorCode", str(error_code)))
        return await self.post_raw(msg.status_callback, params, kind="status")

    async def _progress(self, msg: Message) -> None:
        await asyncio.sleep(0.05)
        for status in ("sent", "delivered"):
            await self.status(msg.sid, status)

    async def wait_sent(self, predicate: Callable[[Message], bool], timeout: float = 30) -> Message:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for msg in self.sent:
                if predicate(msg):
                    return msg
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError(f"no matching message was sent; sent: {[m.body[:20] for m in self.sent]}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))
            except asyncio.TimeoutError:
                pass

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
