"""Reading MIME parts cheaply and leniently: their type, parameters, file name and payload.

``policy.default`` parses a header again at every ``get_content_type()`` or ``get_param()``
call; :func:`part_info` parses Content-Type and Content-Disposition once per part and keeps
the result on the part. Everything here is pure and never raises on malformed parts.
"""

from __future__ import annotations

import mimetypes
import re
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.message import Message
from email.utils import format_datetime
from typing import Any

from .convert_headers import PARSER, clean_text, display_address, header, headers_of, one_line
from .convert_html import text_to_html, unflow

__all__ = [
    "Attachment", "Body", "PartInfo", "Section", "collect_body", "decode_bytes", "image_size", "part_info",
    "payload_bytes", "raw_header",
]

_MAX_DEPTH = 12
_MAX_PARTS = 300

_ATTR = "_caliopen_info"
_VALID_TYPE = re.compile(r"^[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+$")


@dataclass(frozen=True)
class PartInfo:
    """A part's ``content_type`` (lower case, ``text/plain`` when missing or invalid, as RFC
    2045 says), its Content-Type ``params`` (lower-case names, decoded values),
    ``disposition`` (``inline``, ``attachment`` or ``None``), ``filename`` (from the
    disposition's ``filename`` or the type's ``name``, decoded) and ``content_id`` (without
    angle brackets)."""

    content_type: str
    params: dict[str, str]
    disposition: str | None
    filename: str | None
    content_id: str | None

    @property
    def maintype(self) -> str:
        return self.content_type.split("/", 1)[0]

    @property
    def subtype(self) -> str:
        return self.content_type.split("/", 1)[1]


def raw_header(part: Message, name: str) -> str | None:
    """The first ``name`` header of ``part`` as its raw text, unfolded, or ``None``."""
    name = name.lower()
    for key, value in part.raw_items():
        if key.lower() == name:
            return "".join(str(value).splitlines())
    return None


def _params(header: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        for key, value in (header.params or {}).items():
            out[str(key).lower()] = str(value)
    except Exception:
        pass
    return out


def part_info(part: Message) -> PartInfo:
    """Parse a part's Content-Type and Content-Disposition once (cached on the part)."""
    cached = getattr(part, _ATTR, None)
    if cached is not None:
        return cached
    default = "message/rfc822" if part.get_default_type() == "message/rfc822" else "text/plain"
    ctype, params = default, {}
    try:
        header = part["content-type"]
        if header is not None:
            value = str(getattr(header, "content_type", "") or "").lower()
            if _VALID_TYPE.match(value):
                ctype = value
            params = _params(header)
    except Exception:
        ctype, params = default, {}
    disposition: str | None = None
    dparams: dict[str, str] = {}
    try:
        dheader = part["content-disposition"]
        if dheader is not None:
            disposition = str(getattr(dheader, "content_disposition", "") or "").lower() or None
            dparams = _params(dheader)
    except Exception:
        disposition = None
    filename = dparams.get("filename") or params.get("name") or None
    if filename is not None:
        filename = filename.strip() or None
    cid = raw_header(part, "content-id")
    info = PartInfo(ctype, params, disposition, filename, cid.strip().strip("<>").strip() if cid else None)
    try:
        setattr(part, _ATTR, info)
    except Exception:
        pass
    return info


def payload_bytes(part: Message) -> bytes:
    """The decoded payload of a leaf part (base64 and quoted-printable undone, leniently)."""
    try:
        data = part.get_payload(decode=True)
    except Exception:
        data = None
    if isinstance(data, bytes):
        return data
    payload = part.get_payload()
    if isinstance(payload, str):
        try:
            return payload.encode("ascii", "surrogateescape")
        except UnicodeEncodeError:
            return payload.encode("utf-8", "surrogateescape")
    return b""


_CHARSET_ALIASES = {
    "ks_c_5601-1987": "cp949", "ks_c_5601": "cp949", "euc-kr": "cp949", "gb2312": "gb18030",
    "gbk": "gb18030", "x-gbk": "gb18030", "iso-8859-8-i": "iso-8859-8", "windows-874": "cp874",
    "x-sjis": "cp932", "shift_jis": "cp932", "shift-jis": "cp932", "sjis": "cp932", "x-mac-roman": "mac_roman",
    "us-ascii": "cp1252", "ascii": "cp1252", "iso-8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252",
    "iso_8859-1": "cp1252", "ansi_x3.4-1968": "cp1252", "utf8": "utf-8", "unicode-1-1-utf-7": "utf-7",
}
_NO_CHARSET = {"unknown-8bit", "x-unknown", "unknown", "8bit", "default", "x-user-defined", "none", ""}


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Decode a text payload: its declared charset (Latin-1 and ASCII read as Windows-1252,
    as browsers do) unless the bytes are valid UTF-8 while the label claims a single-byte
    Western charset; unknown labels fall back to UTF-8, then Windows-1252. Never raises."""
    label = (charset or "").strip().strip("\"'").lower()
    if label in _NO_CHARSET:
        label = ""
    codec = _CHARSET_ALIASES.get(label, label)
    if not data.isascii() and codec in ("", "cp1252", "iso-8859-15", "windows-1252"):
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    if codec:
        try:
            return data.decode(codec)
        except LookupError:
            pass
        except Exception:  # UnicodeError, or a codec that does not take bytes
            fallback = "cp1252" if codec in ("utf-8", "utf8", "utf_8") else "utf-8"
            try:
                return data.decode(fallback)
            except UnicodeDecodeError:
                try:
                    return data.decode(codec, "replace")
                except Exception:
                    pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


# --- walking a message -------------------------------------------------------------------------


_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


def _text_of(part: Message) -> str:
    info = part_info(part)
    data = payload_bytes(part)
    charset = info.params.get("charset")
    if not charset and info.subtype == "html":
        m = _META_CHARSET.search(data[:4096])
        charset = m.group(1).decode("ascii") if m else None
    text = clean_text(decode_bytes(data, charset).replace("\r\n", "\n").replace("\r", "\n"))
    if info.content_type == "text/plain" and info.params.get("format", "").lower() == "flowed":
        text = unflow(text, delsp=info.params.get("delsp", "").lower() == "yes")
    return text


@dataclass
class Section:
    """One run of body text: its plain and/or HTML form (an alternative gives both)."""

    plain: str | None = None
    html: str | None = None


@dataclass
class Attachment:
    """A file of the mail (``inline``: an inline image or a part with a Content-ID)."""

    data: bytes
    mimetype: str
    filename: str
    inline: bool = False


@dataclass
class Body:
    """What :func:`collect_body` found, in MIME order."""

    sections: list[Section] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    parts_seen: int = 0

    def has_html(self) -> bool:
        return any(s.html is not None for s in self.sections)

    def has_text(self) -> bool:
        return any(s.plain is not None or s.html is not None for s in self.sections)

    def merge(self, other: Body) -> None:
        self.sections.extend(other.sections)
        self.attachments.extend(other.attachments)
        self.notes.extend(n for n in other.notes if n not in self.notes)


SAFE_NAME = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]")


def _filename(part: Message, index: int, mimetype: str) -> str:
    name = clean_text(part_info(part).filename or "").replace("\\", "/").split("/")[-1]
    name = SAFE_NAME.sub("_", " ".join(name.split())).strip(" .")
    if not name:
        ext = mimetypes.guess_extension(mimetype) or ".bin"
        name = f"attachment-{index}{ext}"
    if len(name) > 180:
        stem, dot, ext = name.rpartition(".")
        name = (stem[: 170] + "." + ext[:8]) if dot and len(ext) <= 8 else name[:180]
    return name


def _mimetype(part: Message, filename: str | None = None) -> str:
    ctype = part_info(part).content_type
    if ctype in ("application/octet-stream", "application/x-octet-stream", "application/unknown") and filename:
        guessed, _ = mimetypes.guess_type(filename)
        if guessed:
            return guessed
    return ctype


def _attach(part: Message, out: Body, *, inline: bool = False, name: str | None = None, mimetype: str | None = None) -> None:
    index = len(out.attachments) + 1
    ctype = mimetype or part_info(part).content_type
    filename = name or _filename(part, index, ctype)
    out.attachments.append(Attachment(payload_bytes(part), mimetype or _mimetype(part, filename), filename, inline))


def _message_bytes(inner: Message) -> bytes:
    try:
        return inner.as_bytes(policy=policy.compat32)
    except Exception:
        try:
            return inner.as_string(policy=policy.compat32).encode("utf-8", "surrogateescape")
        except Exception:
            return b""


def _walk(part: Message, out: Body, depth: int) -> None:
    out.parts_seen += 1
    if depth > _MAX_DEPTH or out.parts_seen > _MAX_PARTS:
        if not any("too deeply nested" in n for n in out.notes):
            out.notes.append("Some parts of this message were not shown: it is too deeply nested or has too many parts.")
        return
    info = part_info(part)
    ctype, maintype, disposition = info.content_type, info.maintype, info.disposition
    if ctype == "message/rfc822":
        _embedded_message(part, out, depth, disposition)
        return
    if part.is_multipart():
        children = [c for c in part.get_payload() if isinstance(c, Message)]
        if ctype == "multipart/alternative":
            _alternative(children, out, depth)
        elif ctype == "multipart/related":
            _related(part, children, out, depth)
        elif ctype == "multipart/signed":
            for child in children:
                if part_info(child).content_type in _SIGNATURE_TYPES:
                    continue
                _walk(child, out, depth + 1)
        elif ctype == "multipart/encrypted":
            out.notes.append("This message is encrypted end to end (PGP/MIME). Open the attached file with your key "
                             "to read it.")
            for child in children:
                if part_info(child).content_type != "application/pgp-encrypted":
                    name = _filename(child, 0, "") if part_info(child).filename else "encrypted.asc"
                    _attach(child, out, name=name, mimetype="application/pgp-encrypted")
        else:
            for child in children:
                _walk(child, out, depth + 1)
        return
    if maintype == "multipart":
        recovered = _recover_multipart(part, info)
        if recovered is not None:
            _walk(recovered, out, depth + 1)
        else:  # a multipart without usable boundary: its body is text we can still show
            out.sections.append(Section(plain=_text_of(part)))
        return
    has_name = bool(info.filename)
    if ctype in ("text/plain", "text/html") and disposition != "attachment" and not has_name:
        text = _text_of(part)
        out.sections.append(Section(html=text) if ctype == "text/html" else Section(plain=text))
        return
    if ctype in _SIGNATURE_TYPES or ctype == "application/pgp-encrypted":
        return
    if ctype in ("application/pkcs7-mime", "application/x-pkcs7-mime"):
        out.notes.append("This message is encrypted or signed with S/MIME. Open the attached file in a mail client "
                         "that has your certificate to read it.")
    if ctype == "text/calendar":
        summary = _calendar_summary(_text_of(part))
        if summary:
            out.notes.append(summary)
        if not has_name:
            _attach(part, out, name="invite.ics")
            return
    if maintype == "text" and disposition != "attachment" and not has_name and ctype not in (
        "text/calendar", "text/rfc822-headers", "text/x-vcard", "text/vcard", "text/csv", "text/directory"
    ):
        text = _text_of(part)
        if ctype in ("text/enriched", "text/richtext"):
            text = re.sub(r"<[^>]{1,40}>", "", text).replace("<<", "<")
        out.sections.append(Section(plain=text))
        return
    _attach(part, out, inline=disposition == "inline" or bool(info.content_id))


_SIGNATURE_TYPES = {
    "application/pgp-signature", "application/pkcs7-signature", "application/x-pkcs7-signature",
}


_BOUNDARY_LINE = re.compile(r"^--([0-9A-Za-z'()+_,./:=?-]{1,70}?)(--)?[ \t]*\r?$", re.MULTILINE)


def _recover_multipart(part: Message, info: PartInfo) -> Message | None:
    """A multipart whose declared boundary is missing or never used: find the boundary its
    body does use (a ``--token`` line seen at least twice) and parse it again with that."""
    payload = part.get_payload()
    if not isinstance(payload, str) or len(payload) > 50_000_000:
        return None
    counts: dict[str, int] = {}
    for m in _BOUNDARY_LINE.finditer(payload):
        counts[m.group(1)] = counts.get(m.group(1), 0) + 1
    if not counts:
        return None
    boundary, seen = max(counts.items(), key=lambda kv: kv[1])
    if seen < 2 or boundary == info.params.get("boundary"):
        return None
    try:
        body = payload.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:
        body = payload.encode("utf-8", "surrogateescape")
    head = f'Content-Type: {info.content_type}; boundary="{boundary}"\n\n'.encode()
    try:
        again = PARSER.parsebytes(head + body)
    except Exception:
        return None
    return again if again.is_multipart() and again.get_payload() else None


def _alternative(children: list[Message], out: Body, depth: int) -> None:
    bodies = []
    for child in children:
        sub = Body(parts_seen=out.parts_seen)
        _walk(child, sub, depth + 1)
        out.parts_seen = sub.parts_seen
        bodies.append(sub)
    html_body = next((b for b in reversed(bodies) if b.has_html()), None)
    plain_body = next((b for b in bodies if b.has_text() and not b.has_html()), None)
    chosen = html_body or plain_body or (bodies[-1] if bodies else None)
    if chosen is None:
        return
    plain = "\n\n".join(s.plain for s in plain_body.sections if s.plain is not None) if plain_body else None
    html = "\n<br>\n".join(s.html if s.html is not None else text_to_html(s.plain or "") for s in chosen.sections) \
        if html_body else None
    if html is not None or plain is not None:
        out.sections.append(Section(plain=plain, html=html))
    out.attachments.extend(chosen.attachments)
    for b in bodies:
        if b is not chosen and b is not plain_body:
            out.attachments.extend(b.attachments)  # calendar invites and other non-text alternatives
        out.notes.extend(n for n in b.notes if n not in out.notes)


def _related(part: Message, children: list[Message], out: Body, depth: int) -> None:
    if not children:
        return
    start = part_info(part).params.get("start", "").strip().strip("<>")
    root = next((c for c in children if start and part_info(c).content_id == start), children[0])
    _walk(root, out, depth + 1)
    for child in children:
        if child is root:
            continue
        if child.is_multipart():
            _walk(child, out, depth + 1)
        else:
            _attach(child, out, inline=True)


def _embedded_message(part: Message, out: Body, depth: int, disposition: str | None) -> None:
    payload = part.get_payload()
    inner = payload[0] if isinstance(payload, list) and payload and isinstance(payload[0], Message) else None
    if inner is None:
        _attach(part, out, name="message.eml", mimetype="message/rfc822")
        return
    if disposition == "attachment" or part_info(part).filename:
        subject = one_line(str(header(inner, "subject") or "")) or "message"
        name = _filename(part, len(out.attachments) + 1, "message/rfc822") if part_info(part).filename else \
            SAFE_NAME.sub("_", subject)[:100].strip(" .") + ".eml"
        out.attachments.append(Attachment(_message_bytes(inner), "message/rfc822", name or "message.eml"))
        return
    headers = headers_of(inner)
    lines = ["---------- Forwarded message ----------"]
    if headers.from_addr:
        lines.append(f"From: {display_address(headers.from_name, headers.from_addr)}")
    if headers.date_ms is not None:
        lines.append("Date: " + format_datetime(datetime.fromtimestamp(headers.date_ms / 1000, tz=UTC)))
    if headers.subject:
        lines.append(f"Subject: {headers.subject}")
    if headers.to:
        lines.append("To: " + ", ".join(display_address(n, a) for n, a in headers.to))
    sub = Body(parts_seen=out.parts_seen)
    _walk(inner, sub, depth + 1)
    out.parts_seen = sub.parts_seen
    intro = "\n".join(lines)
    out.sections.append(Section(plain=intro, html=None))
    out.merge(sub)


def _calendar_summary(text: str) -> str | None:
    unfolded = re.sub(r"\r?\n[ \t]", "", text)
    fields: dict[str, str] = {}
    for line in unfolded.splitlines():
        key, sep, value = line.partition(":")
        key = key.split(";", 1)[0].upper()
        if sep and key in ("METHOD", "SUMMARY", "DTSTART", "LOCATION") and key not in fields:
            fields[key] = value.replace("\\,", ",").replace("\\n", " ").strip()
    if "SUMMARY" not in fields and "DTSTART" not in fields:
        return None
    when = fields.get("DTSTART", "")
    m = re.match(r"^(\d{4})(\d{2})(\d{2})(?:T(\d{2})(\d{2}))?", when)
    if m:
        when = f"{m.group(1)}-{m.group(2)}-{m.group(3)}" + (f" {m.group(4)}:{m.group(5)}" if m.group(4) else "")
        if fields.get("DTSTART", "").endswith("Z"):
            when += " UTC"
    kind = {"REQUEST": "Invitation", "CANCEL": "Cancelled", "REPLY": "Reply to invitation"}.get(
        fields.get("METHOD", "").upper(), "Event")
    text = f"{kind}: {fields.get('SUMMARY', '(no title)')}"
    if when:
        text += f", {when}"
    if fields.get("LOCATION"):
        text += f", {fields['LOCATION']}"
    return one_line(text)[:300]


def image_size(data: bytes) -> tuple[int, int] | None:
    """Width and height of a PNG, GIF or JPEG image from its header, or ``None``. Pure."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            w, h = struct.unpack(">II", data[16:24])
            return (w, h) if w and h else None
        if data[:6] in (b"GIF87a", b"GIF89a"):
            w, h = struct.unpack("<HH", data[6:10])
            return (w, h) if w and h else None
        if data[:2] == b"\xff\xd8":
            i = 2
            while i + 9 < len(data):
                if data[i] != 0xFF:
                    i += 1
                    continue
                marker = data[i + 1]
                if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
                    i += 2 if marker != 0xFF else 1
                    continue
                length = struct.unpack(">H", data[i + 2 : i + 4])[0]
                if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                    h, w = struct.unpack(">HH", data[i + 5 : i + 9])
                    return (w, h) if w and h else None
                i += 2 + length
    except (struct.error, IndexError):
        return None
    return None


def collect_body(msg: Message) -> Body:
    """Walk a parsed message into its text sections (plain and/or HTML, in order), its
    attachments and inline images, and notes for the reader (encrypted content, calendar
    invitations, parts left out). Never raises on malformed MIME."""
    body = Body()
    _walk(msg, body, 0)
    return body
