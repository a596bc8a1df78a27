"""Email → Matrix: the IMAP sync, and the conversion of what it queued.

Capabilities: none of its own (the remote half of the required client interface).

:class:`MailSync` runs one login's sync:

1. Connect one IMAP connection per bridged folder (INBOX and the Sent folder found by
   SPECIAL-USE, by default); report the login's state with ``set_login_state``.
2. First time only: import the last ``initial_sync_messages`` of every folder (and, when
   ``initial_sync_days`` is set, only among the mail that arrived in those last days), oldest
   first across folders (so replies find their thread roots), fetching ``BODY.PEEK[]`` in
   batches.
3. Then, per folder: fetch what is new since the folder's cursor, queue it, IDLE (or NOOP
   polling when the server lacks IDLE), and again.

A folder's cursor (UIDVALIDITY, last UID, HIGHESTMODSEQ) is saved with ``save_login_metadata``
only after ``queue_remote_event`` returned for every message up to it, so a crash queues some
mail again (the core drops what it already has, by remote ID) and loses none. Remote IDs are
Message-IDs (see :mod:`.ids`), so a changed UIDVALIDITY, which voids every UID, is handled by
importing the folder's recent mail again without duplicates. Connection failures reconnect with
exponential backoff; flags set to ``\\Seen`` elsewhere become read receipts (CONDSTORE).

A queued event carries the raw mail (base64) when it is at most ``inline_message_size``; a larger
one carries its (folder, UIDVALIDITY, UID, Message-ID) and :func:`convert_event` fetches it.
"""

from __future__ import annotations

import asyncio
import base64
import email.parser
import email.policy
import logging
import random
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ..core.errors import LoginError
from ..core.events import ChatInfo, ConvertedMessage, PortalRef, RemoteEvent, RemoteEventKind, Sender
from ..core.network import LoginState
from .config import SENT
from .convert import EmailHeaders, email_to_matrix, parse_headers
from .errors import AuthenticationFailed, ImapError, MessageGone, ServerUnreachable
from .ids import SELF_PORTAL_ID, message_remote_id, normalize_address, portal_id_for
from .imap import FetchedMessage, ImapConnection, MailboxStatus

if TYPE_CHECKING:
    from .client import EmailClient

log = logging.getLogger("caliopen.email.sync")

UNKNOWN_SENDER = "unknown-sender@invalid"
_HEADER_PARSER = email.parser.BytesParser(policy=email.policy.default)
_MAILTO = re.compile(r"<mailto:([^>?]+)", re.I)
_MAX_SEEN_PER_ROUND = 500


# --- building events (pure) ---------------------------------------------------------------


class NameBook:
    """Display names seen per address, so a mail without one does not rename a ghost."""

    def __init__(self, limit: int = 10_000) -> None:
        self._names: dict[str, str] = {}
        self._limit = limit

    def name(self, address: str | None, name: str | None) -> str | None:
        if not address:
            return name or None
        name = " ".join((name or "").split()).strip("'\" ") or None
        if name and name.lower() != address:
            if len(self._names) >= self._limit and address not in self._names:
                self._names.pop(next(iter(self._names)))
            self._names[address] = name
            return name
        return self._names.get(address)


def correspondents(h: EmailHeaders, own: frozenset[str]) -> list[tuple[str, str | None]]:
    """The people of a mail other than the user: From, To and Cc, in that order, unique."""
    out: dict[str, str | None] = {}
    people: list[tuple[str | None, str | None]] = [(h.from_name, h.from_addr)]
    people += [(n, a) for n, a in h.to] + [(n, a) for n, a in h.cc]
    for name, addr in people:
        if not addr or addr in own:
            continue
        if addr not in out or (name and not out[addr]):
            out[addr] = name or None
    return list(out.items())


def list_details(header: bytes) -> tuple[str | None, str | None]:
    """(the List-Id's phrase, the List-Post address) of a mail's header block. Never raises."""
    try:
        msg = _HEADER_PARSER.parsebytes(header, headersonly=True)
        list_id = str(msg.get("List-Id") or "")
        post = str(msg.get("List-Post") or "")
    except Exception:  # noqa: BLE001 (odd headers: the list just has no name)
        return None, None
    phrase = list_id.split("<", 1)[0].strip().strip('"').strip() or None
    m = _MAILTO.search(post)
    address = None
    if m:
        try:
            address = normalize_address(m.group(1))
        except Exception:  # noqa: BLE001
            address = None
    return phrase, address


def group_name(people: Sequence[tuple[str, str | None]]) -> str:
    names = [n or a for a, n in people]
    if len(names) <= 3:
        return ", ".join(names)
    return f"{', '.join(names[:2])} and {len(names) - 2} others"


def chat_info_for(
    portal_id: str,
    people: Sequence[tuple[str, str | None]],
    list_id: str | None = None,
    list_name: str | None = None,
    list_post: str | None = None,
) -> ChatInfo:
    """The room of a discussion: a person, a group of people, a mailing list, or notes to self."""
    if portal_id.startswith("list:"):
        ident = list_id or portal_id[5:]
        members = (Sender(list_post, list_name or ident),) if list_post else ()
        return ChatInfo(name=list_name or ident, topic=f"Mailing list {ident}", is_direct=False, members=members)
    if portal_id == SELF_PORTAL_ID or not people:
        return ChatInfo(name="Notes to self", topic="Mail you sent to yourself", is_direct=False)
    members = tuple(Sender(addr, name) for addr, name in people)
    if len(people) == 1:
        addr, name = people[0]
        return ChatInfo(name=name or addr, topic=addr, is_direct=True, members=members)
    return ChatInfo(name=group_name(people), topic=", ".join(a for a, _ in people), is_direct=False, members=members)


def chat_info_for_portal(portal: PortalRef) -> ChatInfo:
    """Chat info from a portal's ID and stored members, when no mail is at hand."""
    pid = portal.portal_id
    if pid.startswith("list:"):
        members = [m for m in portal.metadata.get("members") or [] if isinstance(m, str)]
        return chat_info_for(pid, [], list_post=members[0] if members else None)
    if pid == SELF_PORTAL_ID:
        return chat_info_for(pid, [])
    addrs = [m for m in portal.metadata.get("members") or [] if isinstance(m, str)]
    if not addrs and not pid.startswith("group:"):
        addrs = [a for a in pid.split(",") if a]
    return chat_info_for(pid, [(a, None) for a in addrs])


def event_timestamp(h: EmailHeaders, internaldate: Any) -> int:
    """The Date header when it is plausible, else the server's arrival time, else now (ms)."""
    arrived = None
    if internaldate is not None:
        try:
            arrived = int(internaldate.timestamp() * 1000)
        except (AttributeError, ValueError, OverflowError, OSError):
            arrived = None
    now = int(time.time() * 1000)
    limit = (arrived or now) + 3600_000
    if h.date_ms is not None and 0 < h.date_ms <= limit:
        return h.date_ms
    return arrived or now


def build_event(
    *,
    login_id: str,
    own: frozenset[str],
    folder: str,
    uidvalidity: int,
    msg: FetchedMessage,
    names: NameBook,
) -> RemoteEvent:
    """The remote event of one fetched mail. Pure; never raises on odd mail."""
    source = msg.raw if msg.raw is not None else msg.header
    h = parse_headers(source)
    remote_id = message_remote_id(h.message_id, folder, uidvalidity, msg.uid, raw=msg.raw)
    sender_addr = h.from_addr or h.sender_addr or UNKNOWN_SENDER
    people = [(a, names.name(a, n)) for a, n in correspondents(h, own)]
    list_name, list_post = list_details(msg.header or source) if h.list_id else (None, None)
    portal_id = portal_id_for([a for a, _ in people], h.list_id)
    data: dict[str, Any] = {
        "folder": folder,
        "uidvalidity": uidvalidity,
        "uid": msg.uid,
        "size": msg.size,
        "message_id": h.message_id,
    }
    if msg.raw is not None:
        data["raw"] = base64.b64encode(msg.raw).decode("ascii")
    return RemoteEvent(
        login_id=login_id,
        portal_id=portal_id,
        kind=RemoteEventKind.MESSAGE,
        remote_id=remote_id,
        sender=Sender(sender_addr, names.name(sender_addr, h.from_name), is_from_me=sender_addr in own),
        timestamp=event_timestamp(h, msg.internaldate),
        data=data,
        chat_info=chat_info_for(portal_id, people, h.list_id, list_name, list_post),
    )


# --- converting a queued event (I/O: may fetch the mail again) --------------------------------


async def convert_event(client: EmailClient, portal: PortalRef, event: RemoteEvent) -> ConvertedMessage:
    """Turn a queued mail into Matrix parts (see :func:`bridges.email.convert.email_to_matrix`).

    The thread root is the oldest message of References/In-Reply-To that is bridged; the
    metadata adds where the mail lives (folder, UIDVALIDITY, UID) for read receipts. Raises
    MessageGone when a large mail is no longer on the server.
    """
    data = event.data
    raw: bytes | None = None
    if data.get("raw"):
        raw = base64.b64decode(data["raw"])
    else:
        raw = await client.fetch_message(
            str(data.get("folder") or "INBOX"), int(data.get("uidvalidity") or 0), int(data.get("uid") or 0),
            data.get("message_id"),
        )
        if raw is None:
            raise MessageGone("This mail is no longer on the server (it was moved or deleted).")
    config = client.config
    resolver = client.connector.dns_resolver
    converted = await asyncio.to_thread(
        email_to_matrix, raw, max_attachment_size=config.max_attachment_size, dns_resolver=resolver
    )
    meta = converted.metadata
    candidates = list(meta.get("references") or [])
    if meta.get("in_reply_to"):
        candidates.append(meta["in_reply_to"])
    root = None
    for candidate in dict.fromkeys(c for c in candidates if c and c != event.remote_id):
        if await client.bridge.is_bridged(client.login_id, candidate):
            root = candidate
            break
    reply_to = converted.reply_to_id
    if reply_to and (reply_to == event.remote_id or not await client.bridge.is_bridged(client.login_id, reply_to)):
        reply_to = None
    metadata = {
        **meta,
        "folder": data.get("folder"),
        "uidvalidity": data.get("uidvalidity"),
        "uid": data.get("uid"),
    }
    # Part IDs that sort in sending order: the core takes a message's first part (by part ID)
    # as the event that replies and threads point to, and "att-1" sorts before "body".
    parts = [replace(part, part_id=f"{i:03d}.{part.part_id}") for i, part in enumerate(converted.parts)]
    return replace(converted, parts=parts, thread_root_id=root, reply_to_id=reply_to, metadata=metadata)


# --- the sync -------------------------------------------------------------------------------


@dataclass
class Cursor:
    uidvalidity: int
    last_uid: int
    modseq: int | None

    def to_json(self) -> dict[str, Any]:
        return {"uidvalidity": self.uidvalidity, "last_uid": self.last_uid, "modseq": self.modseq}

    @classmethod
    def from_json(cls, data: Any) -> Cursor | None:
        if not isinstance(data, dict):
            return None
        try:
            modseq = data.get("modseq")
            return cls(int(data["uidvalidity"]), int(data["last_uid"]), int(modseq) if modseq is not None else None)
        except (KeyError, TypeError, ValueError):
            return None


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class MailSync:
    """The sync of one login (see the module docstring). ``run`` until cancelled."""

    def __init__(self, client: EmailClient) -> None:
        self.client = client
        self.bridge = client.bridge
        self.config = client.config
        self.login_id = client.login_id
        self.names = NameBook()
        self.connected = asyncio.Event()

    # --- state ---------------------------------------------------------------------------

    def _sync_state(self) -> dict[str, Any]:
        state = self.client.metadata.setdefault("sync", {})
        state.setdefault("folders", {})
        return state

    def cursor(self, folder: str) -> Cursor | None:
        return Cursor.from_json(self._sync_state()["folders"].get(folder))

    async def save_cursor(self, folder: str, cursor: Cursor) -> None:
        self._sync_state()["folders"][folder] = cursor.to_json()
        await self.client.save_metadata()

    @property
    def initial_done(self) -> bool:
        return bool(self._sync_state().get("initial_done"))

    async def _state(self, state: LoginState, error: str | None = None) -> None:
        await self.bridge.set_login_state(self.login_id, state, error)

    # --- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, import, watch; reconnect with backoff on failure. Runs until cancelled."""
        delay = 1.0
        first = True
        while True:
            conns: dict[str, ImapConnection] = {}
            wait = delay
            try:
                if not first:
                    await self._state(LoginState.CONNECTING)
                first = False
                conns = await self._open()
                await self._state(LoginState.CONNECTED)
                self.connected.set()
                delay = 1.0
                if not self.initial_done:
                    await self.initial_import(conns)
                await self._watch(conns)
            except asyncio.CancelledError:
                raise
            except AuthenticationFailed as e:
                await self._state(LoginState.BAD_CREDENTIALS, e.user_message)
                wait = self.config.reconnect_max_delay
            except ServerUnreachable as e:
                await self._state(LoginState.TRANSIENT_DISCONNECT, e.user_message)
            except LoginError as e:  # settings the server will not take (no STARTTLS, plaintext)
                await self._state(LoginState.BAD_CREDENTIALS, e.user_message)
                wait = self.config.reconnect_max_delay
            except (ImapError, OSError) as e:
                log.info("Mail sync of %s interrupted: %s", self.login_id, getattr(e, "user_message", type(e).__name__))
                await self._state(LoginState.TRANSIENT_DISCONNECT, getattr(e, "user_message", None)
                                  or "The connection to the mail server was lost.")
            except Exception as e:
                log.exception("Mail sync of %s failed", self.login_id)
                await self._state(LoginState.UNKNOWN_ERROR, f"The mail sync failed ({type(e).__name__}).")
            finally:
                self.connected.clear()
                for conn in conns.values():
                    await conn.close()
            await asyncio.sleep(wait * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.config.reconnect_max_delay)

    async def _open(self) -> dict[str, ImapConnection]:
        """One logged-in connection per bridged folder that exists."""
        settings = self.client.account.imap_settings(self.config)
        conns: dict[str, ImapConnection] = {}
        first = ImapConnection(settings, name=f"email-{self.login_id}")
        try:
            await first.connect()
            folders = await self._folders(first)
            for i, folder in enumerate(folders):
                if i == 0:
                    conns[folder] = first
                    continue
                conn = ImapConnection(settings, name=f"email-{self.login_id}-{i}")
                conns[folder] = conn
                await conn.connect()
            if not folders:
                conns["INBOX"] = first
        except BaseException:
            for conn in {first, *conns.values()}:
                await conn.close()
            raise
        return conns

    async def _folders(self, conn: ImapConnection) -> list[str]:
        existing = {f.name for f in await conn.list_folders() if "\\Noselect" not in f.flags}
        out: list[str] = []
        for name in self.config.sync_folders:
            if name == SENT:
                sent = self.client.account.sent_folder
                if not sent or sent not in existing:
                    sent = await conn.find_sent_folder()
                    if sent:
                        await self.client.set_sent_folder(sent)
                if sent and sent not in out:
                    out.append(sent)
                continue
            match = name if name in existing else next((e for e in existing if e.lower() == name.lower()), None)
            if match is None:
                log.warning("Folder %s of login %s does not exist; it is not bridged", name, self.login_id)
            elif match not in out:
                out.append(match)
        return out

    # --- importing -----------------------------------------------------------------------

    async def _recent_uids(self, conn: ImapConnection, status: MailboxStatus) -> list[int]:
        """UIDs of the selected folder's mail a first import takes: the last
        ``initial_sync_messages``, among the mail that arrived since the day
        ``initial_sync_days`` ago when that is set (the server searches by date)."""
        limit = self.config.initial_sync_messages
        if limit <= 0 or status.exists == 0:
            return []
        if self.config.initial_sync_days > 0:
            since = (datetime.now(UTC) - timedelta(days=self.config.initial_sync_days)).date()
            uids = await conn.search_since(since)
        else:
            uids = await conn.all_uids()
        return [u for u in uids if u < status.uidnext][-limit:]

    async def _queue(self, event: RemoteEvent) -> None:
        if event.kind == RemoteEventKind.MESSAGE and self.client.was_sent_here(event.remote_id):
            return  # our own copy in Sent of a message sent from Matrix: the core has it
        await self.bridge.queue_remote_event(event)

    def _event(self, folder: str, status: MailboxStatus, msg: FetchedMessage) -> RemoteEvent:
        return build_event(
            login_id=self.login_id, own=self.client.own_addresses, folder=folder,
            uidvalidity=status.uidvalidity, msg=msg, names=self.names,
        )

    async def _unbridged(self, folder: str, conn: ImapConnection, status: MailboxStatus,
                         uids: Sequence[int]) -> list[tuple[int, int]]:
        """(timestamp, uid) of the mail among ``uids`` not bridged yet (by Message-ID)."""
        out = []
        for chunk in _chunks(list(uids), max(self.config.fetch_batch_size, 200)):
            for msg in await conn.fetch(chunk, max_body_size=0):
                h = parse_headers(msg.header)
                if h.message_id:
                    rid = message_remote_id(h.message_id, folder, status.uidvalidity, msg.uid)
                    if await self.bridge.is_bridged(self.login_id, rid) or self.client.was_sent_here(rid):
                        continue
                out.append((event_timestamp(h, msg.internaldate), msg.uid))
        return out

    async def _fetch_and_queue(self, folder: str, conn: ImapConnection, status: MailboxStatus,
                               uids: Sequence[int]) -> None:
        for msg in await conn.fetch(uids, max_body_size=self.config.inline_message_size,
                                    batch_size=self.config.fetch_batch_size):
            await self._queue(self._event(folder, status, msg))

    async def initial_import(self, conns: dict[str, ImapConnection]) -> None:
        """Queue the recent history of every folder, oldest first across folders, then save the
        cursors. Run again after a crash, it skips what is already bridged or queued."""
        statuses: dict[str, MailboxStatus] = {}
        plan: list[tuple[int, int, str, int]] = []
        for order, (folder, conn) in enumerate(conns.items()):
            status = await conn.select(folder)
            statuses[folder] = status
            uids = await self._recent_uids(conn, status)
            plan += [(ts, order, folder, uid) for ts, uid in await self._unbridged(folder, conn, status, uids)]
        plan.sort()
        log.info("Login %s: importing %d messages from %s", self.login_id, len(plan), ", ".join(conns))
        batch = self.config.fetch_batch_size
        i = 0
        while i < len(plan):
            folder = plan[i][2]
            run = []
            while i < len(plan) and plan[i][2] == folder and len(run) < batch:
                run.append(plan[i][3])
                i += 1
            msgs = {m.uid: m for m in await conns[folder].fetch(run, max_body_size=self.config.inline_message_size,
                                                                batch_size=batch)}
            for uid in run:  # in date order, not UID order
                if uid in msgs:
                    await self._queue(self._event(folder, statuses[folder], msgs[uid]))
        for folder, status in statuses.items():
            self._sync_state()["folders"][folder] = Cursor(
                status.uidvalidity, max(status.uidnext - 1, 0), status.highestmodseq).to_json()
        self._sync_state()["initial_done"] = True
        await self.client.save_metadata()
        log.info("Login %s: initial import done", self.login_id)

    # --- watching ------------------------------------------------------------------------

    async def _watch(self, conns: dict[str, ImapConnection]) -> None:
        tasks = [asyncio.create_task(self._watch_folder(f, c), name=f"email-watch-{f}") for f, c in conns.items()]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # raises the failure
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch_folder(self, folder: str, conn: ImapConnection) -> None:
        while True:
            await self.catch_up(folder, conn)
            await conn.wait_for_changes(self.config.idle_timeout, poll_interval=self.config.poll_interval)

    async def catch_up(self, folder: str, conn: ImapConnection) -> None:
        """Queue what arrived in ``folder`` since its cursor; reflect flags seen elsewhere."""
        status = await conn.select(folder)
        cursor = self.cursor(folder)
        if cursor is None or cursor.uidvalidity != status.uidvalidity:
            if cursor is not None:
                log.info("Login %s: UIDVALIDITY of %s changed (%s -> %s); matching its mail by Message-ID",
                         self.login_id, folder, cursor.uidvalidity, status.uidvalidity)
            uids = await self._recent_uids(conn, status)
            todo = sorted(await self._unbridged(folder, conn, status, uids))
            await self._fetch_and_queue(folder, conn, status, [uid for _, uid in todo])
            await self.save_cursor(folder, Cursor(status.uidvalidity, max(status.uidnext - 1, 0), status.highestmodseq))
            return
        new = await conn.search_uids(cursor.last_uid + 1)
        log.debug("Login %s: %s has %d new message(s), modseq %s -> %s", self.login_id, folder, len(new),
                  cursor.modseq, status.highestmodseq)
        for chunk in _chunks(new, self.config.fetch_batch_size):
            await self._fetch_and_queue(folder, conn, status, chunk)
            cursor.last_uid = max(chunk)
            await self.save_cursor(folder, cursor)
        if status.highestmodseq is not None and cursor.modseq is not None and status.highestmodseq > cursor.modseq:
            await self._reflect_seen(folder, conn, status, cursor)
        if status.highestmodseq != cursor.modseq:
            cursor.modseq = status.highestmodseq
            await self.save_cursor(folder, cursor)

    async def _reflect_seen(self, folder: str, conn: ImapConnection, status: MailboxStatus, cursor: Cursor) -> None:
        """Mail marked read in another client becomes a read receipt in Matrix."""
        assert cursor.modseq is not None
        changed = await conn.changed_flags(cursor.modseq)
        seen = sorted(u for u, flags in changed.items() if "\\Seen" in flags and u <= cursor.last_uid)
        if not seen:
            return
        me = Sender(self.client.account.email, self.client.account.display_name, is_from_me=True)
        now = int(time.time() * 1000)
        for msg in await conn.fetch(seen[-_MAX_SEEN_PER_ROUND:], max_body_size=0):
            event = self._event(folder, status, msg)
            await self.bridge.queue_remote_event(RemoteEvent(
                login_id=self.login_id, portal_id=event.portal_id, kind=RemoteEventKind.READ_RECEIPT,
                remote_id=f"seen:{event.remote_id}:{status.highestmodseq}", sender=me, timestamp=now,
                target_id=event.remote_id,
            ))
