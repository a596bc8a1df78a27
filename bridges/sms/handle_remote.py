"""Remote → bridge: gateway webhooks, and backend events turned into the core's RemoteEvents.

Capabilities: none (receiving only).

Webhooks are served under ``/_caliopen/sms/<login secret>/<kind>`` on the bridge's HTTP server.
A request is acknowledged (HTTP 200) only after every event in it was stored by
``BridgeAPI.queue_remote_event``, so a crash before that makes the gateway send it again, and
the core's de-duplication keeps a retried webhook to one bridged message. Unsigned or forged
requests get 403 and malformed ones 400; both are logged without their body. Outgoing MMS
media for Twilio are served under ``/_caliopen/sms/<login secret>/media/<token>``.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from bridges.core.events import ChatInfo, RemoteEvent, RemoteEventKind, Sender

from . import ids
from .backends.base import (
    BackendEvent,
    Media,
    MessageReceived,
    StatusUpdate,
    WebhookBackend,
    WebhookForbidden,
    WebhookMalformed,
    WebhookRequest,
)
from .convert import LABELS, message_data

if TYPE_CHECKING:
    from .client import SmsClient

log = logging.getLogger("caliopen.sms.webhooks")

MAX_BODY = 48 * 1024 * 1024  # an MMS with inline attachments, base64
MEDIA_TTL = 3600.0
TWIML_EMPTY = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


# --- backend events → RemoteEvents ----------------------------------------------------------


def sender(remote_id: str, raw: str | None = None) -> Sender:
    return Sender(remote_id=remote_id, name=ids.display_name(remote_id, raw))


def chat_info(correspondents: list[str], own: str, backend: str) -> ChatInfo:
    """The room of a conversation with these people (IDs from :func:`ids.sender_id`). No I/O."""
    members = tuple(sender(c) for c in sorted(set(correspondents)))
    name = None if len(members) == 1 else ", ".join(m.name or m.remote_id for m in members)
    topic = f"SMS with your number {ids.display_name(own)} through {LABELS.get(backend, backend)}"
    return ChatInfo(name=name, topic=topic, is_direct=len(members) == 1, members=members)


def remote_events(client: SmsClient, event: BackendEvent) -> list[RemoteEvent]:
    """What the core should queue for one backend event. No I/O."""
    region = client.region
    if isinstance(event, MessageReceived):
        who = ids.sender_id(event.sender, region)
        people = [ids.sender_id(p, region) for p in event.participants] or [who]
        people = [p for p in people if p != client.own_number] or [who]
        portal = ids.portal_id(people)
        return [RemoteEvent(
            login_id=client.login.id, portal_id=portal, kind=RemoteEventKind.MESSAGE, remote_id=event.id,
            sender=sender(who, event.sender), timestamp=event.timestamp,
            data=message_data(event.text, event.media, client.backend.name),
            chat_info=chat_info(people, client.own_number, client.backend.name),
        )]
    if isinstance(event, StatusUpdate):
        portal = client.sent_portals.get(event.id)
        if portal is None:
            if not event.recipient:
                log.info("A status update for an unknown message of login %s was dropped", client.login.id)
                return []
            portal = ids.portal_id([ids.sender_id(event.recipient, region)])
        who = ids.portal_members(portal)[0]
        return [RemoteEvent(
            login_id=client.login.id, portal_id=portal, kind=RemoteEventKind.DELIVERY,
            remote_id=ids.delivery_event_id(event.id, event.state.value), sender=sender(who),
            timestamp=event.timestamp, target_id=event.id,
            data={"state": event.state.value, **({"error": event.error} if event.error else {})},
        )]
    return []


# --- the HTTP side --------------------------------------------------------------------------


@dataclass
class _Published:
    media: Media
    expires: float


class MediaStore:
    """Files published for a gateway to fetch, by owner and unguessable token, for an hour. No I/O."""

    def __init__(self, ttl: float = MEDIA_TTL, limit: int = 256) -> None:
        self.ttl = ttl
        self.limit = limit
        self._items: OrderedDict[tuple[str, str], _Published] = OrderedDict()

    def add(self, owner: str, media: Media) -> str:
        self._purge()
        token = secrets.token_urlsafe(32)
        self._items[(owner, token)] = _Published(media, time.monotonic() + self.ttl)
        while len(self._items) > self.limit:
            self._items.popitem(last=False)
        return token

    def get(self, owner: str, token: str) -> Media | None:
        self._purge()
        item = self._items.get((owner, token))
        return item.media if item else None

    def _purge(self) -> None:
        now = time.monotonic()
        for key in [k for k, item in self._items.items() if item.expires < now]:
            del self._items[key]


class WebhookRouter:
    """The handler registered with ``BridgeAPI.register_webhook("sms", ...)``."""

    def __init__(self) -> None:
        self.clients: dict[str, SmsClient] = {}
        self.media = MediaStore()

    def add(self, secret: str, client: SmsClient) -> None:
        self.clients[secret] = client

    def remove(self, secret: str) -> None:
        self.clients.pop(secret, None)

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        tail = request.match_info.get("tail", "")
        secret, _, rest = tail.partition("/")
        client = self.clients.get(secret)
        if client is None or not rest:
            return web.Response(status=404)
        if rest.startswith("media/"):
            return self._serve_media(request, secret, rest.removeprefix("media/"))
        return await handle_webhook(client, request, rest)

    def _serve_media(self, request: web.Request, secret: str, token: str) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405)
        media = self.media.get(secret, token)
        if media is None:
            return web.Response(status=404)
        return web.Response(body=media.data, content_type=media.mimetype,
                            headers={"Content-Disposition": f'inline; filename="{media.filename}"',
                                     "Cache-Control": "no-store"})


class ClientMediaHost:
    """A login's share of the media store: what its Twilio backend publishes through. No I/O."""

    def __init__(self, router: WebhookRouter, secret: str, webhook_base: str) -> None:
        self.router = router
        self.secret = secret
        self.webhook_base = webhook_base

    def publish(self, media: Media) -> str:
        return f"{self.webhook_base}/media/{self.router.media.add(self.secret, media)}"


async def _read_body(request: web.Request) -> bytes | None:
    chunks = []
    size = 0
    while True:
        chunk = await request.content.read(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)


async def handle_webhook(client: SmsClient, request: web.Request, kind: str) -> web.StreamResponse:
    """Verify one gateway request, queue what it carries, then acknowledge it."""
    backend = client.backend
    login = client.login.id
    if not isinstance(backend, WebhookBackend):
        return web.Response(status=404)
    if not client.accepting:
        return web.Response(status=503, text="not receiving now")  # the gateway retries later
    body = await _read_body(request)
    if body is None:
        log.warning("SMS webhook for login %s refused: body too large", login)
        return web.Response(status=413)
    # What the gateway signed: the public URL it was given, with the exact path and query it called.
    url = client.public_root + request.raw_path
    req = WebhookRequest(method=request.method, url=url, kind=kind, headers=request.headers, body=body,
                         content_type=request.content_type)
    try:
        events = backend.parse_webhook(req)
    except WebhookForbidden as e:
        log.warning("SMS webhook for login %s refused (403): %s", login, e)
        return web.Response(status=403, text="forbidden")
    except WebhookMalformed as e:
        log.warning("SMS webhook for login %s unreadable (400): %s", login, e)
        return web.Response(status=400, text="malformed")
    try:
        for event in events:
            await client.on_backend_event(event)
    except Exception:
        log.exception("Queueing an SMS webhook of login %s failed; the gateway will retry", login)
        return web.Response(status=500, text="try again")
    if kind == "twilio-inbound":
        return web.Response(text=TWIML_EMPTY, content_type="text/xml")
    return web.json_response({"ok": True})
