"""Matrix → email: sending a message, marking mail read, starting a conversation.

Capabilities implemented here (exposed by :class:`bridges.email.client.EmailClient`):
:class:`~bridges.core.network.SupportsStartChat` (:func:`resolve_identifier`) and
:class:`~bridges.core.network.SupportsReadReceipts` (:func:`mark_read`).

A message goes to the room's correspondents (the portal's members; a mailing list's room
writes to the list's posting address), from the login's address. In a thread it answers the
thread: ``Re:`` and the thread's subject, In-Reply-To the message replied to (else the thread
root), References carried on from it; outside a thread it starts a new one whose subject is the
first line. It is sent over SMTP, then filed in the Sent folder as the login's ``save_sent``
says, else the bridge's (see :meth:`EmailClient.file_sent`; best effort: a mail that went out
is not reported as failed because the copy could not be filed).
"""

from __future__ import annotations

import logging
import time
from email import policy
from typing import TYPE_CHECKING, Any

from ..core.errors import SendError, UserInputError
from ..core.events import ChatInfo, MatrixMessage, MessageRef, PortalRef, SentMessage
from .config import SaveSent
from .convert import build_outgoing, thread_subject
from .errors import ImapError
from .handle_remote import chat_info_for
from .ids import SELF_PORTAL_ID, normalize_address, normalize_message_id, portal_id_for
from .smtp import SmtpSubmission

if TYPE_CHECKING:
    from .client import EmailClient

log = logging.getLogger("caliopen.email.send")

_SMTP_POLICY = policy.SMTP.clone(max_line_length=998)


def recipients_for(portal: PortalRef, own: frozenset[str]) -> list[str]:
    """Who a message in this portal goes to. Pure."""
    members = [m for m in portal.metadata.get("members") or [] if isinstance(m, str) and "@" in m]
    if not members and not portal.portal_id.startswith(("list:", "group:")) and portal.portal_id != SELF_PORTAL_ID:
        members = [a for a in portal.portal_id.split(",") if "@" in a]
    out: list[str] = []
    for m in members:
        try:
            addr = normalize_address(m)
        except UserInputError:
            continue
        if addr not in own and addr not in out:
            out.append(addr)
    return out


def threading_for(msg: MatrixMessage) -> tuple[str, str | None, list[str]]:
    """(Subject, In-Reply-To, References) of a message sent from Matrix. Pure.

    ``Subject`` is empty for a new thread (the mail builder takes the first line).
    """
    parent: MessageRef | None = msg.reply_to or msg.thread_root
    if parent is None:
        return "", None, []
    root = msg.thread_root or parent
    subject = thread_subject(str(root.metadata.get("subject") or parent.metadata.get("subject") or ""))
    subject = f"Re: {subject}" if subject else "Re:"
    in_reply_to = normalize_message_id(parent.metadata.get("message_id")) or normalize_message_id(parent.remote_id)
    references = [r for r in (normalize_message_id(str(v)) for v in parent.metadata.get("references") or []) if r]
    if not references and root is not parent:
        root_id = normalize_message_id(root.metadata.get("message_id")) or normalize_message_id(root.remote_id)
        if root_id:
            references.append(root_id)
    references = [r for r in dict.fromkeys(references) if r and r != in_reply_to]
    return subject, in_reply_to, references


async def send_message(client: EmailClient, msg: MatrixMessage) -> SentMessage:
    """Send ``msg`` as a mail; file a copy in Sent. Raises SendError saying why it failed."""
    account = client.account
    recipients = recipients_for(msg.portal, client.own_addresses)
    if not recipients and msg.portal.portal_id == SELF_PORTAL_ID:
        recipients = [account.email]  # notes to self
    if not recipients:
        raise SendError("This room has no email address to write to.")
    subject, in_reply_to, references = threading_for(msg)
    try:
        mail = build_outgoing(
            msg, from_addr=account.email, from_name=account.display_name, to=recipients, cc=[],
            subject=subject, in_reply_to=in_reply_to, references=references, domain=account.domain,
        )
    except UserInputError as e:
        raise SendError(e.user_message) from e
    raw = mail.as_bytes(policy=_SMTP_POLICY)
    remote_id = normalize_message_id(str(mail["Message-ID"]))
    assert remote_id is not None
    client.remember_sent(remote_id)
    submission = SmtpSubmission(account.smtp_settings(client.config), local_hostname=account.domain)
    await submission.send(raw, sender=account.email, recipients=recipients)
    sent_at = int(time.time() * 1000)
    metadata: dict[str, Any] = {
        "message_id": remote_id,
        "subject": str(mail["Subject"] or ""),
        "references": [*references, *([in_reply_to] if in_reply_to else [])],
        "in_reply_to": in_reply_to,
        "from": account.email,
        "to": recipients,
        "cc": [],
    }
    mode = client.save_sent
    if mode != SaveSent.NEVER:
        try:
            filed = await client.file_sent(raw, remote_id, mode)
            if filed is not None:
                folder, uidvalidity, uid = filed
                metadata.update({"folder": folder, "uidvalidity": uidvalidity, "uid": uid})
        except (ImapError, OSError) as e:
            log.warning("Login %s: the sent mail could not be filed in Sent (%s)", client.login_id,
                        getattr(e, "user_message", type(e).__name__))
    return SentMessage(remote_id=remote_id, timestamp=sent_at, metadata=metadata)


async def mark_read(client: EmailClient, portal: PortalRef, messages: list[MessageRef]) -> None:
    """Set ``\\Seen`` on the mail behind these bridged messages (those that are not yet)."""
    by_folder: dict[str, list[MessageRef]] = {}
    for ref in messages:
        folder = ref.metadata.get("folder")
        if isinstance(folder, str) and folder:
            by_folder.setdefault(folder, []).append(ref)
    for folder, refs in by_folder.items():
        await client.set_seen(folder, refs)


async def resolve_identifier(client: EmailClient, identifier: str) -> tuple[str, ChatInfo]:
    """The portal of a conversation with one address. Raises UserInputError."""
    address = normalize_address(identifier)
    if address in client.own_addresses:
        raise UserInputError(f"{address} is your own address: write to someone else.")
    portal_id = portal_id_for([address])
    return portal_id, chat_info_for(portal_id, [(address, None)])
