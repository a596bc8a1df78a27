"""The demo's mailbox: the sandbox mail servers with one account and a first message in it.

Available where Debian's Dovecot and Postfix are installed (``make demo`` installs them).
"""

from __future__ import annotations

import asyncio
import secrets
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from datetime import datetime, timezone

from .mailservers import MailServers

DOVECOT = Path("/usr/sbin/dovecot")
POSTFIX_MASTER = Path("/usr/lib/postfix/sbin/master")


def mail_sandbox_available() -> bool:
    return DOVECOT.exists() and POSTFIX_MASTER.exists()


class MailSandbox:
    """Dovecot + Postfix on loopback with a demo account (``demo@mail.test``)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.servers = MailServers()
        self.address = ""
        self.password = secrets.token_urlsafe(10)

    @property
    def ca_file(self) -> Path:
        return self.servers.ca_file

    async def start(self) -> None:
        await asyncio.to_thread(self.servers.start)
        self.address = await asyncio.to_thread(self.servers.add_user, "demo", self.password)
        welcome = EmailMessage()
        welcome["From"] = "Caliopen <hello@caliopen.example>"
        welcome["To"] = self.address
        welcome["Subject"] = "Welcome to your private inbox"
        welcome["Date"] = format_datetime(datetime.now(timezone.utc))
        welcome["Message-ID"] = make_msgid(domain="caliopen.example")
        welcome.set_content("This mail reached your Matrix client through an encrypted room.\n"
                            "Answer it from Matrix: the answer goes out by SMTP.")
        await asyncio.to_thread(self.servers.deliver, bytes(welcome), self.address)

    async def stop(self) -> None:
        await asyncio.to_thread(self.servers.stop)

    def describe(self) -> list[str]:
        s = self.servers
        return [
            "  Demo mailbox (send `login email` to the bot and answer with these):",
            f"    address {self.address}, password {self.password}",
            f"    IMAP {s.host} port {s.imaps_port} (tls), SMTP {s.host} port {s.submission_port} (starttls)",
        ]
