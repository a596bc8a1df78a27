"""The seam between the network-agnostic core and one network.

A network package (``bridges/<net>/``) provides a :class:`NetworkConnector` in its
``connector.py`` as ``Connector``. The core drives it; the connector never imports
``bridges.matrix`` and never sees ciphertext.

Required, per network:

- :class:`NetworkConnector`: one per network, made at start-up with no I/O (``__init__``),
  then ``start()``. It lists login flows, starts a :class:`LoginProcess`, and loads a
  :class:`NetworkClient` for each saved login (no I/O in ``load_login``).
- :class:`NetworkClient`: one per login. ``connect()`` starts receiving (IMAP IDLE, webhooks,
  polling); what arrives goes to ``BridgeAPI.queue_remote_event``. ``convert_remote`` turns a
  queued event into Matrix content (may do I/O, runs on the portal's queue after the room
  exists). ``handle_matrix_message`` sends to the network.
- :class:`LoginProcess`: a login flow as steps (fields to fill, a URL or code to show and wait
  on, then complete). The connector checks the credentials; the core persists them (encrypted).

Optional capabilities (each a small Protocol the core checks with ``isinstance``; a connector
that lacks one gets "not supported" answers):
:class:`SupportsStartChat`, :class:`SupportsReadReceipts`, :class:`SupportsEdits`,
:class:`SupportsReactions`, :class:`SupportsRedactions`, :class:`SupportsTyping`,
:class:`SupportsBackfill`, :class:`SupportsContacts`, :class:`SupportsAvatars`.

Who persists: the core. Connectors return values (``LoginResult``, ``SentMessage``,
``ConvertedMessage``) and keep their own cursors with ``BridgeAPI.save_login_metadata``.
Errors: connectors raise :mod:`bridges.core.errors` types; their message is shown to the user.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from .events import (
    ChatInfo,
    ConvertedMessage,
    DeliveryState,
    MatrixMessage,
    Media,
    MessageRef,
    PortalRef,
    RemoteEvent,
    Sender,
    SentMessage,
)

if TYPE_CHECKING:
    from aiohttp import web


# --- What the core offers a connector ------------------------------------------------------


class BridgeAPI(Protocol):
    """The core, as a connector sees it. Given to ``NetworkConnector.__init__``."""

    async def queue_remote_event(self, event: RemoteEvent) -> bool:
        """Store the event durably and queue it on its portal.

        Returns once the event is safely stored (so a webhook may be acknowledged, an IMAP
        cursor advanced). Returns False when the same (login, kind, remote_id) was already
        queued or bridged: nothing is bridged twice. Raises if the login is unknown.
        """

    async def save_login_metadata(self, login_id: str, metadata: dict[str, Any]) -> None:
        """Persist the connector's per-login state (cursors, identity; not secrets)."""

    async def set_login_state(self, login_id: str, state: LoginState, error: str | None = None) -> None:
        """Report the login's connection state; shown by ``logins`` and in bridge state."""

    async def is_bridged(self, login_id: str, remote_id: str) -> bool:
        """True when a message with this remote ID is bridged or queued for this login."""

    def register_webhook(self, network: str, handler: WebhookHandler) -> str:
        """Serve ``handler`` under the bridge's HTTP server at ``/_caliopen/<network>/...``.

        Returns the path prefix. Handlers get the raw aiohttp request and answer it.
        """

    @property
    def public_url(self) -> str:
        """The bridge's public base URL (for webhooks the network calls)."""


class WebhookHandler(Protocol):
    async def __call__(self, request: web.Request) -> web.StreamResponse: ...


class LoginState(str, enum.Enum):
    CONNECTING = "CONNECTING"
    CONNECTED = "CONNECTED"
    TRANSIENT_DISCONNECT = "TRANSIENT_DISCONNECT"
    BAD_CREDENTIALS = "BAD_CREDENTIALS"
    UNKNOWN_ERROR = "UNKNOWN_ERROR"
    LOGGED_OUT = "LOGGED_OUT"
    DISABLED = "DISABLED"  # the user or the admin switched the network off


# --- Login flows ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LoginFlow:
    id: str
    name: str
    description: str


class FieldType(str, enum.Enum):
    TEXT = "text"
    USERNAME = "username"
    PASSWORD = "password"
    EMAIL = "email"
    PHONE = "phone_number"
    URL = "url"
    DOMAIN = "domain"
    SELECT = "select"
    TOKEN = "token"


@dataclass(frozen=True)
class LoginField:
    id: str
    name: str
    type: FieldType = FieldType.TEXT
    description: str = ""
    default: str | None = None
    options: tuple[str, ...] = ()
    optional: bool = False

    @property
    def is_secret(self) -> bool:
        return self.type in (FieldType.PASSWORD, FieldType.TOKEN)


class StepType(str, enum.Enum):
    USER_INPUT = "user_input"
    DISPLAY_AND_WAIT = "display_and_wait"
    COMPLETE = "complete"


@dataclass(frozen=True)
class LoginResult:
    """A finished login. ``secrets`` are encrypted at rest by the core."""

    remote_id: str
    remote_name: str
    metadata: dict[str, Any] = field(default_factory=dict)
    secrets: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoginStep:
    type: StepType
    step_id: str
    instructions: str = ""
    fields: tuple[LoginField, ...] = ()
    display_type: str | None = None  # for DISPLAY_AND_WAIT: "url", "code", "nothing"
    display_data: str | None = None
    result: LoginResult | None = None  # for COMPLETE


class LoginProcess(Protocol):
    """One login attempt. Steps alternate between the user and the connector.

    ``start`` returns the first step. For a USER_INPUT step the core calls ``submit_input``
    with the field values; for DISPLAY_AND_WAIT it calls ``wait``. A COMPLETE step carries the
    :class:`LoginResult`. Bad input raises :class:`bridges.core.errors.LoginError` with a
    message for the user (wrong password, host unreachable); the process may then be retried.
    """

    async def start(self) -> LoginStep: ...

    async def submit_input(self, values: dict[str, str]) -> LoginStep: ...

    async def wait(self) -> LoginStep: ...

    async def cancel(self) -> None: ...


# --- The connector and its per-login client ----------------------------------------------


@dataclass(frozen=True)
class UserLoginInfo:
    """A saved login as handed to ``load_login``; secrets already decrypted."""

    id: str
    user_mxid: str
    remote_id: str
    remote_name: str
    metadata: dict[str, Any]
    secrets: dict[str, Any]


@dataclass(frozen=True)
class NetworkCapabilities:
    """Shown to users and the provisioning API; the core checks Supports* for behaviour."""

    max_text_length: int | None = None
    max_file_size: int | None = None
    formatted_text: bool = False
    threads: bool = False
    media: bool = True


class NetworkConnector(Protocol):
    """One network. ``__init__(bridge: BridgeAPI, config: dict)`` must do no I/O."""

    name: str  # short, used in config keys, commands and ghost prefixes: "email", "sms"
    display_name: str  # "Email", "SMS"

    async def start(self) -> None:
        """Start shared resources (HTTP sessions, webhooks). Called once, before logins load."""

    async def stop(self) -> None: ...

    def get_login_flows(self) -> list[LoginFlow]: ...

    def create_login(self, user_mxid: str, flow_id: str) -> LoginProcess:
        """Start a login flow; no I/O until ``LoginProcess.start``."""

    def load_login(self, login: UserLoginInfo) -> NetworkClient:
        """Make the client of a saved login; no I/O (``connect`` does that)."""

    def get_capabilities(self) -> NetworkCapabilities: ...


class NetworkClient(Protocol):
    """One login on one network."""

    async def connect(self) -> None:
        """Start receiving. Must return promptly (spawn background tasks); reports state with
        ``BridgeAPI.set_login_state``."""

    async def disconnect(self) -> None: ...

    async def logout(self) -> None:
        """Forget the remote session where the network has one (revoke tokens)."""

    def is_logged_in(self) -> bool: ...

    async def get_chat_info(self, portal: PortalRef) -> ChatInfo: ...

    async def convert_remote(self, portal: PortalRef, event: RemoteEvent) -> ConvertedMessage:
        """Turn a queued MESSAGE (or EDIT) event into Matrix content. May do I/O (download
        attachments). Raise :class:`bridges.core.errors.ConversionError` for content that cannot
        be converted: the core then bridges a notice saying so, and goes on."""

    async def handle_matrix_message(self, msg: MatrixMessage) -> SentMessage:
        """Send to the network. Raise :class:`bridges.core.errors.SendError` (with a message for
        the user, and ``retryable``) on failure."""


# --- Optional capabilities -------------------------------------------------------------


@runtime_checkable
class SupportsStartChat(Protocol):
    async def resolve_identifier(self, identifier: str) -> tuple[str, ChatInfo]:
        """Turn what the user typed (an address, a number) into (portal_id, chat info).
        Raises :class:`bridges.core.errors.UserInputError` when it is not valid."""


@runtime_checkable
class SupportsReadReceipts(Protocol):
    async def handle_matrix_read(self, portal: PortalRef, messages: list[MessageRef]) -> None:
        """The user read these bridged messages in Matrix."""


@runtime_checkable
class SupportsEdits(Protocol):
    async def handle_matrix_edit(self, msg: MatrixMessage, target: MessageRef) -> SentMessage: ...


@runtime_checkable
class SupportsReactions(Protocol):
    async def handle_matrix_reaction(self, portal: PortalRef, target: MessageRef, key: str) -> str: ...


@runtime_checkable
class SupportsRedactions(Protocol):
    async def handle_matrix_redaction(self, portal: PortalRef, target: MessageRef) -> None: ...


@runtime_checkable
class SupportsTyping(Protocol):
    async def handle_matrix_typing(self, portal: PortalRef, typing: bool) -> None: ...


@runtime_checkable
class SupportsBackfill(Protocol):
    async def backfill(self, portal: PortalRef, before_remote_id: str | None, limit: int) -> list[RemoteEvent]: ...


@runtime_checkable
class SupportsAvatars(Protocol):
    async def get_avatar(self, avatar_id: str) -> Media:
        """Fetch the picture a ``Sender.avatar_id`` names (I/O). Raise on failure; the core
        keeps the ghost without a new avatar."""


@runtime_checkable
class SupportsContacts(Protocol):
    async def get_contacts(self) -> list[Sender]: ...


__all__ = [
    "BridgeAPI",
    "ChatInfo",
    "ConvertedMessage",
    "DeliveryState",
    "FieldType",
    "LoginField",
    "LoginFlow",
    "LoginProcess",
    "LoginResult",
    "LoginState",
    "LoginStep",
    "MatrixMessage",
    "MessageRef",
    "NetworkCapabilities",
    "NetworkClient",
    "NetworkConnector",
    "PortalRef",
    "RemoteEvent",
    "Sender",
    "SentMessage",
    "StepType",
    "SupportsAvatars",
    "SupportsBackfill",
    "SupportsContacts",
    "SupportsEdits",
    "SupportsReactions",
    "SupportsReadReceipts",
    "SupportsRedactions",
    "SupportsStartChat",
    "SupportsTyping",
    "UserLoginInfo",
    "WebhookHandler",
]
