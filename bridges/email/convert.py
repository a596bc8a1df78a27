"""Mail ↔ Matrix message conversion. No I/O; nothing here raises on bad mail.

Email → Matrix (:func:`email_to_matrix`): the standard library's ``email`` (``policy.default``)
parses the raw message; the body becomes one ``m.text`` part (plain text, and Matrix-safe HTML
in ``formatted_body``, the quoted history folded into a ``<details>`` block), each attachment
or inline image one ``m.image``/``m.file``/``m.audio``/``m.video`` part (a notice when it is
larger than the limit), and the message carries its threading IDs, metadata for replies and the
``org.caliopen.privacy`` block. A message that cannot be read at all still arrives: a notice
with its sender, subject and size, and the raw ``.eml`` attached.

Matrix → email (:func:`build_outgoing`, from :mod:`.convert_out`): one Matrix message becomes
an :class:`~email.message.EmailMessage` ready for SMTP.

:func:`parse_headers` (from :mod:`.convert_headers`) gives the headers the sync needs to route
a mail (portal, remote ID, sender) without converting it.

The work is shared with :mod:`.convert_headers` (headers), :mod:`.convert_mime` (the MIME
tree), :mod:`.convert_html` (sanitising, quoted history) and :mod:`.convert_out`.
"""

from __future__ import annotations

import html as html_lib
import json
import logging
import re
from email.message import Message
from typing import Any

from ..core.events import ConvertedMessage, ConvertedPart, Media
from . import privacy
from .convert_headers import PARSER, EmailHeaders, display_address, headers_of, one_line, parse_headers, prepare_raw
from .convert_html import html_to_text, sanitize_html, split_html_quote, split_text_quote, text_to_html
from .convert_mime import Attachment, Body, collect_body, image_size
from .convert_out import build_outgoing

__all__ = [
    "DEFAULT_MAX_EVENT_BYTES",
    "EMAIL_KEY",
    "EmailHeaders",
    "build_outgoing",
    "email_to_matrix",
    "human_size",
    "parse_headers",
    "thread_subject",
]

log = logging.getLogger("caliopen.email.convert")

#: Key of the mail's headers in the first part's content.
EMAIL_KEY = "org.caliopen.email"
#: Largest event content (JSON bytes, privacy block included) a message part may have. Matrix
#: events are capped at 64 KiB and end-to-end encryption grows them by about a third.
DEFAULT_MAX_EVENT_BYTES = 40_000
QUOTE_SUMMARY = "Quoted text"


_SUBJECT_PREFIX = re.compile(
    r"^\s*(?:re|fwd?|aw|wg|sv|vs|vb|fs|vl|antw|antwort|réf|ref|rif|r|res|enc|tr|rv|odp|pd|ynt|ilt|İlt"
    r"|ang|atb|bls|ris|απ|σχετ|προωθ|ответ|пересл|回复|答复|回覆|转发|轉寄|轉送|答覆|fw)"
    r"\s*(?:\[\d+\]|\(\d+\))?\s*[:：]\s*",
    re.IGNORECASE,
)
_LIST_TAG = re.compile(r"^(\s*\[[^\[\]]{1,60}\]\s*)")
_FORWARD_PREFIX = re.compile(r"^\s*(?:\[[^\[\]]{1,60}\]\s*)?(fwd?|fw|wg|tr|rv|enc|vs|vb|pd|ilt|İlt|転送|转发|轉寄|пересл)\s*[:：]", re.I)


def thread_subject(subject: str) -> str:
    """Return ``subject`` without its reply and forward prefixes (``Re:``, ``Fwd:``, ``AW:``,
    ``SV:``, ``RE[2]:``, ``回复：``…, repeated), keeping a leading ``[list]`` tag and collapsing
    whitespace. Pure."""
    text = one_line(subject or "")
    tag_match = _LIST_TAG.match(text)
    tag = tag_match.group(1).strip() + " " if tag_match else ""
    rest = text[tag_match.end() :] if tag_match else text
    while True:
        stripped = _SUBJECT_PREFIX.sub("", rest, count=1)
        inner_tag = _LIST_TAG.match(stripped)
        if inner_tag and not tag:
            tag = inner_tag.group(1).strip() + " "
            stripped = stripped[inner_tag.end() :]
        elif inner_tag and inner_tag.group(1).strip() + " " == tag:
            stripped = stripped[inner_tag.end() :]
        if stripped == rest:
            break
        rest = stripped
    return (tag + rest).strip()


_DISPLAYABLE_IMAGES = {"image/png", "image/jpeg", "image/gif", "image/webp"}


def _msgtype(mimetype: str) -> str:
    if mimetype in _DISPLAYABLE_IMAGES:
        return "m.image"
    if mimetype.startswith("audio/"):
        return "m.audio"
    if mimetype.startswith("video/"):
        return "m.video"
    return "m.file"


def human_size(size: int) -> str:
    """``1536`` → ``"1.5 KB"``. Pure."""
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} bytes"


def _attachment_part(att: Attachment, index: int, max_size: int) -> ConvertedPart:
    size = len(att.data)
    if size > max_size:
        return ConvertedPart(f"att-{index}", {
            "msgtype": "m.notice",
            "body": f"Attachment not bridged: {att.filename} ({human_size(size)}), larger than the "
                    f"{human_size(max_size)} limit. It is still in the mailbox.",
            f"{EMAIL_KEY}.attachment": {"filename": att.filename, "mimetype": att.mimetype, "size": size,
                                        "skipped": "too_large"},
        })
    msgtype = _msgtype(att.mimetype)
    dims = image_size(att.data) if msgtype == "m.image" else None
    content: dict[str, Any] = {
        "msgtype": msgtype,
        "body": att.filename,
        "filename": att.filename,
        "info": {"mimetype": att.mimetype, "size": size},
    }
    if dims:
        content["info"]["w"], content["info"]["h"] = dims
    media = Media(data=att.data, mimetype=att.mimetype, filename=att.filename,
                  width=dims[0] if dims else None, height=dims[1] if dims else None)
    return ConvertedPart(f"att-{index}", content, media=media)


def _is_forward(subject: str) -> bool:
    return bool(_FORWARD_PREFIX.match(subject))


def _json_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False).encode("utf-8"))


_MAX_SUBJECT = 1000
_MAX_LISTED = 50


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _people(pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return [{"name": _shorten(n, 200) or None, "address": _shorten(a, 320)} for n, a in pairs[:_MAX_LISTED]]


def _email_block(h: EmailHeaders, *, thread_root: bool) -> dict[str, Any]:
    """The headers shown in the first part's content (long lists cut: the metadata has them all)."""
    return {
        "subject": _shorten(h.subject, _MAX_SUBJECT),
        "from": {"name": h.from_name, "address": h.from_addr},
        "to": _people(h.to),
        "cc": _people(h.cc),
        "more_recipients": max(0, len(h.to) + len(h.cc) - len(h.to[:_MAX_LISTED]) - len(h.cc[:_MAX_LISTED])),
        "message_id": h.message_id,
        "date": h.date_ms,
        "thread_root": thread_root,
        "list_id": h.list_id,
    }


def _metadata(h: EmailHeaders) -> dict[str, Any]:
    return {
        "message_id": h.message_id,
        "subject": h.subject,
        "references": h.references,
        "in_reply_to": h.in_reply_to,
        "from": h.from_addr,
        "from_name": h.from_name,
        "to": [a for _, a in h.to],
        "cc": [a for _, a in h.cc],
        "reply_to": [a for _, a in h.reply_to],
        "list_id": h.list_id,
        "date_ms": h.date_ms,
    }


def email_to_matrix(
    raw: bytes,
    *,
    max_attachment_size: int,
    trim_quotes: bool = True,
    dns_resolver: privacy.DnsResolver | None = None,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    as_thread_root: bool | None = None,
) -> ConvertedMessage:
    """Convert one raw mail into Matrix message parts. Pure (no I/O); never raises.

    Parts: ``body`` (``m.text``, or ``m.notice`` for automatic mail; absent when the mail has
    only attachments and is not a thread root), then ``att-1``, ``att-2``… in MIME order (a
    notice instead of the file when it is larger than ``max_attachment_size`` bytes). The
    first part carries the headers under ``org.caliopen.email``; a thread root (no
    In-Reply-To/References) shows its subject in bold. With ``trim_quotes`` the quoted history
    of a reply is folded into ``<details>`` in ``formatted_body`` and left out of ``body``.
    A body too large for one Matrix event is cut, with the full text attached as a file.

    ``thread_root_id`` is the first References entry (else In-Reply-To), ``reply_to_id`` the
    In-Reply-To (else the last References entry), both as message remote IDs.
    ``privacy`` is :func:`bridges.email.privacy.analyse`'s block; DKIM is verified only
    when ``dns_resolver`` is given. A mail that cannot be read becomes a notice (sender,
    subject, size) and the raw message as ``message.eml``.

    ``as_thread_root`` overrides whether the mail is shown as a thread root (subject in bold,
    ``thread_root`` flag): pass ``True`` for a reply whose thread was never bridged.
    ``max_event_bytes`` caps each part's content (see :data:`DEFAULT_MAX_EVENT_BYTES`).
    """
    try:
        msg = PARSER.parsebytes(prepare_raw(raw))
        if not _looks_like_mail(msg):
            return _unreadable(raw, max_attachment_size, dns_resolver, reason="no mail headers")
        return _convert(raw, msg, max_attachment_size, trim_quotes, dns_resolver, max_event_bytes, as_thread_root)
    except Exception as e:  # the sync must go on: a mail we cannot read still arrives
        log.warning("Could not convert a %d-byte mail: %s", len(raw), type(e).__name__, exc_info=True)
        return _unreadable(raw, max_attachment_size, dns_resolver, reason=type(e).__name__)


_MAIL_HEADERS = ("from", "to", "cc", "subject", "date", "message-id", "received", "mime-version",
                 "content-type", "sender", "return-path", "delivered-to", "reply-to")


def _looks_like_mail(msg: Message) -> bool:
    return any(key.lower() in _MAIL_HEADERS for key, _ in msg.raw_items())


def _privacy(raw: bytes, msg: Message | None, resolver: privacy.DnsResolver | None) -> dict[str, Any] | None:
    try:
        return privacy.analyse(raw, dns_resolver=resolver, message=msg)
    except Exception:
        return None


def _unreadable(raw: bytes, max_size: int, resolver: privacy.DnsResolver | None, *, reason: str) -> ConvertedMessage:
    h = parse_headers(raw)
    sender = display_address(h.from_name, h.from_addr) if h.from_addr else "an unknown sender"
    subject = f"“{h.subject}”" if h.subject else "no subject"
    parts = [ConvertedPart("body", {
        "msgtype": "m.notice",
        "body": f"A mail could not be read: from {sender}, {subject}, {human_size(len(raw))}. "
                + ("The original is attached." if len(raw) <= max_size else "It is too large to attach; it is "
                   "still in the mailbox."),
        EMAIL_KEY: {**_email_block(h, thread_root=not (h.references or h.in_reply_to)), "unreadable": reason},
    })]
    if len(raw) <= max_size:
        parts.append(ConvertedPart("att-1", {
            "msgtype": "m.file", "body": "message.eml", "filename": "message.eml",
            "info": {"mimetype": "message/rfc822", "size": len(raw)},
        }, media=Media(data=raw, mimetype="message/rfc822", filename="message.eml")))
    privacy_block = None
    try:
        privacy_block = _privacy(raw, None, resolver)
    except Exception:
        privacy_block = None
    return ConvertedMessage(
        parts=parts,
        thread_root_id=h.references[0] if h.references else h.in_reply_to,
        reply_to_id=h.in_reply_to or (h.references[-1] if h.references else None),
        privacy=privacy_block,
        metadata=_metadata(h),
    )


def _convert(
    raw: bytes,
    msg: Message,
    max_size: int,
    trim_quotes: bool,
    resolver: privacy.DnsResolver | None,
    max_bytes: int,
    as_thread_root: bool | None,
) -> ConvertedMessage:
    h = headers_of(msg)
    body = collect_body(msg)
    privacy_block = _privacy(raw, msg, resolver)

    thread_root_id = h.references[0] if h.references else h.in_reply_to
    if thread_root_id == h.message_id:
        thread_root_id = None
    reply_to_id = h.in_reply_to or (h.references[-1] if h.references else None)
    if reply_to_id == h.message_id:
        reply_to_id = None
    is_root = thread_root_id is None if as_thread_root is None else as_thread_root

    plain, html = _assemble(body)
    text_part, extra_files = _text_content(
        h, plain, html, body.notes, is_root=is_root, trim=trim_quotes and not _is_forward(h.subject),
        budget=max_bytes - (_json_size(privacy_block) if privacy_block else 0),
    )
    parts: list[ConvertedPart] = []
    if text_part is not None:
        parts.append(ConvertedPart("body", text_part))
    attachments = body.attachments + extra_files
    for i, att in enumerate(attachments, start=1):
        parts.append(_attachment_part(att, i, max_size))
    if not parts:
        parts.append(ConvertedPart("body", {"msgtype": "m.notice", "body": "(empty message)"}))
    first = parts[0]
    content = dict(first.content)
    content[EMAIL_KEY] = {**_email_block(h, thread_root=is_root), **content.get(EMAIL_KEY, {})}
    parts[0] = ConvertedPart(first.part_id, content, first.event_type, first.media)
    return ConvertedMessage(
        parts=parts,
        thread_root_id=thread_root_id,
        reply_to_id=reply_to_id,
        privacy=privacy_block,
        metadata=_metadata(h),
    )


def _assemble(body: Body) -> tuple[str, str | None]:
    """The whole body as plain text, and as HTML when any section has HTML."""
    plain_pieces: list[str] = []
    html_pieces: list[str] = []
    any_html = body.has_html()
    for s in body.sections:
        plain = s.plain if s.plain is not None else html_to_text(s.html or "")
        if plain.strip():
            plain_pieces.append(plain.strip("\n"))
        if any_html:
            piece = s.html if s.html is not None else text_to_html(s.plain or "")
            if piece.strip():
                html_pieces.append(piece)
    plain_text = "\n\n".join(plain_pieces).strip()
    html = "\n<br>\n".join(html_pieces) if any_html and html_pieces else None
    return plain_text, html


def _text_content(
    h: EmailHeaders,
    plain: str,
    html: str | None,
    notes: list[str],
    *,
    is_root: bool,
    trim: bool,
    budget: int,
) -> tuple[dict[str, Any] | None, list[Attachment]]:
    new_plain, quoted_plain = split_text_quote(plain) if trim and plain else (plain, None)
    new_html_raw: str | None = None
    quoted_html_raw: str | None = None
    if html is not None:
        new_html_raw, quoted_html_raw = split_html_quote(html) if trim else (html, None)
        if quoted_html_raw is not None and quoted_plain is None:
            # Keep body and formatted_body telling the same story.
            new_plain = html_to_text(new_html_raw)
            quoted_plain = html_to_text(quoted_html_raw)
        elif quoted_html_raw is None and quoted_plain is not None:
            new_plain, quoted_plain = plain, None
    remote_images = 0
    new_html = ""
    quoted_html = ""
    if new_html_raw is not None:
        cleaned = sanitize_html(new_html_raw)
        new_html, remote_images = cleaned.html, cleaned.remote_images
        if not new_html and new_plain.strip():
            new_html = text_to_html(new_plain)
        if quoted_html_raw is not None:
            cleaned_quote = sanitize_html(quoted_html_raw)
            quoted_html, remote_images = cleaned_quote.html, remote_images + cleaned_quote.remote_images
    else:
        new_html = text_to_html(new_plain) if new_plain else ""
        if quoted_plain is not None:
            quoted_html = text_to_html(quoted_plain)

    note_lines = [n for n in notes if n]
    has_text = bool(new_plain.strip() or new_html or note_lines)
    if not has_text and not (is_root and h.subject):
        return None, []

    subject = _shorten(h.subject, _MAX_SUBJECT)
    subject_html = f"<p><strong>{html_lib.escape(subject)}</strong></p>\n" if is_root and subject else ""
    subject_plain = f"{subject}\n\n" if is_root and subject else ""
    notes_plain = "".join(f"\n\n{n}" for n in note_lines)
    notes_html = "".join(f"\n<p><em>{html_lib.escape(n)}</em></p>" for n in note_lines)
    image_note = ""
    if remote_images:
        image_note = (f"\n<p><em>{remote_images} remote image{'s' if remote_images > 1 else ''} not loaded: "
                      "remote images tell the sender when and where a mail is read.</em></p>")
    details = f"\n<details><summary>{QUOTE_SUMMARY}</summary>\n{quoted_html}\n</details>" if quoted_html else ""
    hidden = "\n\n[quoted text hidden]" if quoted_html else ""
    needs_html = bool(html is not None or details or subject_html or image_note or note_lines)

    msgtype = "m.notice" if h.auto_submitted else "m.text"
    content: dict[str, Any] = {"msgtype": msgtype}
    extra: list[Attachment] = []

    def build(with_details: bool, with_html: bool, text: str) -> dict[str, Any]:
        c = dict(content)
        pieces = [subject_plain.strip(), (text + hidden).strip(), notes_plain.strip()]
        c["body"] = "\n\n".join(p for p in pieces if p) or subject
        if with_html and needs_html:
            c["format"] = "org.matrix.custom.html"
            c["formatted_body"] = subject_html + new_html + (details if with_details else "") + notes_html + image_note
        c[EMAIL_KEY] = {"remote_images_blocked": remote_images, "quoted_text_folded": bool(details) and with_details}
        return c

    email_block_size = _json_size(_email_block(h, thread_root=is_root)) + 200
    room = max(budget - email_block_size, 2000)
    for with_details, with_html in ((True, True), (False, True), (False, False)):
        candidate = build(with_details, with_html, new_plain)
        if _json_size(candidate) <= room:
            return candidate, extra
    # Too large for one event even as plain text: cut it and attach the whole.
    full_text = (subject_plain + plain + notes_plain).strip()
    extra.append(Attachment(full_text.encode("utf-8"), "text/plain", "message.txt"))
    if html is not None:
        full_html = sanitize_html(html).html
        if full_html:
            doc = f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"></head><body>{full_html}</body></html>"
            extra.append(Attachment(doc.encode("utf-8"), "text/html", "message.html"))
    marker = "\n\n[message cut: the whole text is attached]"
    text = new_plain
    limit = room - 500
    while text and _json_size(build(False, False, text + marker)) > room:
        text = text[: max(0, min(len(text) - 1, limit))]
        limit = int(limit * 0.8)
    return build(False, False, text + marker), extra
