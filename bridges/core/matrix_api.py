"""The seam between the core and the Matrix side (``bridges/matrix``).

The core drives Matrix only through :class:`MatrixAPI`; the Matrix side hands the core
decrypted events as :class:`IncomingEvent`. Encryption, the appservice and the homeserver's
HTTP API stay behind this seam.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .events import Media


@dataclass(frozen=True)
class IncomingEvent:
    """A Matrix event for the core, already decrypted.

    ``encrypted`` tells whether it arrived encrypted. ``type`` is the event type after
    decryption (``m.room.message``, ``m.reaction``, ``m.room.redaction``, ``m.receipt``...).
    """

    room_id: str
    event_id: str
    sender: str
    type: str
    content: dict[str, Any]
    timestamp: int
    state_key: str | None = None
    encrypted: bool = False
    redacts: str | None = None
    unsigned: dict[str, Any] = field(default_factory=dict)


class MatrixAPI(Protocol):
    bot_mxid: str

    async def ensure_ghost(self, mxid: str, displayname: str | None, avatar_url: str | None = None) -> None:
        """Register the ghost and set its profile when it changed."""

    async def create_room(
        self,
        *,
        name: str | None,
        topic: str | None,
        invite: list[str],
        ghosts: list[str],
        is_direct: bool,
        encrypted: bool,
        space: str | None = None,
    ) -> str:
        """Create a portal room (encrypted from its first event), join the ghosts, invite users."""

    async def create_space(self, *, name: str, topic: str | None, invite: list[str]) -> str: ...

    async def add_to_space(self, space_id: str, room_id: str) -> None: ...

    async def ensure_in_room(self, room_id: str, mxid: str) -> None:
        """Join a ghost (or the bot) to a room; invite a real user."""

    async def send(
        self,
        room_id: str,
        sender: str,
        content: dict[str, Any],
        *,
        event_type: str = "m.room.message",
        txn_id: str | None = None,
        timestamp: int | None = None,
    ) -> str:
        """Send as ``sender`` (a ghost, the bot, or a user :meth:`puppet` accepted), encrypted
        when the room is. Returns the event ID. A repeated ``txn_id`` returns the first event's
        ID instead of sending again."""

    async def upload(self, room_id: str, media: Media, *, encrypted: bool) -> dict[str, Any]:
        """Upload media; returns ``{"url": mxc}`` or ``{"file": {...}}`` (encrypted)."""

    async def download(self, content: dict[str, Any]) -> bytes:
        """Fetch and, for ``file``, decrypt the media of an event content."""

    async def redact(self, room_id: str, event_id: str, sender: str, reason: str | None = None) -> None: ...

    async def send_notice(self, room_id: str, text: str, html: str | None = None) -> str:
        """A notice from the bot (command answers, errors)."""

    async def send_status(self, room_id: str, event_id: str, *, ok: bool, error: str | None = None,
                          retriable: bool = False) -> None:
        """Tell clients whether a Matrix message reached the network (message status event)."""

    async def mark_read(self, room_id: str, sender: str, event_id: str) -> None:
        """A read receipt from a ghost (the correspondent read it / it was delivered), or from a
        user :meth:`puppet` accepted (the user read it with another client)."""

    async def puppet(self, room_id: str, user_mxid: str) -> bool:
        """Whether the bridge can act as the real user ``user_mxid`` in the room (double
        puppeting): True when it is configured, the homeserver accepts it for this user, and the
        user is joined (an invited user is joined first). False otherwise, and the caller uses a
        ghost; a refusal is logged once. Raises when the homeserver is unreachable."""

    async def set_typing(self, room_id: str, sender: str, typing: bool) -> None: ...

    def is_transient(self, error: BaseException) -> bool:
        """True when ``error`` means the homeserver is unreachable or overloaded (try again
        later, keep the event), not that it refused the request."""
