"""An SMSGate (capcom6/android-sms-gateway) server for tests, held to its published spec.

It serves the part of the API the bridge uses (``/messages``, ``/webhooks``, ``/health``, MMS
attachments under ``/inbox``), checks basic auth, validates every request and response against
``smsgate-openapi.json`` (see :mod:`tests.emulators.openapi_check`), and calls the registered
webhooks the way the app does: JSON body, ``X-Timestamp`` in unix seconds and ``X-Signature`` =
hex HMAC-SHA256(signing key, raw body + timestamp). Each webhook payload is validated against
its event's schema in the spec too.

Test controls: :meth:`inject_sms`, :meth:`inject_mms`, :meth:`report` (status webhooks, also
duplicated or out of order), :meth:`fail_next_sends`, :meth:`post_raw` (forged requests), and
the records :attr:`sent`, :attr:`deliveries`, :attr:`checker.violations`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import aiohttp
from aiohttp import web

from bridges.sandbox.synapse import free_port

from .openapi_check import SpecChecker, validating_middleware
from .server import EmulatorServer

SPEC = "smsgate-openapi.json"
PAYLOAD_SCHEMAS = {
    "sms:received": "SmsReceivedPayload", "sms:sent": "SmsSentPayload", "sms:delivered": "SmsDeliveredPayload",
    "sms:failed": "SmsFailedPayload", "mms:downloaded": "MmsDownloadedPayload", "system:ping": "SystemPingPayload",
}
TIME_KEYS = {"sms:sent": "sentAt", "sms:delivered": "deliveredAt", "sms:failed": "failedAt"}


def rfc3339(ts: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if ts is None else ts, timezone.utc).isoformat(timespec="milliseconds")


def sign(key: str, body: bytes, timestamp: str) -> str:
    """What the app puts in ``X-Signature``."""
    return hmac.new(key.encode(), body + timestamp.encode(), hashlib.sha256).hexdigest()


def random_id(n: int = 21) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
    return "".join(secrets.choice(alphabet) for _ in range(n))


@dataclass
class Delivery:
    """One webhook call the emulator made, and what the bridge answered."""

    event: str
    url: str
    status: int
    body: bytes


@dataclass
class SentMessage:
    id: str
    phone_numbers: list[str]
    text: str
    request: dict[str, Any]
    state: str = "Pending"
    recipient_states: dict[str, str] = field(default_factory=dict)


class SmsGateEmulator(EmulatorServer):
    def __init__(self, *, username: str = "sms-user", password: str = "sms-pass", signing_key: str = "sign-key",
                 prefix: str = "/3rdparty/v1", device_id: str = "PyDmBQZZXYmyxMwED8Fzy",
                 auto_report: bool = False) -> None:
        self.username = username
        self.password = password
        self.signing_key = signing_key
        self.prefix = prefix
        self.device_id = device_id
        self.auto_report = auto_report
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}{prefix}"
        self.checker = SpecChecker(SPEC, self.base_url)
        self.webhooks: dict[str, dict[str, Any]] = {}
        self.sent: list[SentMessage] = []
        self.deliveries: list[Delivery] = []
        self.attachments: dict[tuple[str, int], bytes] = {}
        self.refuse_events: set[str] = set()  # webhook events this "app version" does not know
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
        p = self.prefix
        app.router.add_get(f"{p}/health", self._health)
        app.router.add_get(f"{p}/webhooks", self._list_webhooks)
        app.router.add_post(f"{p}/webhooks", self._add_webhook)
        app.router.add_delete(f"{p}/webhooks/{{id}}", self._delete_webhook)
        app.router.add_post(f"{p}/messages", self._send)
        app.router.add_get(f"{p}/messages/{{id}}", self._get_message)
        app.router.add_get(f"{p}/inbox/{{id}}/attachments/{{part}}", self._attachment)
        await self._serve(app)

    # --- the API --------------------------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
        if request.path.endswith("/health"):
            return await handler(request)
        expected = "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        if not hmac.compare_digest(request.headers.get("Authorization", ""), expected):
            return web.json_response({"code": 401, "message": "Unauthorized"}, status=401)
        return await handler(request)

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "pass", "version": "emulator", "releaseId": 1,
                                  "checks": {"messages:failed": {"status": "pass", "observedValue": 0,
                                                                 "observedUnit": "messages"}}})

    async def _list_webhooks(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.webhooks.values()))

    async def _add_webhook(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("event") in self.refuse_events:
            return web.json_response({"code": 400, "message": f"unknown event {body.get('event')}"}, status=400)
        hook = {"id": body.get("id") or random_id(), "url": body["url"], "event": body["event"],
                "deviceId": self.device_id}
        self.webhooks[hook["id"]] = hook
        return web.json_response(hook, status=201)

    async def _delete_webhook(self, request: web.Request) -> web.Response:
        self.webhooks.pop(request.match_info["id"], None)
        return web.Response(status=204)

    def _message_state(self, msg: SentMessage) -> dict[str, Any]:
        return {"id": msg.id, "deviceId": self.device_id, "state": msg.state, "isHashed": False,
                "isEncrypted": False,
                "recipients": [{"phoneNumber": n, "state": msg.recipient_states.get(n, msg.state)}
                               for n in msg.phone_numbers]}

    async def _send(self, request: web.Request) -> web.Response:
        if self._fail_next > 0:
            self._fail_next -= 1
            return web.json_response({"code": self._fail_status, "message": "Queue limits exceeded"},
                                     status=self._fail_status)
        body = await request.json()
        msg_id = body.get("id") or random_id()
        if any(m.id == msg_id for m in self.sent):
            return web.json_response({"code": 409, "message": "message with such ID already exists"}, status=409)
        text = (body.get("textMessage") or {}).get("text") or body.get("message") or ""
        numbers = body.get("phoneNumbers") or []
        if not all(isinstance(n, str) and n.lstrip("+").isdigit() and 7 <= len(n.lstrip("+")) <= 15 for n in numbers):
            return web.json_response({"code": 400, "message": "invalid phone number"}, status=400)
        msg = SentMessage(msg_id, list(numbers), text, body)
        self.sent.append(msg)
        self._pulse()
        if self.auto_report:
            self._spawn(self._auto_report(msg))
        return web.json_response(self._message_state(msg), status=202,
                                 headers={"Location": f"{self.prefix}/messages/{msg_id}"})

    async def _get_message(self, request: web.Request) -> web.Response:
        for msg in self.sent:
            if msg.id == request.match_info["id"]:
                return web.json_response(self._message_state(msg))
        return web.json_response({"code": 400, "message": "not found"}, status=400)

    async def _attachment(self, request: web.Request) -> web.Response:
        key = (request.match_info["id"], int(request.match_info["part"]))
        if key not in self.attachments:
            return web.json_response({"code": 404, "message": "attachment not found"}, status=404)
        return web.Response(body=self.attachments[key], content_type="application/octet-stream")

    # --- test controls --------------------------------------------------------------------

    def fail_next_sends(self, count: int, status: int = 503) -> None:
        """Answer the next ``count`` POST /messages with ``status`` (500 or 503)."""
        self._fail_next = count
        self._fail_status = status

    async def deliver(self, event: str, payload: dict[str, Any], *, timestamp: int | None = None,
                      key: str | None = None) -> list[Delivery]:
        """Call every webhook registered for ``event``, signed as the app signs; returns the calls."""
        self.checker.check_schema(PAYLOAD_SCHEMAS[event], payload, f"{event} payload")
        out = []
        for hook in [h for h in self.webhooks.values() if h["event"] == event]:
            envelope = {"deviceId": self.device_id, "event": event, "id": random_id(), "payload": payload,
                        "webhookId": hook["id"]}
            self.checker.check_schema("WebHookEvent", envelope, f"{event} webhook")
            body = json.dumps(envelope, ensure_ascii=False).encode()
            stamp = str(int(time.time()) if timestamp is None else timestamp)
            headers = {"Content-Type": "application/json", "X-Timestamp": stamp,
                       "X-Signature": sign(key or self.signing_key, body, stamp)}
            out.append(await self.post_raw(hook["url"], body, headers, event=event))
        return out

    async def post_raw(self, url: str, body: bytes, headers: dict[str, str], *, event: str = "raw") -> Delivery:
        """POST anything to the bridge (forged or malformed webhooks). Status 0: no connection."""
        assert self._session is not None
        try:
            async with self._session.post(url, data=body, headers=headers) as resp:
                delivery = Delivery(event, url, resp.status, await resp.read())
        except aiohttp.ClientError:
            delivery = Delivery(event, url, 0, b"")  # the bridge is down: the app retries later
        self.deliveries.append(delivery)
        return delivery

    def hook_url(self, event: str = "sms:received") -> str:
        urls = {h["url"] for h in self.webhooks.values() if h["event"] == event}
        assert len(urls) == 1, f"expected one {event} webhook, have {urls}"
        return urls.pop()

    async def inject_sms(self, sender: str, text: str, *, message_id: str | None = None,
                         recipient: str | None = None, received_at: float | None = None) -> tuple[str, list[Delivery]]:
        """A text arrives on the phone. Returns its message ID and the webhook calls."""
        message_id = message_id or random_id()
        payload = {"messageId": message_id, "message": text, "phoneNumber": sender, "sender": sender,
                   "recipient": recipient, "simNumber": 1, "receivedAt": rfc3339(received_at)}
        return message_id, await self.deliver("sms:received", payload)

    async def inject_mms(self, sender: str, text: str, attachments: list[tuple[bytes, str, str | None, bool]],
                         *, message_id: str | None = None) -> tuple[str, list[Delivery]]:
        """An MMS is downloaded on the phone; attachments are (data, content type, name, inline)."""
        message_id = message_id or random_id()
        parts = []
        for i, (data, mime, name, inline) in enumerate(attachments, start=1):
            self.attachments[(message_id, i)] = data
            parts.append({"partId": i, "contentType": mime, "name": name, "size": len(data),
                          "data": base64.b64encode(data).decode() if inline else None})
        payload = {"messageId": message_id, "phoneNumber": sender, "sender": sender, "simNumber": 1,
                   "body": text, "subject": None, "receivedAt": rfc3339(), "attachments": parts}
        return message_id, await self.deliver("mms:downloaded", payload)

    async def report(self, message_id: str, event: str, *, reason: str = "RESULT_ERROR_GENERIC_FAILURE",
                     phone_number: str | None = None) -> list[Delivery]:
        """Send a status webhook (sms:sent, sms:delivered, sms:failed) for a sent message."""
        msg = next((m for m in self.sent if m.id == message_id), None)
        number = phone_number or (msg.phone_numbers[0] if msg else "+10000000000")
        payload: dict[str, Any] = {"messageId": message_id, "phoneNumber": number, "simNumber": 1,
                                   TIME_KEYS[event]: rfc3339()}
        if event == "sms:failed":
            payload["reason"] = reason
        if msg:
            msg.state = {"sms:sent": "Sent", "sms:delivered": "Delivered", "sms:failed": "Failed"}[event]
        return await self.deliver(event, payload)

    async def _auto_report(self, msg: SentMessage) -> None:
        await asyncio.sleep(0.05)
        await self.report(msg.id, "sms:sent")
        await self.report(msg.id, "sms:delivered")

    async def wait_sent(self, predicate: Callable[[SentMessage], bool], timeout: float = 30) -> SentMessage:
        """The first sent message matching ``predicate``, waiting for it."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for msg in self.sent:
                if predicate(msg):
                    return msg
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError(f"no matching message was sent; sent: {[m.text[:20] for m in self.sent]}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))
            except asyncio.TimeoutError:
                pass

    def _pulse(self) -> None:
        self._changed.set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
