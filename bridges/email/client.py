"""One mailbox login: the email network's :class:`~bridges.core.network.NetworkClient`.

Capabilities: :class:`~bridges.core.network.SupportsStartChat` (``resolve_identifier``) and
:class:`~bridges.core.network.SupportsReadReceipts` (``handle_matrix_read``). Not offered:
edits, reactions, redactions, typing, backfill, contacts (mail has none of them).

The sync (:mod:`.handle_remote`) keeps its own IMAP connections; this client keeps one more,
made on demand, for what the user does from Matrix (filing sent mail, setting ``\\Seen``,
fetching a large mail again), used one operation at a time.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ..core.errors import UserInputError
from ..core.events import ChatInfo, ConvertedMessage, MatrixMessage, MessageRef, PortalRef, RemoteEvent, SentMessage
from ..core.network import BridgeAPI, LoginState, UserLoginInfo
from . import handle_matrix
from .errors import ImapConnectionLost
from .config import SaveSent
from .handle_remote import MailSync, chat_info_for_portal, convert_event
from .ids import normalize_address, normalize_message_id
from .imap import ImapConnection
from .login import Account

if TYPE_CHECKING:
    from .connector import Connector

log = logging.getLogger("caliopen.email.client")

T = TypeVar("T")

#: How long the Message-ID of a mail sent from Matrix is remembered, so that its copy in
#: Sent is not bridged back before the core has stored it.
SENT_MEMORY_SECONDS = 3600

#: IMAP capabilities of servers that file what goes through their SMTP in Sent themselves.
FILES_SENT_CAPABILITIES = frozenset({"X-GM-EXT-1"})  # Gmail


def files_sent_itself(capabilities: frozenset[str]) -> bool:
    """Whether an IMAP server with these capabilities (upper case) files submitted mail in
    Sent by itself, so that a copy APPENDed by the bridge would be a second one. Pure."""
    return not FILES_SENT_CAPABILITIES.isdisjoint(capabilities)


class EmailClient:
    """One login (see the module docstring). Made with no I/O; ``connect`` starts the sync."""

    def __init__(self, connector: Connector, login: UserLoginInfo) -> None:
        self.connector = connector
        self.bridge: BridgeAPI = connector.bridge
        self.config = connector.config
        self.login = login
        self.login_id = login.id
        self.account = Account.from_login(login)
        self.metadata: dict[str, Any] = copy.deepcopy(dict(login.metadata))
        own = {self.account.email}
        try:
            own.add(normalize_address(self.account.username))
        except UserInputError:
            pass
        self.own_addresses = frozenset(own)
        self.sync = MailSync(self)
        self._task: asyncio.Task[None] | None = None
        self._command: ImapConnection | None = None
        self._command_lock = asyncio.Lock()
        self._metadata_lock = asyncio.Lock()
        self._sent: dict[str, float] = {}

    # --- NetworkClient -------------------------------------------------------------------

    async def connect(self) -> None:
        """Start the sync in the background and return."""
        if self._task is not None and not self._task.done():
            return
        if not self.account.password:
            await self.bridge.set_login_state(self.login_id, LoginState.BAD_CREDENTIALS,
                                              "No password is saved for this mailbox: log in again.")
            return
        await self.bridge.set_login_state(self.login_id, LoginState.CONNECTING)
        self._task = asyncio.create_task(self.sync.run(), name=f"email-sync-{self.login_id}")

    async def disconnect(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        async with self._command_lock:
            if self._command is not None:
                await self._command.close()
                self._command = None

    async def logout(self) -> None:
        """IMAP and SMTP keep no session to revoke: disconnecting is all."""
        await self.disconnect()

    def is_logged_in(self) -> bool:
        return bool(self.account.password)

    async def get_chat_info(self, portal: PortalRef) -> ChatInfo:
        return chat_info_for_portal(portal)

    async def convert_remote(self, portal: PortalRef, event: RemoteEvent) -> ConvertedMessage:
        return await convert_event(self, portal, event)

    async def handle_matrix_message(self, msg: MatrixMessage) -> SentMessage:
        return await handle_matrix.send_message(self, msg)

    # --- optional capabilities -----------------------------------------------------------

    async def resolve_identifier(self, identifier: str) -> tuple[str, ChatInfo]:
        return await handle_matrix.resolve_identifier(self, identifier)

    async def handle_matrix_read(self, portal: PortalRef, messages: list[MessageRef]) -> None:
        await handle_matrix.mark_read(self, portal, messages)

    # --- for the sync and the sender -----------------------------------------------------

    async def save_metadata(self) -> None:
        """Persist the login's metadata (account and sync cursors) as it is now."""
        async with self._metadata_lock:
            await self.bridge.save_login_metadata(self.login_id, copy.deepcopy(self.metadata))

    async def set_sent_folder(self, folder: str) -> None:
        self.account = dataclasses.replace(self.account, sent_folder=folder)
        self.metadata["sent_folder"] = folder
        await self.save_metadata()

    def remember_sent(self, remote_id: str) -> None:
        now = time.monotonic()
        for rid in [r for r, t in self._sent.items() if now - t > SENT_MEMORY_SECONDS]:
            del self._sent[rid]
        self._sent[remote_id] = now

    def was_sent_here(self, remote_id: str) -> bool:
        t = self._sent.get(remote_id)
        return t is not None and time.monotonic() - t <= SENT_MEMORY_SECONDS

    async def _with_command(self, op: Callable[[ImapConnection], Awaitable[T]]) -> T:
        """Run ``op`` on the command connection, reconnecting once if it was dropped."""
        async with self._command_lock:
            for attempt in (1, 2):
                if self._command is None or not self._command.connected:
                    conn = ImapConnection(self.account.imap_settings(self.config), name=f"email-{self.login_id}-cmd")
                    await conn.connect()
                    self._command = conn
                try:
                    return await op(self._command)
                except ImapConnectionLost:
                    await self._command.close()
                    self._command = None
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")

    async def fetch_message(self, folder: str, uidvalidity: int, uid: int, message_id: str | None) -> bytes | None:
        """A mail by its place (or, when UIDVALIDITY changed, by its Message-ID); None when gone."""

        async def op(conn: ImapConnection) -> bytes | None:
            status = await conn.select(folder)
            if status.uidvalidity == uidvalidity and uid:
                raw = await conn.fetch_raw(uid)
                if raw is not None:
                    return raw
            if message_id:
                uids = await conn.search_message_id(message_id)
                if uids:
                    return await conn.fetch_raw(uids[0])
            return None

        return await self._with_command(op)

    @property
    def save_sent(self) -> SaveSent:
        """How mail sent from Matrix is filed: the login's own choice, else the bridge's."""
        return self.account.save_sent or self.config.save_sent

    async def file_sent(self, raw: bytes, message_id: str, mode: SaveSent) -> tuple[str, int | None, int | None] | None:
        """File ``raw`` (marked read) in the Sent folder as ``mode`` says; return where its copy
        is (folder, UIDVALIDITY, UID; the last two None when the server does not say), or None
        when none was filed.

        ``NEVER`` files nothing, ``ALWAYS`` APPENDs. ``AUTO`` leaves it to a server that files
        submitted mail itself (:func:`files_sent_itself`), and elsewhere APPENDs only when Sent
        holds no mail with this Message-ID yet (``UID SEARCH HEADER Message-ID``). Raises
        ImapError or OSError when the IMAP server fails.
        """
        if mode == SaveSent.NEVER:
            return None

        async def op(conn: ImapConnection) -> tuple[str, int | None, int | None] | None:
            if mode == SaveSent.AUTO and files_sent_itself(conn.capabilities):
                return None
            folder = self.account.sent_folder or await conn.find_sent_folder() or "Sent"
            if mode == SaveSent.AUTO:
                status = await conn.select(folder)
                present = await conn.search_message_id(message_id)
                if present:
                    return folder, status.uidvalidity, present[-1]
            where = await conn.append(folder, raw, flags=("\\Seen",))
            return (folder, where[0], where[1]) if where else (folder, None, None)

        return await self._with_command(op)

    async def set_seen(self, folder: str, refs: list[MessageRef]) -> None:
        """Set ``\\Seen`` on the mail of these bridged messages in ``folder``."""

        async def op(conn: ImapConnection) -> None:
            status = await conn.select(folder, readonly=False)
            uids: list[int] = []
            for ref in refs:
                uid = ref.metadata.get("uid")
                if ref.metadata.get("uidvalidity") == status.uidvalidity and isinstance(uid, int):
                    uids.append(uid)
                    continue
                mid = normalize_message_id(ref.metadata.get("message_id")) or normalize_message_id(ref.remote_id)
                if mid:
                    uids += await conn.search_message_id(mid)
            await conn.set_seen(sorted(set(uids)))

        await self._with_command(op)
