"""Errors of the email bridge, drawn as a tree (the core's types, and what email adds)::

    CaliopenError (core)
    ├── UserInputError
    │   └── LoginError
    │       ├── AuthenticationFailed   (imap) the server refused the username or password
    │       └── ServerUnreachable      (imap) DNS, refused, timeout, TLS: retry later
    ├── ConversionError
    │   └── MessageGone                the mail is no longer on the server
    ├── SendError                      (smtp) refused recipient, auth, size; ``retryable``
    └── ImapError                      (imap) a command failed after login
        └── ImapConnectionLost         (imap) the connection dropped: reconnect

Every message is written for the person who reads it in their room or in ``logins``.
Capabilities: none (errors only).
"""

from __future__ import annotations

from ..core.errors import CaliopenError, ConversionError, LoginError, SendError, UserInputError
from .imap import AuthenticationFailed, ImapConnectionLost, ImapError, ServerUnreachable


class MessageGone(ConversionError):
    """A mail that was queued is no longer in its folder (moved or deleted meanwhile)."""


__all__ = [
    "AuthenticationFailed",
    "CaliopenError",
    "ConversionError",
    "ImapConnectionLost",
    "ImapError",
    "LoginError",
    "MessageGone",
    "SendError",
    "ServerUnreachable",
    "UserInputError",
]
