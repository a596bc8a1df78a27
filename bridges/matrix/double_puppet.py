"""Double puppeting: the bridge acting as the user's own Matrix account.

The homeserver admin registers a second appservice whose users namespace covers the local
users without claiming them (``exclusive: false``, ``url: null``) and gives its ``as_token``
to the bridge (``homeserver.double_puppet_as_token``). Requests made with that token and
``?user_id=`` act as the user: what the user wrote or read on the network with another client
then shows in Matrix as theirs, not as a ghost's.

Every user is checked once (``whoami`` as the user) before the first use. A refusal (the token
is unknown to the homeserver, or the user is outside that appservice's namespace) is logged once
and remembered: the caller then falls back to a ghost.
"""

from __future__ import annotations

import logging

from mautrix.appservice import AppService, IntentAPI
from mautrix.client import ClientAPI
from mautrix.errors import MatrixRequestError, MForbidden, MUnknownToken
from mautrix.types import UserID

log = logging.getLogger("caliopen.matrix.puppet")

#: Content key (outside the ciphertext) marking an event the bridge sent as a user, so that its
#: echo is not bridged back. The name mautrix bridges use.
SOURCE_KEY = "fi.mau.double_puppet_source"


def is_refusal(error: BaseException) -> bool:
    """True when ``error`` says the homeserver does not let the token act as this user (no I/O)."""
    if isinstance(error, (MUnknownToken, MForbidden)):
        return True
    return isinstance(error, MatrixRequestError) and error.http_status in (401, 403)


def is_token_refusal(error: BaseException | None) -> bool:
    """True when ``error`` says the homeserver does not know the token at all (no I/O)."""
    return isinstance(error, MUnknownToken) or (isinstance(error, MatrixRequestError) and error.http_status == 401)


class DoublePuppets:
    """Intents acting as real users through the double-puppeting appservice's token."""

    def __init__(self, az: AppService, as_token: str, source: str) -> None:
        self.az = az
        self.as_token = as_token
        #: The value of :data:`SOURCE_KEY` in what this bridge sends as a user.
        self.source = source
        self._intents: dict[str, IntentAPI] = {}
        self._refused: set[str] = set()
        self._token_refused = False

    @property
    def enabled(self) -> bool:
        """Double puppeting is configured and the homeserver has not refused the token."""
        return bool(self.as_token) and not self._token_refused

    def active(self, mxid: str) -> IntentAPI | None:
        """The user's intent when it was checked and accepted (no I/O), else None."""
        return self._intents.get(mxid) if self.enabled else None

    async def intent(self, mxid: str) -> IntentAPI | None:
        """The intent acting as ``mxid``, or None when double puppeting is off or refused for them.

        The first call for a user asks the homeserver who the token is as that user (one
        request). Raises what that request raised when it failed for another reason than a
        refusal (the homeserver is unreachable): try again later.
        """
        if not self.enabled or mxid in self._refused:
            return None
        intent = self._intents.get(mxid)
        if intent is not None:
            return intent
        intent = self.az.intent.user(UserID(mxid), token=self.as_token, as_token=True)
        try:
            who = await ClientAPI.whoami(intent)
        except MatrixRequestError as e:
            if not is_refusal(e):
                raise
            self.refuse(mxid, e)
            return None
        if who.user_id != mxid:
            self.refuse(mxid, None)
            return None
        self._intents[mxid] = intent
        return intent

    def refuse(self, mxid: str, error: BaseException | None) -> None:
        """Stop acting as ``mxid`` (every user, when the token itself was refused) and say so once."""
        self._intents.pop(mxid, None)
        if is_token_refusal(error):
            if not self._token_refused:
                log.warning("The homeserver refused double_puppet_as_token (%s); messages and read "
                            "receipts from the user's other clients go through ghosts", type(error).__name__)
            self._token_refused = True
            self._intents.clear()
            return
        if mxid not in self._refused:
            log.warning("The homeserver does not let the bridge act as %s (%s); that user's own messages "
                        "go through a ghost", mxid, type(error).__name__ if error else "another user")
        self._refused.add(mxid)
