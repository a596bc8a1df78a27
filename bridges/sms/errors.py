"""What can go wrong on the SMS network, and what the person is told.

Capabilities: none (errors only).

::

    bridges.core.errors.SendError
    └── NotAnswerable            the conversation is with a short code or a sender name
    bridges.core.errors.LoginError
                                 settings or credentials refused (from ``SmsBackend.check``)
    bridges.sms.backends.http.Unreachable
                                 the gateway did not answer; the client reports
                                 TRANSIENT_DISCONNECT and tries again
    bridges.sms.backends.base.WebhookForbidden / WebhookMalformed
                                 a webhook answered 403 / 400 by ``handle_remote``
"""

from __future__ import annotations

from bridges.core.errors import SendError

from .backends.base import WebhookForbidden, WebhookMalformed
from .backends.http import Unreachable


class NotAnswerable(SendError):
    def __init__(self, who: str) -> None:
        super().__init__(f"{who} is a short code or a sender name: it cannot receive SMS.")


def media_not_supported(backend_label: str) -> SendError:
    return SendError(f"{backend_label} sends text only: pictures and files cannot be sent through it.")


__all__ = ["NotAnswerable", "Unreachable", "WebhookForbidden", "WebhookMalformed", "media_not_supported"]
