"""IMAP for the email bridge: one connection, its blocking calls off the event loop.

Protocol code only: it knows imapclient and :mod:`bridges.core.errors`, nothing of the bridge.
Each :class:`ImapConnection` owns one imapclient connection and one worker thread of its own
(IMAP is one command at a time per connection, and an IDLE can hold the thread for minutes, so
sharing the event loop's default executor would starve it). Every method is a coroutine that
runs its blocking calls on that thread, in the order they were called.

Messages are read with ``BODY.PEEK[]`` so nothing is marked read; folders the sync watches are
opened read-only (EXAMINE). Errors::

    LoginError (core)
    ├── AuthenticationFailed    the server refused the username or password
    └── ServerUnreachable       DNS, refused connection, timeout, TLS failure (retry later)
    ImapError (CaliopenError)   a command failed after login
    └── ImapConnectionLost      the connection dropped (retry later)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import imaplib
import ipaddress
import logging
import re
import socket
import ssl
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, TypeVar

from imapclient import IMAPClient
from imapclient import exceptions as imap_exc
from imapclient.imapclient import SocketTimeout

from ..core.errors import CaliopenError, LoginError

log = logging.getLogger("caliopen.email.imap")

# imapclient logs the protocol at DEBUG: message text, and a password sent as a literal. Never
# let that through, whatever level the bridge logs at.
for _name in ("imapclient", "imapclient.imaplib", "imapclient.imapclient"):
    logging.getLogger(_name).setLevel(logging.INFO)

T = TypeVar("T")

#: Names tried, in order, for the Sent folder when the server does not flag it (SPECIAL-USE).
SENT_FOLDER_NAMES = (
    "Sent", "Sent Items", "Sent Messages", "Sent Mail", "[Gmail]/Sent Mail", "INBOX.Sent",
    "INBOX/Sent", "Gesendet", "Gesendete Objekte", "Envoyés", "Éléments envoyés", "Enviados",
    "Elementos enviados", "Inviati", "Posta inviata", "Verzonden", "Verzonden items", "Skickat",
)

#: Untagged responses that mean the selected folder changed.
_CHANGE_RESPONSES = {b"EXISTS", b"EXPUNGE", b"FETCH", b"RECENT", b"VANISHED"}


class Security(str, enum.Enum):
    """How a connection is protected."""

    TLS = "tls"  # implicit TLS (IMAPS 993, SMTPS 465)
    STARTTLS = "starttls"  # plain connection upgraded with STARTTLS (IMAP 143, submission 587)
    PLAIN = "plain"  # no encryption: only to a server on this machine, when allowed


class ImapError(CaliopenError):
    """An IMAP command failed after login."""


class ImapConnectionLost(ImapError):
    """The IMAP connection dropped; worth reconnecting."""


class AuthenticationFailed(LoginError):
    """The server refused the username or password."""


class ServerUnreachable(LoginError):
    """The server could not be reached or its TLS could not be established; retry later."""


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses. No I/O."""
    host = host.strip("[]").lower()
    if host in ("localhost", "localhost.") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerSettings:
    """Where and how to connect to a mail server (IMAP or SMTP submission)."""

    host: str
    port: int
    security: Security
    username: str
    password: str = field(repr=False)
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)
    timeout: float = 60.0
    allow_plaintext_loopback: bool = False

    def tls_context(self) -> ssl.SSLContext:
        """The context to verify the server with (the system's CAs unless one was given)."""
        return self.ssl_context or ssl.create_default_context()

    def check_security(self, what: str) -> None:
        """Refuse an unencrypted connection unless allowed, and only to this machine.

        Raises LoginError with the reason. No I/O.
        """
        if self.security != Security.PLAIN:
            return
        if not self.allow_plaintext_loopback:
            raise LoginError(f"Unencrypted {what} connections are not allowed on this bridge: choose TLS or STARTTLS.")
        if not is_loopback(self.host):
            raise LoginError(
                f"Unencrypted {what} connections are only allowed to a server on this machine, "
                f"not to {self.host}: choose TLS or STARTTLS."
            )


def describe_connect_error(what: str, settings: ServerSettings, exc: BaseException) -> str:
    """A sentence for a person about why connecting to a server failed. No I/O."""
    where = f"{settings.host}:{settings.port}"
    if isinstance(exc, socket.gaierror):
        return f"The {what} server {settings.host} could not be found: check its name."
    if isinstance(exc, ConnectionRefusedError):
        return f"The {what} server {where} refused the connection: check the host and port."
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"The certificate of the {what} server {where} is not valid ({exc.verify_message})."
    if isinstance(exc, ssl.SSLError):
        return (
            f"A secure connection to the {what} server {where} could not be set up: "
            f"check the port and the security setting ({exc.reason or exc})."
        )
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return f"The {what} server {where} did not answer in time."
    return f"The {what} server {where} could not be reached ({type(exc).__name__})."


@dataclass(frozen=True)
class Folder:
    name: str
    flags: frozenset[str]
    delimiter: str | None


@dataclass(frozen=True)
class MailboxStatus:
    """A selected folder's state (RFC 3501, with HIGHESTMODSEQ from CONDSTORE)."""

    folder: str
    uidvalidity: int
    uidnext: int
    exists: int
    highestmodseq: int | None


@dataclass(frozen=True)
class FetchedMessage:
    """One message. ``raw`` is None when it is larger than the caller's size limit."""

    uid: int
    flags: frozenset[str]
    internaldate: datetime | None
    size: int
    header: bytes
    raw: bytes | None
    modseq: int | None = None


def _flag(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _chunks(items: Sequence[int], size: int) -> Iterable[Sequence[int]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class ImapConnection:
    """One IMAP connection (see the module docstring). Made with no I/O; ``connect`` logs in."""

    def __init__(self, settings: ServerSettings, *, name: str = "imap") -> None:
        self.settings = settings
        self.name = name
        self.capabilities: frozenset[str] = frozenset()
        self.selected: MailboxStatus | None = None
        self._client: IMAPClient | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._closing = False

    # --- plumbing ------------------------------------------------------------------------

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            raise ImapConnectionLost("The IMAP connection is closed.")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn)
        except (CaliopenError, asyncio.CancelledError):
            raise
        except imap_exc.LoginError as e:
            raise AuthenticationFailed(self._auth_message()) from e
        except (imaplib.IMAP4.abort, OSError, EOFError) as e:
            # imaplib.IMAP4.abort: the connection broke; OSError covers resets and timeouts.
            self.selected = None
            raise ImapConnectionLost(f"The connection to {self.settings.host} was lost ({type(e).__name__}).") from e
        except (imaplib.IMAP4.error, imap_exc.IMAPClientError) as e:
            raise ImapError(f"The IMAP server {self.settings.host} refused a command: {_short(e)}") from e

    def _auth_message(self) -> str:
        return (
            f"The mail server {self.settings.host} refused the username or password for "
            f"{self.settings.username}. If your provider uses app passwords, create one and use it here."
        )

    def _require(self) -> IMAPClient:
        if self._client is None:
            raise ImapConnectionLost("The IMAP connection is closed.")
        return self._client

    @property
    def connected(self) -> bool:
        return self._client is not None

    def has(self, capability: str) -> bool:
        return capability.upper() in self.capabilities

    # --- connecting ----------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect, secure and log in.

        Raises AuthenticationFailed (wrong username or password), ServerUnreachable (DNS,
        refused, timeout, TLS), or LoginError (plaintext refused, no STARTTLS offered).
        """
        s = self.settings
        s.check_security("IMAP")
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"caliopen-{self.name}")
        self._closing = False

        def connect() -> frozenset[str]:
            timeout = SocketTimeout(connect=min(s.timeout, 30.0), read=s.timeout)
            try:
                client = IMAPClient(
                    s.host,
                    port=s.port,
                    ssl=s.security == Security.TLS,
                    ssl_context=s.tls_context() if s.security == Security.TLS else None,
                    timeout=timeout,
                )
            except (OSError, imaplib.IMAP4.error) as e:
                raise ServerUnreachable(describe_connect_error("IMAP", s, e)) from e
            try:
                if s.security == Security.STARTTLS:
                    if not client.has_capability("STARTTLS"):
                        raise LoginError(
                            f"The IMAP server {s.host}:{s.port} does not offer STARTTLS: "
                            "choose TLS (usually port 993) instead."
                        )
                    try:
                        client.starttls(s.tls_context())
                    except (OSError, imaplib.IMAP4.error) as e:
                        raise ServerUnreachable(describe_connect_error("IMAP", s, e)) from e
                try:
                    if (s.username + s.password).isascii():
                        client.login(s.username, s.password)
                    elif client.has_capability("AUTH=PLAIN"):
                        client.plain_login(s.username, s.password)  # UTF-8, where LOGIN is ASCII only
                    else:
                        raise LoginError(
                            f"The IMAP server {s.host} cannot take a username or password with "
                            "non-ASCII characters."
                        )
                except imap_exc.LoginError as e:
                    raise AuthenticationFailed(self._auth_message()) from e
                except (OSError, imaplib.IMAP4.abort) as e:
                    raise ServerUnreachable(describe_connect_error("IMAP", s, e)) from e
                caps = frozenset(_flag(c).upper() for c in client.capabilities())
                if "ENABLE" in caps and ("QRESYNC" in caps or "CONDSTORE" in caps):
                    # Makes SELECT report HIGHESTMODSEQ and FETCH accept CHANGEDSINCE.
                    client.enable("QRESYNC" if "QRESYNC" in caps else "CONDSTORE")
            except BaseException:
                _quietly(client.shutdown)
                raise
            _keepalive(client.socket())
            self._client = client
            return caps

        self.capabilities = await self._run(connect)
        log.debug("%s connected to %s:%s", self.name, s.host, s.port)

    async def close(self) -> None:
        """Log out (best effort) and end the worker thread. Interrupts a running IDLE."""
        self._closing = True
        client, self._client = self._client, None
        executor, self._executor = self._executor, None
        self.selected = None
        if client is not None:
            # Shutting the socket down wakes a thread blocked in IDLE or a read.
            _quietly(lambda: client.socket().shutdown(socket.SHUT_RDWR))
        if executor is not None:
            if client is not None:
                executor.submit(lambda: _quietly(client.shutdown))
            executor.shutdown(wait=False)

    # --- folders -------------------------------------------------------------------------

    async def list_folders(self) -> list[Folder]:
        """Every folder with its flags (``\\Sent``, ``\\Noselect`` ...)."""

        def run() -> list[Folder]:
            out = []
            for flags, delimiter, name in self._require().list_folders():
                out.append(Folder(
                    name=_flag(name),
                    flags=frozenset(_flag(f) for f in flags),
                    delimiter=_flag(delimiter) if delimiter else None,
                ))
            return out

        return await self._run(run)

    async def find_sent_folder(self) -> str | None:
        """The Sent folder: the one flagged ``\\Sent`` (SPECIAL-USE), else a usual name."""
        folders = [f for f in await self.list_folders() if "\\Noselect" not in f.flags]
        for f in folders:
            if "\\Sent" in f.flags:
                return f.name
        by_name = {f.name.lower(): f.name for f in folders}
        for candidate in SENT_FOLDER_NAMES:
            if candidate.lower() in by_name:
                return by_name[candidate.lower()]
        for f in folders:  # "INBOX.Sent Items" and the like
            leaf = re.split(r"[./]", f.name)[-1].lower()
            if leaf in ("sent", "sent items", "sent messages", "sent mail"):
                return f.name
        return None

    async def select(self, folder: str, *, readonly: bool = True) -> MailboxStatus:
        """Open ``folder`` (EXAMINE when ``readonly``) and return its state."""

        def run() -> MailboxStatus:
            client = self._require()
            info = client.select_folder(folder, readonly=readonly)
            _drain_changes(client)  # what SELECT itself reported is in ``info``
            modseq = info.get(b"HIGHESTMODSEQ")
            return MailboxStatus(
                folder=folder,
                uidvalidity=int(info.get(b"UIDVALIDITY", 0)),
                uidnext=int(info.get(b"UIDNEXT", 0)),
                exists=int(info.get(b"EXISTS", 0)),
                highestmodseq=int(modseq) if modseq is not None else None,
            )

        status = await self._run(run)
        if not status.uidnext:
            status = await self._status_uidnext(status)
        self.selected = status
        return status

    async def _status_uidnext(self, status: MailboxStatus) -> MailboxStatus:
        def run() -> int:
            return int(self._require().folder_status(status.folder, [b"UIDNEXT"]).get(b"UIDNEXT", 0))

        uidnext = await self._run(run)
        return MailboxStatus(status.folder, status.uidvalidity, uidnext, status.exists, status.highestmodseq)

    # --- reading -------------------------------------------------------------------------

    async def search_uids(self, first: int, last: int | None = None) -> list[int]:
        """UIDs in ``first..last`` (``last`` None: to the end) in the selected folder, ascending.

        ``UID SEARCH UID n:*`` answers the last message even when all UIDs are below n; those
        are filtered out here.
        """
        first = max(1, first)
        spec = f"{first}:{last if last is not None else '*'}"

        def run() -> list[int]:
            return list(self._require().search(["UID", spec]))

        uids = await self._run(run)
        return sorted(u for u in uids if u >= first and (last is None or u <= last))

    async def all_uids(self) -> list[int]:
        """Every UID of the selected folder, ascending."""
        return sorted(await self._run(lambda: list(self._require().search("ALL"))))

    async def search_since(self, day: date) -> list[int]:
        """UIDs of the selected folder's messages that arrived on ``day`` or later, ascending.

        ``UID SEARCH SINCE``: the server compares the date of each INTERNALDATE, in its own
        time zone, not the time.
        """
        return sorted(await self._run(lambda: list(self._require().search(["SINCE", day]))))

    async def search_message_id(self, message_id: str) -> list[int]:
        """UIDs of messages with this Message-ID (given with or without angle brackets)."""
        mid = message_id.strip().strip("<>")

        def run() -> list[int]:
            return list(self._require().search(["HEADER", "Message-ID", f"<{mid}>"]))

        return sorted(await self._run(run))

    async def fetch(self, uids: Sequence[int], *, max_body_size: int, batch_size: int = 50) -> list[FetchedMessage]:
        """Fetch messages by UID in batches, ascending; nothing is marked read.

        Headers, flags, INTERNALDATE and size come for every message; the whole message
        (``BODY.PEEK[]``) only for those of at most ``max_body_size`` bytes. UIDs that no
        longer exist are left out.
        """
        out: list[FetchedMessage] = []
        for chunk in _chunks(sorted(set(uids)), batch_size):
            out.extend(await self._fetch_chunk(chunk, max_body_size))
        return out

    async def _fetch_chunk(self, chunk: Sequence[int], max_body_size: int) -> list[FetchedMessage]:
        def run() -> list[FetchedMessage]:
            client = self._require()
            items = ["UID", "RFC822.SIZE", "FLAGS", "INTERNALDATE", "BODY.PEEK[HEADER]"]
            if self.has("CONDSTORE"):
                items.append("MODSEQ")
            meta = client.fetch(list(chunk), items)
            small = [uid for uid, d in meta.items() if int(d.get(b"RFC822.SIZE", 0)) <= max_body_size]
            bodies = client.fetch(small, ["BODY.PEEK[]"]) if small else {}
            result = []
            for uid in sorted(meta):
                d = meta[uid]
                modseq = d.get(b"MODSEQ")
                raw = bodies.get(uid, {}).get(b"BODY[]")
                result.append(FetchedMessage(
                    uid=int(uid),
                    flags=frozenset(_flag(f) for f in d.get(b"FLAGS", ())),
                    internaldate=d.get(b"INTERNALDATE"),
                    size=int(d.get(b"RFC822.SIZE", 0)),
                    header=d.get(b"BODY[HEADER]") or b"",
                    raw=bytes(raw) if raw is not None else None,
                    modseq=int(modseq[0]) if modseq else None,
                ))
            return result

        return await self._run(run)

    async def fetch_raw(self, uid: int) -> bytes | None:
        """The whole message with this UID in the selected folder, or None when it is gone."""

        def run() -> bytes | None:
            data = self._require().fetch([uid], ["BODY.PEEK[]"])
            raw = data.get(uid, {}).get(b"BODY[]")
            return bytes(raw) if raw is not None else None

        return await self._run(run)

    async def changed_flags(self, since_modseq: int) -> dict[int, frozenset[str]]:
        """Flags of the messages whose flags changed after ``since_modseq`` (CONDSTORE).

        Returns {} when the server lacks CONDSTORE.
        """
        if not self.has("CONDSTORE"):
            return {}

        def run() -> dict[int, frozenset[str]]:
            client = self._require()
            uids = list(client.search(["MODSEQ", str(int(since_modseq) + 1)]))
            data = client.fetch(uids, ["FLAGS"]) if uids else {}
            return {int(uid): frozenset(_flag(f) for f in d.get(b"FLAGS", ())) for uid, d in data.items()}

        return await self._run(run)

    # --- writing -------------------------------------------------------------------------

    async def set_seen(self, uids: Sequence[int]) -> None:
        """Set ``\\Seen`` on these UIDs of the selected folder (must be selected read-write)."""
        if not uids:
            return
        await self._run(lambda: self._require().add_flags(list(uids), [b"\\Seen"], silent=True))

    async def append(
        self, folder: str, raw: bytes, *, flags: Sequence[str] = ("\\Seen",), when: datetime | None = None
    ) -> tuple[int, int] | None:
        """APPEND ``raw`` to ``folder``; return (UIDVALIDITY, UID) when the server says (UIDPLUS)."""

        def run() -> tuple[int, int] | None:
            resp = self._require().append(folder, raw, flags=tuple(flags), msg_time=when)
            text = resp if isinstance(resp, bytes) else str(resp).encode()
            m = re.search(rb"APPENDUID (\d+) (\d+)", text)
            return (int(m.group(1)), int(m.group(2))) if m else None

        return await self._run(run)

    # --- waiting for mail ----------------------------------------------------------------

    async def wait_for_changes(self, timeout: float, *, poll_interval: float = 60.0) -> bool:
        """Wait until the selected folder changes or ``timeout`` seconds pass.

        With IDLE the server tells us (the IDLE is ended and re-issued by the caller before
        ``timeout``, which must stay under the 29 minutes servers allow). Without IDLE a NOOP
        every ``poll_interval`` seconds asks. Returns True when the server reported a change
        (new or expunged messages, flag changes). Raises ImapConnectionLost when the connection
        drops, and returns False at once after :meth:`close`.
        """
        if self.has("IDLE"):
            return await self._run(lambda: self._idle(timeout))
        deadline = time.monotonic() + timeout
        while not self._closing:
            if await self.noop():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            await asyncio.sleep(min(poll_interval, remaining))
        return False

    async def noop(self) -> bool:
        """NOOP; True when the server reported a change to the selected folder."""

        def run() -> bool:
            client = self._require()
            _, responses = client.noop()
            return _drain_changes(client) | _changed(responses)

        return await self._run(run)

    def _idle(self, timeout: float) -> bool:
        client = self._require()
        if _drain_changes(client):
            return True  # announced in answer to an earlier command (SEARCH, FETCH): not again
        deadline = time.monotonic() + timeout
        client.idle()
        changed = False
        try:
            while not self._closing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                started = time.monotonic()
                responses = client.idle_check(timeout=remaining)
                if _changed(responses):
                    changed = True
                    break
                if not responses and time.monotonic() - started < remaining * 0.9:
                    break  # woken without a response: the connection closed (idle_done tells)
        finally:
            if self._closing:
                return False  # noqa: B012 (a closed connection has nothing more to say)
            _, responses = client.idle_done()
        return changed or _changed(responses)


def _keepalive(sock: socket.socket) -> None:
    """TCP keepalive, so that an IDLE on a connection a NAT or a peer dropped silently ends in
    minutes rather than at the next IDLE renewal."""
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 20), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    for level, option, value in options:
        _quietly(lambda level=level, option=option, value=value: sock.setsockopt(level, option, value))


def _drain_changes(client: IMAPClient) -> bool:
    """Whether the server announced changes to the selected folder in answer to some earlier
    command (imaplib keeps such untagged responses aside); forgets them.

    A server announces new mail once per session: an EXISTS that came with a SEARCH or a FETCH
    is not repeated by the next NOOP or IDLE, so it must be caught here.
    """
    pending = client._imap.untagged_responses  # imaplib's store of unsolicited responses
    found = False
    for code in ("EXISTS", "RECENT", "EXPUNGE", "FETCH", "VANISHED"):
        if pending.pop(code, None):
            found = True
    return found


def _changed(responses: Any) -> bool:
    for resp in responses or ():
        if isinstance(resp, tuple) and len(resp) >= 2 and isinstance(resp[1], bytes):
            if resp[1].upper() in _CHANGE_RESPONSES:
                return True
    return False


def _short(exc: BaseException) -> str:
    text = str(exc)
    if text.startswith(("b'", 'b"')):
        text = text[2:-1]
    return text[:200]


def _quietly(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 (best-effort cleanup of a connection being dropped)
        pass
