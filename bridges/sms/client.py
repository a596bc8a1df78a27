"""One SMS login: a phone number on one backend.

Capabilities: :class:`bridges.core.network.SupportsStartChat` (``start-chat sms +33612345678``).
Not offered (SMS has none of them): edits, reactions, redactions, read receipts, typing,
backfill, contacts.

``connect`` starts receiving in the background (webhook registration or directory polling) and
reports the login state: CONNECTED once the gateway took the webhooks, BAD_CREDENTIALS when it
refused them, TRANSIENT_DISCONNECT while it does not answer (retried with backoff).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from bridges.core.errors import ConversionError, LoginError, SendError, UserInputError
from bridges.core.events import ChatInfo, ConvertedMessage, MatrixMessage, PortalRef, RemoteEvent, SentMessage
from bridges.core.network import LoginState, UserLoginInfo

from . import ids
from .backends.base import BackendEvent, EventCallback, Media, MediaRef, SmsBackend
from .backends.http import Unreachable
from .convert import convert_message
from .handle_matrix import send_message
from .handle_remote import chat_info, remote_events

if TYPE_CHECKING:
    from .connector import Connector

log = logging.getLogger("caliopen.sms.client")

MAX_BACKOFF = 300.0


class SmsClient:
    def __init__(self, connector: Connector, login: UserLoginInfo) -> None:
        self.connector = connector
        self.bridge = connector.bridge
        self.login = login
        self.own_number: str = login.metadata["phone_number"]
        self.region: str | None = login.metadata.get("country")
        self.secret: str = login.secrets["webhook_secret"]
        self.public_root = connector.public_root
        self.webhook_base = f"{connector.webhook_base}/{self.secret}"
        try:
            self.backend: SmsBackend = connector.make_backend(login.metadata, login.secrets)
        except LoginError as e:
            self.backend = UnavailableBackend(str(login.metadata.get("backend")), e.user_message)
        self.sent_portals: dict[str, str] = {}  # backend message ID -> portal, for status updates
        self.accepting = False
        self._connected = False
        self._task: asyncio.Task[None] | None = None
        connector.router.add(self.secret, self)

    # --- lifecycle ------------------------------------------------------------------------

    async def connect(self) -> None:
        self.accepting = True
        await self.bridge.set_login_state(self.login.id, LoginState.CONNECTING)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._start(), name=f"sms-{self.login.id}")

    async def _start(self) -> None:
        delay = 1.0
        while True:
            try:
                await self.backend.start_receiving(self.on_backend_event)
            except LoginError as e:
                await self.bridge.set_login_state(self.login.id, LoginState.BAD_CREDENTIALS, e.user_message)
                return
            except Unreachable as e:
                await self.bridge.set_login_state(self.login.id, LoginState.TRANSIENT_DISCONNECT, str(e))
            except Exception as e:
                log.exception("Starting SMS login %s failed", self.login.id)
                await self.bridge.set_login_state(self.login.id, LoginState.UNKNOWN_ERROR, type(e).__name__)
            else:
                self._connected = True
                await self.bridge.set_login_state(self.login.id, LoginState.CONNECTED)
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)

    async def disconnect(self) -> None:
        self.accepting = False
        self._connected = False
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        await self.backend.stop()

    async def logout(self) -> None:
        """Remove the bridge's webhooks from the gateway; forget the secret path."""
        self.connector.router.remove(self.secret)
        await self.backend.unregister()

    def is_logged_in(self) -> bool:
        return self._connected

    # --- remote → Matrix ------------------------------------------------------------------

    async def on_backend_event(self, event: BackendEvent) -> None:
        """Queue a backend event with the core; returns once it is stored (durably).

        A status update can arrive before the answer to the send it is about: the core keeps it
        and waits a little for the message; one about a message sent elsewhere (the phone's own
        app) is dropped there.
        """
        for remote in remote_events(self, event):
            await self.bridge.queue_remote_event(remote)

    async def get_chat_info(self, portal: PortalRef) -> ChatInfo:
        return chat_info(ids.portal_members(portal.portal_id), self.own_number, self.backend.name)

    async def convert_remote(self, portal: PortalRef, event: RemoteEvent) -> ConvertedMessage:
        return await convert_message(self.backend, event.data, max_media_size=self.connector.config.max_media_size)

    # --- Matrix → remote ------------------------------------------------------------------

    async def handle_matrix_message(self, msg: MatrixMessage) -> SentMessage:
        return await send_message(self, msg)

    # --- SupportsStartChat ----------------------------------------------------------------

    async def resolve_identifier(self, identifier: str) -> tuple[str, ChatInfo]:
        """A number the user typed → (portal ID, chat info). Raises UserInputError."""
        number = ids.normalise(identifier, self.region)
        if number == self.own_number:
            raise UserInputError("That is this login's own number.")
        return ids.portal_id([number]), chat_info([number], self.own_number, self.backend.name)


class UnavailableBackend:
    """Stands in for a login whose settings no longer work (a modem the admin removed)."""

    third_party = False
    can_send_media = False

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason

    async def check(self) -> None:
        raise LoginError(self.reason)

    async def send(self, to: list[str], text: str, media: list[Media]) -> str:
        raise SendError(self.reason)

    async def start_receiving(self, on_event: EventCallback) -> None:
        raise LoginError(self.reason)

    async def stop(self) -> None:
        return None

    async def unregister(self) -> None:
        return None

    async def fetch_media(self, ref: MediaRef) -> Media:
        raise ConversionError(self.reason)
