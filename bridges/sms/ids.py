"""Every SMS ID, made and read here.

Capabilities: none (IDs only).

- A person (ghost): their number in E.164 (``+33612345678``). Senders that are not phone
  numbers (short codes, alphanumeric sender IDs such as ``AMAZON``) keep their digits or their
  lower-cased letters and digits: they cannot be answered, but they are bridged.
- A portal: the correspondents' IDs, sorted and joined with ``,`` (one for a one-to-one
  conversation). The core keys portals by login, so the user's own number is not part of it.
- A message: the backend's message ID as the backend gave it.
- A delivery event: ``<message id>:<state>``, so a repeated status callback is queued once.
- A login: ``<backend>:<own number>``.

All functions here are pure (no I/O). Invalid user input raises
:class:`bridges.core.errors.UserInputError`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat

from bridges.core.errors import UserInputError

_ALNUM = re.compile(r"[^a-z0-9]")


def valid_region(country: str) -> str:
    """An ISO 3166 two-letter region phonenumbers knows, upper-cased. Raises UserInputError."""
    region = country.strip().upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise UserInputError(f"{country!r} is not a two-letter country code (FR, US, DE, ...).")
    return region


def normalise(number: str, region: str | None) -> str:
    """A number the user typed, in E.164. ``region`` is the default country for national numbers.

    Raises UserInputError when it is not a possible phone number.
    """
    text = number.strip()
    try:
        parsed = phonenumbers.parse(text, region.upper() if region else None)
    except NumberParseException:
        raise UserInputError(f"{text!r} is not a phone number"
                             + ("" if region else " (write it with its country code, like +33...)") + ".") from None
    if not phonenumbers.is_possible_number(parsed):
        raise UserInputError(f"{text!r} is not a possible phone number.")
    return phonenumbers.format_number(parsed, PhoneNumberFormat.E164)


def sender_id(raw: str, region: str | None) -> str:
    """The ID of whoever a network message came from or went to; never raises.

    E.164 when it is a possible phone number, else its digits (short codes), else its
    lower-cased letters and digits (alphanumeric sender IDs).
    """
    text = raw.strip()
    if text.startswith("+") or (text.isdigit() and len(text) > 6):
        try:
            parsed = phonenumbers.parse(text, region.upper() if region else None)
            if phonenumbers.is_possible_number(parsed):
                return phonenumbers.format_number(parsed, PhoneNumberFormat.E164)
        except NumberParseException:
            pass
    if text.lstrip("+").isdigit():
        return text.lstrip("+")
    cleaned = _ALNUM.sub("", text.lower())
    return cleaned or "unknown"


def is_phone_number(remote_id: str) -> bool:
    """True when the ID is an E.164 number (one that can be answered)."""
    return bool(re.fullmatch(r"\+[1-9]\d{4,15}", remote_id))


def display_name(remote_id: str, raw: str | None = None) -> str:
    """How a number is shown until a contact name is known: ``+33 6 12 34 56 78``."""
    if is_phone_number(remote_id):
        try:
            return phonenumbers.format_number(phonenumbers.parse(remote_id, None), PhoneNumberFormat.INTERNATIONAL)
        except NumberParseException:
            return remote_id
    return raw.strip() if raw and raw.strip() else remote_id


def portal_id(correspondents: Iterable[str]) -> str:
    """The portal of a conversation with these people (IDs from :func:`sender_id`)."""
    ids = sorted(set(correspondents))
    if not ids:
        raise ValueError("a conversation needs someone to talk to")
    return ",".join(ids)


def portal_members(portal: str) -> list[str]:
    """The correspondents of a portal ID."""
    return [p for p in portal.split(",") if p]


def delivery_event_id(message_id: str, state: str) -> str:
    return f"{message_id}:{state}"


def login_remote_id(backend: str, own_number: str) -> str:
    return f"{backend}:{own_number}"
