"""IDs the core makes: ghost user IDs, login IDs, transaction IDs.

Remote IDs are opaque strings made by each network's ``ids.py``; the core only escapes them
into Matrix localparts (lower-case letters, digits and ``._=-/``; anything else as ``=xx``).
"""

from __future__ import annotations

import hashlib
import secrets

_ALLOWED = set("abcdefghijklmnopqrstuvwxyz0123456789._-/")


def escape_localpart(value: str) -> str:
    """Escape a remote ID into a Matrix localpart, reversibly (``unescape_localpart``)."""
    out = []
    for byte in value.encode("utf-8"):
        ch = chr(byte)
        if ch in _ALLOWED:
            out.append(ch)
        else:
            out.append(f"={byte:02x}")
    return "".join(out)


def unescape_localpart(value: str) -> str:
    raw = bytearray()
    i = 0
    while i < len(value):
        if value[i] == "=" and i + 2 < len(value) + 1:
            raw.append(int(value[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.append(ord(value[i]))
            i += 1
    return raw.decode("utf-8")


def ghost_mxid(prefix: str, remote_id: str, domain: str) -> str:
    return f"@{prefix}{escape_localpart(remote_id)}:{domain}"


def new_login_id(network: str) -> str:
    return f"{network}-{secrets.token_hex(3)}"


def remote_txn_id(login_id: str, remote_id: str, part_id: str) -> str:
    """A stable transaction ID per message part, so a resend after a crash is deduplicated
    by the homeserver instead of appearing twice."""
    digest = hashlib.sha256(f"{login_id}\0{remote_id}\0{part_id}".encode()).hexdigest()[:32]
    return f"cal{digest}"
