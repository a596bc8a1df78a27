"""The headers of a mail, decoded and normalised: what the sync needs to route it.

Pure functions on ``email`` messages parsed with ``policy.default``; none of them raises on
malformed mail (missing Date or From, 8-bit bytes in headers, bad encoded words).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import logging
import quopri
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.header import decode_header, make_header
from email.headerregistry import HeaderRegistry
from email.message import Message
from email.parser import BytesParser
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any

from ..core.errors import UserInputError
from . import ids

__all__ = [
    "PARSER", "POLICY", "EmailHeaders", "clean_text", "display_address", "header", "headers_of", "one_line", "parse_headers",
    "prepare_raw", "raw_values",
]

log = logging.getLogger("caliopen.email.convert")



class _CachingHeaderRegistry(HeaderRegistry):
    """``policy.default``'s header registry, remembering the classes it builds and the headers
    it parsed. The standard one makes a new class at every header it parses, and the parser
    reads Content-Type again at every ``get_content_type()``: caching keeps conversion fast.
    Header objects are immutable strings, so sharing them is safe."""

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[str, type] = {}
        self._parsed: dict[tuple[str, str], Any] = {}

    def __getitem__(self, name: str) -> type:
        cls = self._classes.get(name)
        if cls is None:
            cls = self._classes[name] = super().__getitem__(name)
        return cls

    def __call__(self, name: str, value: str) -> Any:
        key = (name, value)
        header = self._parsed.get(key)
        if header is None:
            header = self[name](name, value)
            if len(value) <= 512:
                if len(self._parsed) >= 4096:
                    self._parsed.clear()
                self._parsed[key] = header
        return header


#: ``policy.default`` with a caching header registry: what every mail here is parsed with.
POLICY = policy.default.clone(header_factory=_CachingHeaderRegistry())
PARSER = BytesParser(policy=POLICY)


# --- headers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmailHeaders:
    """The headers of one mail, decoded and normalised.

    Addresses are lower-cased addr-specs (see :func:`bridges.email.ids.normalize_address`),
    message IDs have no angle brackets (:func:`bridges.email.ids.normalize_message_id`),
    ``to``/``cc``/``reply_to`` are ``(display name, address)`` pairs, ``date_ms`` is
    milliseconds since the epoch, ``list_id`` is the List-Id's identifier (no phrase, no
    brackets). Missing headers are ``None`` or empty.
    """

    message_id: str | None
    in_reply_to: str | None
    references: list[str]
    subject: str
    from_addr: str | None
    from_name: str | None
    to: list[tuple[str, str]]
    cc: list[tuple[str, str]]
    reply_to: list[tuple[str, str]]
    date_ms: int | None
    list_id: str | None
    auto_submitted: bool = False
    sender_addr: str | None = None


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def clean_text(text: str) -> str:
    """Remove NULs and other control characters; raw bytes carried as surrogates (8-bit
    headers, unknown charsets) are decoded as in :func:`fix_8bit`, other lone surrogates
    replaced."""
    if any("\ud800" <= ch <= "\udfff" for ch in text):
        text = fix_8bit(text)
        if any("\ud800" <= ch <= "\udfff" for ch in text):
            text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return _CONTROL.sub("", text)


def one_line(text: str) -> str:
    return " ".join(clean_text(text).split())


_HIGH_RUN = re.compile(rb"[\x80-\xff]+")


def _decode_run(match: re.Match[bytes]) -> bytes:
    run = match.group(0)
    try:
        text = run.decode("utf-8")
    except UnicodeDecodeError:
        text = run.decode("cp1252", "replace")
    return text.encode("utf-8")


def fix_8bit(value: str) -> str:
    """Decode the raw bytes a str carries as surrogates (``surrogateescape``: 8-bit bytes in
    headers, encoded words in unknown charsets): each run of them as UTF-8 (RFC 6532) or,
    failing that, Windows-1252, so headers that mix both still read right."""
    if not any("\udc80" <= ch <= "\udcff" for ch in value):
        return value
    try:
        data = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return value
    return _HIGH_RUN.sub(_decode_run, data).decode("utf-8", "replace")


_ENCODED_WORD = re.compile(r"=\?([^?*\s]+)(\*[^?\s]*)?\?([QqBb])\?([^?\s]*)\?=")


def _fix_encoded_word(match: re.Match[str]) -> str:
    charset, lang, kind, text = match.groups()
    try:
        codecs.lookup(charset)
        return match.group(0)
    except LookupError:
        pass
    try:
        data = base64.b64decode(text + "===", validate=False) if kind in "Bb" else \
            quopri.decodestring(text.replace("_", " ").encode("ascii", "replace"), header=True)
    except (ValueError, binascii.Error):
        return match.group(0)
    try:
        data.decode("utf-8")
        charset = "utf-8"
    except UnicodeDecodeError:
        charset = "windows-1252"
    return f"=?{charset}{lang or ''}?{kind}?{text}?="


def fix_encoded_words(value: str) -> str:
    """Give encoded words in unknown charsets (``=?unknown-8bit?q?…?=``, ``=?x-foo?b?…?=``)
    the charset their bytes fit: UTF-8 when valid, else Windows-1252."""
    return _ENCODED_WORD.sub(_fix_encoded_word, value) if "=?" in value else value


def raw_values(msg: Message, name: str) -> list[str]:
    name = name.lower()
    out = []
    for key, value in msg.raw_items():
        if key.lower() == name and isinstance(value, str):
            try:
                fixed = fix_8bit(value)
            except UnicodeError:
                fixed = value.encode("utf-8", "replace").decode("utf-8")
            out.append(fix_encoded_words("".join(fixed.splitlines())))
    return out


def header(msg: Message, name: str) -> Any:
    """The first ``name`` header as a policy.default header object, or its text when parsing
    it fails, or ``None``."""
    values = raw_values(msg, name)
    if not values:
        return None
    try:
        return POLICY.header_factory(name, values[0])
    except Exception:
        return values[0]


_FULL_PARSE_LIMIT = 8_000


def _decode_words(text: str) -> str:
    try:
        return str(make_header(decode_header(text)))
    except Exception:
        return text


def _addresses(msg: Message, name: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for value in raw_values(msg, name):
        pairs: list[tuple[str, str]] = []
        if len(value) <= _FULL_PARSE_LIMIT:
            try:
                header = POLICY.header_factory(name, value)
                pairs = [(a.display_name or "", a.addr_spec or "") for a in header.addresses]
            except Exception:  # the header parser fails on some malformed groups
                pairs = []
        if not pairs:
            # Long lists (the full parser is slow on thousands of recipients) and what it
            # could not read: the lenient parser, encoded words decoded by hand.
            pairs = [(_decode_words(n), a) for n, a in getaddresses([value])]
        for display, addr in pairs:
            addr = one_line(addr)
            if "@" not in addr:
                continue
            try:
                norm = ids.normalize_address(addr)
            except UserInputError:
                norm = addr.lower().strip("<>")
            if norm in seen:
                continue
            seen.add(norm)
            out.append((one_line(display), norm))
    return out


def _date_ms(msg: Message) -> int | None:
    values = raw_values(msg, "date")
    if not values:
        return None
    dt: datetime | None = None
    try:
        dt = POLICY.header_factory("date", values[0]).datetime
    except Exception:
        dt = None
    if dt is None:
        try:
            dt = parsedate_to_datetime(values[0])
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    try:
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return int(dt.timestamp() * 1000)
    except (OverflowError, ValueError, OSError):
        return None


def headers_of(msg: Message) -> EmailHeaders:
    subject_header = header(msg, "subject")
    subject = one_line(str(subject_header)) if subject_header is not None else ""
    from_list = _addresses(msg, "from")
    sender_list = _addresses(msg, "sender")
    first = from_list[0] if from_list else (sender_list[0] if sender_list else None)
    mid_values = raw_values(msg, "message-id")
    irt_values = raw_values(msg, "in-reply-to")
    ref_values = raw_values(msg, "references")
    in_reply_to = ids.parse_message_ids(irt_values[0]) if irt_values else []
    references = ids.parse_message_ids(" ".join(ref_values)) if ref_values else []
    list_values = raw_values(msg, "list-id")
    auto = (raw_values(msg, "auto-submitted") or ["no"])[0].strip().lower()
    return EmailHeaders(
        message_id=ids.normalize_message_id(mid_values[0]) if mid_values else None,
        in_reply_to=in_reply_to[0] if in_reply_to else None,
        references=references,
        subject=subject,
        from_addr=first[1] if first else None,
        from_name=(first[0] or None) if first else None,
        to=_addresses(msg, "to"),
        cc=_addresses(msg, "cc"),
        reply_to=_addresses(msg, "reply-to"),
        date_ms=_date_ms(msg),
        list_id=ids.normalize_list_id(list_values[0]) if list_values else None,
        auto_submitted=bool(auto) and not auto.startswith("no"),
        sender_addr=sender_list[0][1] if sender_list else None,
    )


def prepare_raw(raw: bytes) -> bytes:
    """Drop what comes before the headers: blank lines and an mbox ``From `` line."""
    raw = raw.lstrip(b"\r\n")
    if raw.startswith(b"From ") and not re.match(rb"From\s*:", raw) and b"\n" in raw[:2000]:
        raw = raw.split(b"\n", 1)[1]
    return raw


def parse_headers(raw: bytes) -> EmailHeaders:
    """Parse and normalise the headers of a raw mail (see :class:`EmailHeaders`). Pure; never
    raises: missing, 8-bit or badly encoded headers give what can be read of them."""
    try:
        msg = PARSER.parsebytes(prepare_raw(raw), headersonly=True)
        return headers_of(msg)
    except Exception as e:
        log.warning("Could not read the headers of a %d-byte mail: %s", len(raw), type(e).__name__)
        return EmailHeaders(None, None, [], "", None, None, [], [], [], None, None)


def display_address(name: str | None, addr: str) -> str:
    """``Name <addr>``, or the bare address when there is no name."""
    return f"{name} <{addr}>" if name else addr
