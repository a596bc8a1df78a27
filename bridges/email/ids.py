"""Every ID the email bridge makes: addresses, portal IDs and message remote IDs.

Nothing here does I/O. The core treats all of these as opaque strings; they are made here and
only here so that the IMAP sync, the SMTP sender and the converter agree on them.

- An address is the lower-cased addr-spec (``alice@example.org``), its domain in ASCII
  (IDNA), without display name. It is also a ghost's remote ID.
- A portal ID names a discussion: the *set* of correspondents other than the user (order and
  case do not matter), or a mailing list (``list:`` + its List-Id).
- A message's remote ID is its Message-ID without the angle brackets; a message without one
  gets a synthetic ID from its raw bytes (so the same mail seen in two folders, or again after
  a UIDVALIDITY change, keeps its ID) or, failing that, from its IMAP coordinates.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from email.utils import getaddresses

from ..core.errors import UserInputError

__all__ = [
    "MAX_ID_LENGTH",
    "SELF_PORTAL_ID",
    "normalize_address",
    "normalize_message_id",
    "parse_message_ids",
    "portal_id_for",
    "message_remote_id",
]

#: Longest ID this module returns; longer natural IDs are replaced by a hash.
MAX_ID_LENGTH = 200

#: The portal of mail whose only correspondent is the user (notes to self).
SELF_PORTAL_ID = "self"

_LOCAL_ATOM = re.compile(r"^[^\s@<>()\[\]\\,;:\"]+$")
_QUOTED_LOCAL = re.compile(r'^"(?:[^"\\\r\n]|\\.)*"$')
_DOMAIN_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_ADDRESS_LITERAL = re.compile(r"^\[[^\[\]\s\\]+\]$")


def _idna_domain(domain: str) -> str:
    domain = domain.strip().rstrip(".").lower()
    if _ADDRESS_LITERAL.match(domain):
        return domain
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError as e:
            raise UserInputError(f"'{domain}' is not a valid mail domain") from e
    labels = domain.split(".")
    if len(domain) > 253 or not all(_DOMAIN_LABEL.match(label) for label in labels):
        raise UserInputError(f"'{domain}' is not a valid mail domain")
    return domain


def normalize_address(addr: str) -> str:
    """Return the lower-cased addr-spec of ``addr`` (``"Alice <Alice@Example.org>"`` gives
    ``alice@example.org``); an internationalised domain is given in its ASCII (IDNA) form.

    Pure; raises :class:`~bridges.core.errors.UserInputError` when ``addr`` is not one email
    address (empty, no ``@``, several addresses, spaces or brackets in the wrong place).
    """
    if not isinstance(addr, str):
        raise UserInputError("an email address must be text")
    text = addr.replace("\x00", "").strip()
    if not text:
        raise UserInputError("an empty text is not an email address")
    if text.lower().startswith("mailto:"):
        text = text[7:].split("?", 1)[0]
    if "<" in text or '"' in text or "(" in text or "," in text:
        parsed = [a for _, a in getaddresses([text]) if a]
        if len(parsed) != 1:
            raise UserInputError(f"'{addr}' is not one email address")
        text = parsed[0]
    text = text.strip()
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain:
        raise UserInputError(f"'{addr}' is not an email address (user@domain)")
    if not (_LOCAL_ATOM.match(local) or _QUOTED_LOCAL.match(local)) or ".." in local:
        raise UserInputError(f"'{addr}' is not an email address")
    if len(local) > 64 * 4:
        raise UserInputError(f"'{addr}' has a local part that is too long")
    return f"{local.lower()}@{_idna_domain(domain)}"


def _lenient_address(addr: str) -> str:
    try:
        return normalize_address(addr)
    except UserInputError:
        return " ".join(addr.replace("\x00", "").split()).lower()


def _hashed(prefix: str, value: str) -> str:
    return prefix + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def portal_id_for(correspondents: Iterable[str], list_id: str | None = None) -> str:
    """Return the portal ID of a discussion. Pure; never raises.

    With ``list_id`` (the List-Id header, with or without its phrase and brackets) the portal
    is the mailing list's, whoever wrote: ``list:<list-id>``. Otherwise it is the set of
    ``correspondents`` (the people other than the user): one address gives the address
    itself, several give them sorted and joined with ``,``, and a set too long for a
    database key gives ``group:`` and a hash of it. Order, case, display names and
    duplicates do not change the ID; an entry that is not a valid address is kept as its
    lower-cased text so that odd mail still finds one room. No correspondents at all (mail
    from the user to the user) gives :data:`SELF_PORTAL_ID`.
    """
    if list_id is not None:
        normalized = normalize_list_id(list_id)
        if normalized:
            pid = f"list:{normalized}"
            return pid if len(pid) <= MAX_ID_LENGTH else _hashed("list:", normalized)
    addresses = sorted({a for a in (_lenient_address(c) for c in correspondents if c) if a})
    if not addresses:
        return SELF_PORTAL_ID
    joined = ",".join(addresses)
    if len(joined) <= MAX_ID_LENGTH and not any("," in a or a.startswith(("list:", "group:")) for a in addresses):
        return joined
    return _hashed("group:", "\n".join(addresses))


def normalize_list_id(list_id: str) -> str | None:
    """Return the list identifier of a List-Id header (``"Dev <dev.lists.example.org>"`` gives
    ``dev.lists.example.org``), lower-cased, or ``None`` when it is empty. Pure."""
    text = " ".join(list_id.replace("\x00", "").split())
    match = re.search(r"<([^<>]+)>", text)
    value = (match.group(1) if match else text).strip().lower()
    return value or None


_MSGID_IN_BRACKETS = re.compile(r"<([^<>]*)>")


def normalize_message_id(message_id: str | None) -> str | None:
    """Return a Message-ID as the bridge keys it: without the angle brackets and whitespace,
    hashed (``mid:`` + hex) when longer than :data:`MAX_ID_LENGTH`. ``None`` for an empty or
    absent one. Pure; the same normalisation is used for In-Reply-To and References."""
    if not message_id:
        return None
    text = message_id.replace("\x00", "")
    match = _MSGID_IN_BRACKETS.search(text)
    if match:
        text = match.group(1)
    text = "".join(text.split())
    text = text.strip("<>")
    if not text:
        return None
    if len(text) > MAX_ID_LENGTH:
        return _hashed("mid:", text)
    return text


def parse_message_ids(value: str | None) -> list[str]:
    """Return the normalised message IDs of an In-Reply-To or References header, in order,
    without duplicates. Accepts ``<a@b> <c@d>``, IDs without brackets and stray text
    (comments, phrases) between them. Pure."""
    if not value:
        return []
    text = value.replace("\x00", "")
    found = _MSGID_IN_BRACKETS.findall(text)
    if not found:
        found = [t for t in text.replace(",", " ").split() if "@" in t]
    out: list[str] = []
    for item in found:
        mid = normalize_message_id(item)
        if mid and mid not in out:
            out.append(mid)
    return out


def message_remote_id(
    message_id: str | None, folder: str, uidvalidity: int, uid: int, *, raw: bytes | None = None
) -> str:
    """Return the remote ID of a message. Pure; never raises.

    It is the Message-ID without angle brackets (see :func:`normalize_message_id`) when the
    message has one. Otherwise it is synthetic: ``sha256:`` and a hash of ``raw`` when the raw
    bytes are given (stable across folders and UIDVALIDITY changes; preferred), else
    ``imap:<folder>:<uidvalidity>:<uid>``.
    """
    mid = normalize_message_id(message_id)
    if mid:
        return mid
    if raw is not None:
        return "sha256:" + hashlib.sha256(raw).hexdigest()[:48]
    synthetic = f"imap:{folder}:{int(uidvalidity)}:{int(uid)}"
    if len(synthetic) > MAX_ID_LENGTH:
        return _hashed("imap:", synthetic)
    return synthetic
