"""The network-agnostic core: networks, logins, portals, ghosts, the durable inbox.

:class:`Bridge` is what connectors see as :class:`bridges.core.network.BridgeAPI`, and what the
Matrix side hands decrypted events to (:meth:`Bridge.on_matrix_event`). It never speaks a
network protocol and never touches ciphertext.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import logging
from typing import Any

from aiohttp import web

from ..db import GhostRow, InboxRow, LoginRow, PortalRow, Store
from .errors import CaliopenError, ConfigError, UserInputError
from .events import RemoteEvent, RemoteEventKind, Sender
from .ids import ghost_mxid, new_login_id
from .matrix_api import IncomingEvent, MatrixAPI
from .metrics import METRICS
from .network import (
    LoginResult,
    LoginState,
    NetworkClient,
    NetworkConnector,
    SupportsAvatars,
    UserLoginInfo,
    WebhookHandler,
)
from .portal import Portal
from .portal_base import PortalBase
from .secrets import SecretBox

log = logging.getLogger("caliopen.bridge")


class Bridge:
    """The core. Made with no I/O; ``start()`` loads networks and logins."""

    def __init__(self, config: Any, store: Store, matrix: MatrixAPI, app: web.Application) -> None:
        self.config = config
        self.store = store
        self.matrix = matrix
        self.app = app
        self.domain: str = config["homeserver.domain"]
        self.box = SecretBox(config["bridge.secret_key"])
        self.send_retries: int = config["bridge.send_retries"]
        self.send_retry_delay: float = config["bridge.send_retry_delay"]
        self.max_remote_attempts = 5
        self.connectors: dict[str, NetworkConnector] = {}
        self.clients: dict[str, NetworkClient] = {}
        self.logins: dict[str, LoginRow] = {}
        self.portals: dict[tuple[str, str], Portal] = {}
        self.portals_by_mxid: dict[str, Portal] = {}
        self.disabled: dict[str, set[str]] = {}  # user mxid -> networks the user switched off
        self._webhooks: dict[str, WebhookHandler] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ghosts_done: dict[str, tuple[str, str | None]] = {}
        app.router.add_route("*", "/_caliopen/{network}/{tail:.*}", self._webhook)
        from .commands import CommandProcessor
        from .login import LoginSessions

        self.commands = CommandProcessor(self)
        self.login_sessions = LoginSessions(self)

    # --- lifecycle ----------------------------------------------------------------------

    @staticmethod
    def import_networks(config: Any) -> dict[str, Any]:
        """Import the enabled networks' modules; ConfigError naming the network when one fails."""
        modules = {}
        for name in config.enabled_networks():
            module_name = config.network_module(name)
            try:
                modules[name] = importlib.import_module(module_name)
            except ImportError as e:
                raise ConfigError(f"networks.{name}", f"cannot load {module_name}: {e}") from e
        return modules

    def load_networks(self) -> None:
        """Construct the enabled networks' connectors (no I/O)."""
        modules = self.import_networks(self.config)
        for name, section in self.config.enabled_networks().items():
            connector = modules[name].Connector(self, section)
            self.connectors[name] = connector
            log.info("Network %s enabled", name)

    async def start(self) -> None:
        for connector in self.connectors.values():
            await connector.start()
        for row in await self.store.logins.all():
            self.logins[row.id] = row
        users = {row.user_mxid for row in self.logins.values()}
        for mxid in users:
            user = await self.store.users.get(mxid)
            self.disabled[mxid] = set(user.disabled_networks if user else [])
        for row in list(self.logins.values()):
            if row.network not in self.connectors:
                continue
            self._load_client(row)
            if self.network_disabled_for(row.user_mxid, row.network):
                await self.set_login_state(row.id, LoginState.DISABLED)
            else:
                self.spawn(self._connect(row.id))
        await self.resume_inbox()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for client in list(self.clients.values()):
            try:
                await asyncio.wait_for(client.disconnect(), 10)
            except Exception:
                log.warning("A client did not disconnect cleanly", exc_info=True)
        for portal in list(self.portals.values()):
            await portal.stop()
        for connector in self.connectors.values():
            try:
                await connector.stop()
            except Exception:
                log.warning("Connector %s did not stop cleanly", connector.name, exc_info=True)

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _load_client(self, row: LoginRow) -> NetworkClient:
        info = UserLoginInfo(row.id, row.user_mxid, row.remote_id, row.remote_name, dict(row.metadata),
                             self.box.open(row.sealed_secrets))
        client = self.connectors[row.network].load_login(info)
        self.clients[row.id] = client
        return client

    async def _connect(self, login_id: str) -> None:
        try:
            await self.clients[login_id].connect()
        except CaliopenError as e:
            await self.set_login_state(login_id, LoginState.BAD_CREDENTIALS, e.user_message)
        except Exception as e:
            log.exception("Connecting login %s failed", login_id)
            await self.set_login_state(login_id, LoginState.UNKNOWN_ERROR, type(e).__name__)

    def client_for(self, login_id: str) -> NetworkClient:
        try:
            return self.clients[login_id]
        except KeyError:
            raise UserInputError(f"Login {login_id} is not active.") from None

    # --- BridgeAPI -------------------------------------------------------------------------

    @property
    def public_url(self) -> str:
        return str(self.config["appservice.public_url"]).rstrip("/")

    async def queue_remote_event(self, event: RemoteEvent) -> bool:
        if event.login_id not in self.logins:
            raise UserInputError(f"unknown login {event.login_id}")
        if event.kind == RemoteEventKind.MESSAGE:
            if await self.store.messages.exists(event.login_id, event.remote_id):
                return False
        elif event.target_id is not None:
            # Events about a message belong to that message's portal, whatever the network said.
            # (A status can overtake the answer to the send it is about: an unknown target is
            # kept, and the portal waits a little for it before dropping the event.)
            target = await self.store.messages.first_part(event.login_id, event.target_id)
            if target is not None and target.portal_id != event.portal_id:
                event = dataclasses.replace(event, portal_id=target.portal_id)
        row_id = await self.store.inbox.add(event.login_id, event.portal_id, event.kind.value, event.remote_id,
                                            event.to_json())
        if row_id is None:
            return False
        portal = await self.get_portal(event.login_id, event.portal_id)
        portal.enqueue_remote(InboxRow(row_id, event.login_id, event.portal_id, event.kind.value,
                                       event.remote_id, "", 0), event)
        return True

    async def save_login_metadata(self, login_id: str, metadata: dict[str, Any]) -> None:
        await self.store.logins.set_metadata(login_id, metadata)
        if login_id in self.logins:
            self.logins[login_id].metadata = dict(metadata)

    async def set_login_state(self, login_id: str, state: LoginState, error: str | None = None) -> None:
        row = self.logins.get(login_id)
        if row is None:
            return
        if row.state != state.value:
            log.info("Login %s is %s", login_id, state.value)
        row.state, row.state_error = state.value, error
        await self.store.logins.set_state(login_id, state.value, error)
        self._update_login_gauge()

    def _update_login_gauge(self) -> None:
        METRICS.logins.clear()
        for row in self.logins.values():
            METRICS.logins.labels(row.network, row.state).inc()

    async def is_bridged(self, login_id: str, remote_id: str) -> bool:
        return await self.store.messages.exists_or_queued(login_id, remote_id)

    def register_webhook(self, network: str, handler: WebhookHandler) -> str:
        self._webhooks[network] = handler
        return f"/_caliopen/{network}"

    async def _webhook(self, request: web.Request) -> web.StreamResponse:
        handler = self._webhooks.get(request.match_info["network"])
        if handler is None:
            return web.json_response({"error": "unknown network"}, status=404)
        return await handler(request)

    # --- the inbox -----------------------------------------------------------------------

    async def resume_inbox(self, login_ids: set[str] | None = None) -> None:
        """Queue the events stored before a stop or crash (or while a network was off for its
        user), in their original order. ``login_ids`` limits it to those logins."""
        pending = await self.store.inbox.pending()
        METRICS.inbox.set(len(pending))
        resumed = 0
        for row in pending:
            if row.login_id not in self.clients or (login_ids is not None and row.login_id not in login_ids):
                continue
            portal = await self.get_portal(row.login_id, row.portal_id)
            portal.enqueue_remote(row, RemoteEvent.from_json(row.payload))
            resumed += 1
        if resumed:
            log.info("Resumed %d stored remote events", resumed)

    # --- portals, ghosts, spaces -----------------------------------------------------------

    async def get_portal(self, login_id: str, portal_id: str, create: bool = True) -> Portal:
        key = (login_id, portal_id)
        portal = self.portals.get(key)
        if portal is not None:
            return portal
        row = await self.store.portals.get(login_id, portal_id)
        if row is None:
            login = self.logins[login_id]
            row = PortalRow(login_id=login_id, portal_id=portal_id, network=login.network)
            await self.store.portals.upsert(row)
        portal = self.portals.setdefault(key, Portal(self, row))
        if portal.mxid:
            self.portals_by_mxid[portal.mxid] = portal
        return portal

    async def portal_by_mxid(self, room_id: str) -> Portal | None:
        portal = self.portals_by_mxid.get(room_id)
        if portal is not None:
            return portal
        row = await self.store.portals.by_mxid(room_id)
        if row is None or row.login_id not in self.logins:
            return None
        return await self.get_portal(row.login_id, row.portal_id)

    async def ensure_ghost(self, network: str, sender: Sender, login: LoginRow) -> str:
        """The ghost's user ID, registered, with its display name and avatar up to date.

        The avatar is fetched through the login's client (``SupportsAvatars``) only when the
        network's avatar ID changed; a failure to fetch it never stops the message."""
        prefix = self.config[f"networks.{network}.ghost_prefix"]
        mxid = ghost_mxid(prefix, sender.remote_id, self.domain)
        name = sender.name or sender.remote_id
        if sender.is_from_me:
            name = f"{name} (you)"
        displayname = self.config[f"networks.{network}.displayname_template"].format(name=name)
        state = (displayname, sender.avatar_id)
        if self._ghosts_done.get(mxid) == state:
            return mxid
        row = await self.store.ghosts.get(network, sender.remote_id)
        avatar_id = row.avatar_url if row else None
        avatar_mxc = None
        if sender.avatar_id and sender.avatar_id != avatar_id:
            client = self.clients.get(login.id)
            if isinstance(client, SupportsAvatars):
                try:
                    media = await client.get_avatar(sender.avatar_id)
                    avatar_mxc = (await self.matrix.upload("", media, encrypted=False))["url"]
                    avatar_id = sender.avatar_id
                except Exception:
                    log.warning("Could not fetch the avatar of a %s ghost", network, exc_info=True)
        if row is None or row.name != displayname or avatar_mxc or mxid not in self._ghosts_done:
            await self.matrix.ensure_ghost(mxid, displayname, avatar_mxc)
            await self.store.ghosts.upsert(GhostRow(network, sender.remote_id, mxid, displayname, avatar_id))
        self._ghosts_done[mxid] = state
        return mxid

    async def portal_ghost(self, portal: PortalBase) -> str | None:
        """The correspondent's ghost in a direct portal (who reads and receives)."""
        members = portal.row.metadata.get("members") or []
        if len(members) != 1:
            return None
        prefix = self.config[f"networks.{portal.network}.ghost_prefix"]
        return ghost_mxid(prefix, members[0], self.domain)

    async def ensure_space(self, login: LoginRow) -> str | None:
        if login.space_room:
            return login.space_room
        name = f"{self.connectors[login.network].display_name}: {login.remote_name}"
        try:
            space = await self.matrix.create_space(name=name, topic="Conversations bridged by Caliopen",
                                                   invite=[login.user_mxid])
        except Exception:
            log.warning("Could not create the space of login %s", login.id, exc_info=True)
            return None
        login.space_room = space
        await self.store.logins.set_space(login.id, space)
        return space

    # --- logins --------------------------------------------------------------------------

    async def finish_login(self, user_mxid: str, network: str, result: LoginResult) -> LoginRow:
        """Persist a completed login (secrets sealed), load its client and connect it."""
        await self.store.users.get_or_create(user_mxid)
        existing = await self.store.logins.find(network, user_mxid, result.remote_id)
        sealed = self.box.seal(result.secrets)
        if existing:
            old = self.clients.pop(existing.id, None)
            if old:
                await old.disconnect()
            existing.remote_name = result.remote_name
            existing.metadata = {**existing.metadata, **result.metadata}
            existing.sealed_secrets = sealed
            await self.store.logins.update_credentials(existing)
            row = existing
        else:
            row = LoginRow(id=new_login_id(network), network=network, user_mxid=user_mxid,
                           remote_id=result.remote_id, remote_name=result.remote_name,
                           state=LoginState.CONNECTING.value, metadata=dict(result.metadata), sealed_secrets=sealed)
            await self.store.logins.insert(row)
        self.logins[row.id] = row
        self.disabled.setdefault(user_mxid, set())
        self._load_client(row)
        await self.ensure_space(row)
        await self.set_login_state(row.id, LoginState.CONNECTING)
        self.spawn(self._connect(row.id))
        return row

    async def logout(self, user_mxid: str, login_id: str) -> None:
        row = self.logins.get(login_id)
        if row is None or row.user_mxid != user_mxid:
            raise UserInputError(f"You have no login {login_id}.")
        client = self.clients.pop(login_id, None)
        if client is not None:
            try:
                await client.logout()
            except Exception:
                log.warning("Remote logout of %s failed", login_id, exc_info=True)
            await client.disconnect()
        for key in [k for k in self.portals if k[0] == login_id]:
            portal = self.portals.pop(key)
            await portal.stop()
            if portal.mxid:
                self.portals_by_mxid.pop(portal.mxid, None)
        del self.logins[login_id]
        await self.store.logins.delete(login_id)
        self._update_login_gauge()

    def user_logins(self, user_mxid: str) -> list[LoginRow]:
        return [row for row in self.logins.values() if row.user_mxid == user_mxid]

    # --- per-user network switches -------------------------------------------------------

    def network_disabled_for(self, user_mxid: str, network: str) -> str | None:
        """Why the network is off for this user, or None when it is on."""
        if network not in self.connectors:
            return f"The {network} network is switched off on this server."
        if network in self.disabled.get(user_mxid, set()):
            return f"You switched {network} off. Send `enable {network}` to the bridge bot to switch it on."
        return None

    async def set_network_enabled(self, user_mxid: str, network: str, enabled: bool) -> None:
        if network not in self.config["networks"]:
            raise UserInputError(f"There is no network called {network}.")
        if enabled and network not in self.connectors:
            raise UserInputError(f"The {network} network is switched off on this server.")
        user = await self.store.users.get_or_create(user_mxid)
        disabled = set(user.disabled_networks)
        (disabled.discard if enabled else disabled.add)(network)
        user.disabled_networks = sorted(disabled)
        await self.store.users.save(user)
        self.disabled[user_mxid] = disabled
        for row in self.user_logins(user_mxid):
            if row.network != network or row.id not in self.clients:
                continue
            if enabled:
                await self.set_login_state(row.id, LoginState.CONNECTING)
                self.spawn(self._connect(row.id))
            else:
                await self.clients[row.id].disconnect()
                await self.set_login_state(row.id, LoginState.DISABLED)
        if enabled:
            await self.resume_inbox({row.id for row in self.user_logins(user_mxid)})

    # --- Matrix events -------------------------------------------------------------------

    async def on_bot_invite(self, room_id: str, inviter: str, is_direct: bool) -> None:
        await self.commands.on_bot_invite(room_id, inviter, is_direct)

    async def on_matrix_event(self, evt: IncomingEvent) -> None:
        if evt.type == "m.receipt":
            await self._on_receipt(evt)
            return
        if evt.type not in ("m.room.message", "m.reaction", "m.room.redaction"):
            return
        portal = await self.portal_by_mxid(evt.room_id)
        if portal is None:
            if evt.type == "m.room.message":
                await self.commands.on_message(evt)
            return
        if self.config.permission(evt.sender) is None:
            return
        login = self.logins.get(portal.login_id)
        if login is None or login.user_mxid != evt.sender:
            return  # only the portal's owner speaks for the login (relay mode is not offered)
        await portal.submit(lambda: portal.handle_matrix(evt))

    async def _on_receipt(self, evt: IncomingEvent) -> None:
        portal = await self.portal_by_mxid(evt.room_id)
        if portal is None:
            return
        login = self.logins.get(portal.login_id)
        if login is None:
            return
        for event_id, receipts in evt.content.items():
            readers = (receipts or {}).get("m.read") or {}
            if login.user_mxid in readers:
                ts = (readers[login.user_mxid] or {}).get("ts")
                portal.enqueue_read(event_id, ts)
