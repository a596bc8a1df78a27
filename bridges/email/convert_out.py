"""Matrix → email: one Matrix message becomes a mail ready for SMTP. Pure, no I/O."""

from __future__ import annotations

import html as html_lib
import re
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, getaddresses, make_msgid

from ..core.errors import UserInputError
from ..core.events import MatrixMessage
from . import ids
from .convert_headers import clean_text, one_line
from .convert_html import sanitize_html
from .convert_mime import SAFE_NAME

__all__ = ["build_outgoing"]


_MX_REPLY = re.compile(r"<mx-reply>.*?</mx-reply>", re.DOTALL | re.IGNORECASE)
_MAX_REFERENCES = 20
_TOKEN = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")  # RFC 6838 type and subtype names
_CHARSET = re.compile(r"(?:^|[\s;])charset\s*=\s*\"?([A-Za-z0-9._:+-]{1,40})\"?", re.IGNORECASE)


def _bracket(message_id: str) -> str | None:
    """``<id>`` for a Message-ID given with or without brackets; ``None`` for the IDs the bridge
    made itself (synthetic or hashed remote IDs are not Message-IDs)."""
    mid = ids.normalize_message_id(message_id)
    if not mid or ("@" not in mid and mid.startswith(("mid:", "sha256:", "imap:"))):
        return None
    return f"<{mid}>"


def _strip_reply_fallback(body: str) -> str:
    lines = body.split("\n")
    if lines and lines[0].startswith("> <"):
        i = 0
        while i < len(lines) and lines[i].startswith(">"):
            i += 1
        if i < len(lines) and not lines[i].strip():
            return "\n".join(lines[i + 1 :])
    return body


def _address(name: str | None, addr: str, given: str) -> Address:
    ids.normalize_address(addr)  # raises UserInputError for what is not one address
    try:
        return Address(display_name=one_line(name or ""), addr_spec=addr.strip())
    except Exception as e:  # HeaderParseError, ValueError: not writable in a header
        raise UserInputError(f"'{given}' is not an email address") from e


def _address_list(values: list[str]) -> list[Address]:
    out: list[Address] = []
    for value in values:
        for name, addr in getaddresses([value]) or [("", value)]:
            addr = addr.strip()
            if not addr:
                continue
            out.append(_address(name, addr, value))
    return out


def build_outgoing(
    msg: MatrixMessage,
    *,
    from_addr: str,
    from_name: str | None,
    to: list[str],
    cc: list[str],
    subject: str,
    in_reply_to: str | None,
    references: list[str],
    domain: str,
    sender_name: str | None = None,
) -> EmailMessage:
    """Build the mail for one Matrix message. Pure (no I/O).

    Headers: From (with ``from_name``), To, Cc, Subject (the first line of the text when
    ``subject`` is empty), Date (the event's time, in UTC), Message-ID (``make_msgid`` on
    ``domain``), In-Reply-To and References (``references`` then ``in_reply_to``; IDs with or
    without angle brackets). Body: plain text, with an HTML alternative when the event has a
    ``formatted_body`` (sanitised, Matrix reply fallbacks removed); an emote reads ``* name
    text`` (``sender_name``, else ``from_name``, else the address); ``msg.media`` becomes an
    attachment (its caption, if any, the text) holding the file's bytes unchanged in base64,
    with its file name and MIME type (a text file's charset when given, or ``utf-8`` when it
    decodes as such). Raises :class:`UserInputError` for an address
    that cannot be written in a header.
    """
    out = EmailMessage()
    out["From"] = _address(from_name, from_addr, from_addr)
    to_list, cc_list = _address_list(to), _address_list(cc)
    if to_list:
        out["To"] = to_list
    if cc_list:
        out["Cc"] = cc_list

    text = _strip_reply_fallback(msg.body or "")
    html = _MX_REPLY.sub("", msg.formatted_body) if msg.formatted_body else None
    if msg.media is not None and text.strip() == msg.media.filename:
        text, html = "", None  # no caption: the body is only the file name
    if msg.msgtype == "m.emote":
        name = sender_name or from_name or from_addr.split("@")[0]
        text = f"* {name} {text}"
        if html is not None:
            html = f"* {html_lib.escape(name)} {html}"

    subject = one_line(subject)
    if not subject:
        first_line = next((line.strip() for line in text.splitlines() if line.strip()), "")
        subject = (first_line[:75] + "…") if len(first_line) > 78 else first_line
        if not subject and msg.media is not None:
            subject = msg.media.filename
    out["Subject"] = subject
    when = datetime.fromtimestamp(msg.timestamp / 1000, tz=UTC) if msg.timestamp else datetime.now(UTC)
    out["Date"] = format_datetime(when)
    out["Message-ID"] = make_msgid(domain=domain)
    refs = [b for b in (_bracket(r) for r in references) if b]
    parent = _bracket(in_reply_to) if in_reply_to else None
    if parent:
        out["In-Reply-To"] = parent
        if parent not in refs:
            refs.append(parent)
    if len(refs) > _MAX_REFERENCES:
        refs = refs[:1] + refs[-(_MAX_REFERENCES - 1) :]
    if refs:
        out["References"] = " ".join(refs)

    if text.strip() or msg.media is None:
        plain = clean_text(text).replace("\r\n", "\n") + ("\n" if not text.endswith("\n") else "")
        # Quoted-printable keeps non-ASCII mail 7-bit clean for servers without 8BITMIME.
        out.set_content(plain, cte=None if plain.isascii() else "quoted-printable")
        if html is not None:
            safe = sanitize_html(html).html
            if safe:
                out.add_alternative(
                    "<!DOCTYPE html><html><head><meta charset=\"utf-8\"></head><body>" + safe + "</body></html>\n",
                    subtype="html",
                )
    if msg.media is not None:
        maintype, subtype, charset = _media_type(msg.media.mimetype)
        if maintype == "text" and charset is None and _is_utf8(msg.media.data):
            charset = "utf-8"
        filename = SAFE_NAME.sub("_", msg.media.filename or "attachment").strip(" .") or "attachment"
        # The file's bytes as they are, in base64, text included: its line ends and its
        # encoding reach the correspondent unchanged.
        out.add_attachment(msg.media.data, maintype=maintype, subtype=subtype, filename=filename,
                           params={"charset": charset} if charset else None)
    return out


def _media_type(value: str | None) -> tuple[str, str, str | None]:
    """(maintype, subtype, charset) of a MIME type as Matrix gives it, parameters allowed;
    ``application/octet-stream`` for what is not one, and for multipart and message types,
    whose bodies MIME does not allow in base64. Pure."""
    essence, _, params = (value or "").partition(";")
    maintype, _, subtype = essence.strip().lower().partition("/")
    if not _TOKEN.fullmatch(maintype) or not _TOKEN.fullmatch(subtype) or maintype in ("multipart", "message"):
        return "application", "octet-stream", None
    m = _CHARSET.search(params)
    return maintype, subtype, (m.group(1).lower() if m and maintype == "text" else None)


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
