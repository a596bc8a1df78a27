"""A fake network connector, for testing the core without a real network.

Implements the required interface plus SupportsStartChat, SupportsAvatars and SupportsReadReceipts. It long-polls the
:class:`tests.fakes.remote.FakeRemote` service for inbound messages (cursor kept in the login's
metadata, advanced only after the core stored the events) and posts outbound ones.

Config (``networks.fake``): ``enabled``, ``module: tests.fakes.network``, ``ghost_prefix``,
``displayname_template``, ``remote_url``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any

import aiohttp

from bridges.core.errors import ConversionError, LoginError, SendError, UserInputError
from bridges.core.events import (
    ChatInfo, ConvertedMessage, ConvertedPart, Media, MatrixMessage, MessageRef, PortalRef, RemoteEvent,
    RemoteEventKind, Sender, SentMessage,
)
from bridges.core.network import (
    BridgeAPI, FieldType, LoginField, LoginFlow, LoginResult, LoginState, LoginStep, NetworkCapabilities,
    StepType, UserLoginInfo,
)

log = logging.getLogger("caliopen.fake")


class Connector:
    name = "fake"
    display_name = "Fake"

    def __init__(self, bridge: BridgeAPI, config: dict[str, Any]) -> None:
        self.bridge = bridge
        self.url = str(config["remote_url"]).rstrip("/")
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.session = aiohttp.ClientSession()

    async def stop(self) -> None:
        if self.session:
            await self.session.close()

    def get_login_flows(self) -> list[LoginFlow]:
        return [LoginFlow("password", "Password", "Log in with a username and password")]

    def create_login(self, user_mxid: str, flow_id: str) -> Login:
        return Login(self)

    def load_login(self, login: UserLoginInfo) -> Client:
        return Client(self, login)

    def get_capabilities(self) -> NetworkCapabilities:
        return NetworkCapabilities(max_text_length=10000, media=True)


class Login:
    def __init__(self, connector: Connector) -> None:
        self.connector = connector

    async def start(self) -> LoginStep:
        return LoginStep(StepType.USER_INPUT, "fake.credentials", "Log in to the fake network.", fields=(
            LoginField("username", "username", FieldType.USERNAME),
            LoginField("password", "password", FieldType.PASSWORD),
        ))

    async def submit_input(self, values: dict[str, str]) -> LoginStep:
        assert self.connector.session is not None
        try:
            async with self.connector.session.post(f"{self.connector.url}/login", json=values) as resp:
                body = await resp.json()
        except aiohttp.ClientError as e:
            raise LoginError(f"The fake network is unreachable ({type(e).__name__}).") from e
        if resp.status != 200:
            raise LoginError(body.get("error", "login refused"))
        return LoginStep(StepType.COMPLETE, "fake.complete", result=LoginResult(
            remote_id=body["username"], remote_name=body["name"], metadata={"cursor": 0},
            secrets={"password": values["password"]}))

    async def wait(self) -> LoginStep:
        raise UserInputError("nothing to wait for")

    async def cancel(self) -> None:
        return None


class Client:
    """Capabilities: SupportsStartChat, SupportsAvatars, SupportsReadReceipts."""

    def __init__(self, connector: Connector, login: UserLoginInfo) -> None:
        self.connector = connector
        self.bridge = connector.bridge
        self.login = login
        self.cursor = int(login.metadata.get("cursor", 0))
        self._task: asyncio.Task[None] | None = None
        self._connected = False

    def _headers(self) -> dict[str, str]:
        return {"X-User": self.login.remote_id, "X-Password": self.login.secrets["password"]}

    async def connect(self) -> None:
        self._connected = True
        self._task = asyncio.create_task(self._poll())

    async def disconnect(self) -> None:
        self._connected = False
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    async def logout(self) -> None:
        return None

    def is_logged_in(self) -> bool:
        return self._connected

    async def _poll(self) -> None:
        assert self.connector.session is not None
        await self.bridge.set_login_state(self.login.id, LoginState.CONNECTED)
        while self._connected:
            try:
                async with self.connector.session.get(
                    f"{self.connector.url}/events", params={"since": str(self.cursor), "wait": "1"},
                    headers=self._headers(),
                ) as resp:
                    if resp.status == 401:
                        await self.bridge.set_login_state(self.login.id, LoginState.BAD_CREDENTIALS,
                                                          "the password was refused")
                        return
                    body = await resp.json()
            except (aiohttp.ClientError, asyncio.TimeoutError):
                await self.bridge.set_login_state(self.login.id, LoginState.TRANSIENT_DISCONNECT)
                await asyncio.sleep(1)
                continue
            for evt in body["events"]:
                await self.bridge.queue_remote_event(self._to_event(evt))
                self.cursor = evt["seq"]
            if body["events"]:
                await self.bridge.save_login_metadata(self.login.id, {**self.login.metadata, "cursor": self.cursor})

    def _to_event(self, evt: dict[str, Any]) -> RemoteEvent:
        if evt.get("kind") == "read":
            return RemoteEvent(
                login_id=self.login.id, portal_id=evt["conversation"], kind=RemoteEventKind.READ_RECEIPT,
                remote_id=evt["id"], sender=Sender(evt["sender"], is_from_me=evt["from_me"]), timestamp=evt["ts"],
                target_id=evt["target"],
            )
        members = tuple(Sender(m, evt["sender_name"] if m == evt["sender"] else None) for m in evt["members"])
        return RemoteEvent(
            login_id=self.login.id, portal_id=evt["conversation"], kind=RemoteEventKind.MESSAGE,
            remote_id=evt["id"], sender=Sender(evt["sender"], evt["sender_name"], is_from_me=evt.get("from_me", False),
                                                avatar_id=evt.get("avatar_id")),
            timestamp=evt["ts"],
            data={k: evt[k] for k in ("text", "media_b64", "filename") if k in evt},
            chat_info=ChatInfo(name=None if len(members) == 1 else evt["conversation"],
                               is_direct=len(members) == 1, members=members),
        )

    async def get_chat_info(self, portal: PortalRef) -> ChatInfo:
        other = portal.portal_id.removeprefix("dm:")
        return ChatInfo(name=None, is_direct=True, members=(Sender(other, other.title()),))

    async def convert_remote(self, portal: PortalRef, event: RemoteEvent) -> ConvertedMessage:
        text = event.data.get("text", "")
        if text == "!unconvertible":
            raise ConversionError("the fake network sent something unreadable")
        parts = [ConvertedPart("text", {"msgtype": "m.text", "body": text})]
        if "media_b64" in event.data:
            data = base64.b64decode(event.data["media_b64"])
            parts.append(ConvertedPart("file", {"msgtype": "m.file", "body": event.data["filename"]},
                                       media=Media(data, "application/octet-stream", event.data["filename"])))
        return ConvertedMessage(parts=parts, privacy={"transport": "fake", "end_to_end": False})

    async def handle_matrix_message(self, msg: MatrixMessage) -> SentMessage:
        assert self.connector.session is not None
        payload: dict[str, Any] = {"conversation": msg.portal.portal_id, "text": msg.body, "msgtype": msg.msgtype}
        if msg.media:
            payload["media_b64"] = base64.b64encode(msg.media.data).decode()
            payload["filename"] = msg.media.filename
        if msg.reply_to:
            payload["reply_to"] = msg.reply_to.remote_id
        try:
            async with self.connector.session.post(f"{self.connector.url}/send", json=payload,
                                                   headers=self._headers()) as resp:
                body = await resp.json()
        except aiohttp.ClientError as e:
            raise SendError(f"the fake network is unreachable ({type(e).__name__})", retryable=True) from e
        if resp.status != 200:
            raise SendError(body.get("error", "refused"), retryable=bool(body.get("retryable")))
        return SentMessage(remote_id=body["id"], timestamp=body["ts"])

    async def handle_matrix_read(self, portal: PortalRef, messages: list[MessageRef]) -> None:
        assert self.connector.session is not None
        payload = {"conversation": portal.portal_id, "ids": [m.remote_id for m in messages]}
        async with self.connector.session.post(f"{self.connector.url}/read", json=payload,
                                               headers=self._headers()) as resp:
            resp.raise_for_status()

    async def get_avatar(self, avatar_id: str) -> Media:
        assert self.connector.session is not None
        name = avatar_id.split(":", 1)[0]
        async with self.connector.session.get(f"{self.connector.url}/avatar/{name}") as resp:
            resp.raise_for_status()
            return Media(await resp.read(), "image/png", f"{name}.png")

    async def resolve_identifier(self, identifier: str) -> tuple[str, ChatInfo]:
        if not identifier.isalnum():
            raise UserInputError(f"{identifier!r} is not a fake-network user name")
        return f"dm:{identifier}", ChatInfo(name=None, is_direct=True, members=(Sender(identifier, identifier.title()),))
