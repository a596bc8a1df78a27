"""Value objects that cross the seam between the core and a network connector.

Remote → Matrix: a connector builds a :class:`RemoteEvent` and hands it to
:meth:`bridges.core.network.BridgeAPI.queue_remote_event`. The core stores it durably, then
processes it on the portal's ordered queue, where it asks the connector to convert it
(:meth:`NetworkClient.convert_remote`) into a :class:`ConvertedMessage`.

Matrix → remote: the core decrypts, downloads media and hands the connector a
:class:`MatrixMessage`; the connector answers with a :class:`SentMessage` that the core stores.

Everything here is plain data: JSON-able dicts, strings, ints and bytes. Nothing refers to
mautrix types, so a connector never depends on the Matrix side.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field
from typing import Any


class RemoteEventKind(str, enum.Enum):
    """What a remote event does to its portal."""

    MESSAGE = "message"
    EDIT = "edit"
    REACTION = "reaction"
    REDACTION = "redaction"
    READ_RECEIPT = "read_receipt"
    DELIVERY = "delivery"  # a status update for a message the user sent (sent/delivered/failed)
    CHAT_INFO = "chat_info"  # name/topic/members changed


class DeliveryState(str, enum.Enum):
    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True)
class Sender:
    """Who wrote a remote event.

    ``remote_id`` is the network's stable ID for the person (made in the network's ``ids.py``).
    ``is_from_me`` marks what the user wrote on the network with another client.
    ``avatar_id`` is the network's stable ID of the person's current picture (a URL, a hash);
    the core fetches it through ``SupportsAvatars.get_avatar`` only when it changes.
    """

    remote_id: str
    name: str | None = None
    is_from_me: bool = False
    avatar_id: str | None = None


@dataclass(frozen=True)
class ChatInfo:
    """What the core needs to create or update a portal room."""

    name: str | None = None
    topic: str | None = None
    is_direct: bool = True
    members: tuple[Sender, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "topic": self.topic,
            "is_direct": self.is_direct,
            "members": [asdict(m) for m in self.members],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> ChatInfo | None:
        if data is None:
            return None
        return cls(
            name=data.get("name"),
            topic=data.get("topic"),
            is_direct=bool(data.get("is_direct", True)),
            members=tuple(Sender(**m) for m in data.get("members", ())),
        )


@dataclass(frozen=True)
class RemoteEvent:
    """One thing that happened on the network, addressed to one portal of one login.

    Args:
        login_id: the core's ID of the login that saw it.
        portal_id: the network's ID of the conversation (opaque to the core).
        kind: what it is.
        remote_id: the network's ID of the message (for MESSAGE), or of the event itself.
            With ``login_id`` it makes the deduplication key: an event queued twice is
            bridged once.
        sender: who wrote it.
        timestamp: milliseconds since the epoch.
        data: network-specific, JSON-able; given back to the connector's ``convert_remote``.
        target_id: for EDIT/REACTION/REDACTION/READ_RECEIPT/DELIVERY, the remote ID of the
            message it is about.
        chat_info: optional; saves the core a ``get_chat_info`` call when it creates the room.
    """

    login_id: str
    portal_id: str
    kind: RemoteEventKind
    remote_id: str
    sender: Sender
    timestamp: int
    data: dict[str, Any] = field(default_factory=dict)
    target_id: str | None = None
    chat_info: ChatInfo | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "login_id": self.login_id,
                "portal_id": self.portal_id,
                "kind": self.kind.value,
                "remote_id": self.remote_id,
                "sender": asdict(self.sender),
                "timestamp": self.timestamp,
                "data": self.data,
                "target_id": self.target_id,
                "chat_info": self.chat_info.to_json() if self.chat_info else None,
            }
        )

    @classmethod
    def from_json(cls, raw: str) -> RemoteEvent:
        d = json.loads(raw)
        return cls(
            login_id=d["login_id"],
            portal_id=d["portal_id"],
            kind=RemoteEventKind(d["kind"]),
            remote_id=d["remote_id"],
            sender=Sender(**d["sender"]),
            timestamp=int(d["timestamp"]),
            data=d.get("data") or {},
            target_id=d.get("target_id"),
            chat_info=ChatInfo.from_json(d.get("chat_info")),
        )


@dataclass(frozen=True)
class Media:
    """A file to put in Matrix. The core uploads it (encrypted in encrypted rooms)."""

    data: bytes
    mimetype: str
    filename: str
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class ConvertedPart:
    """One Matrix event made from a remote message.

    ``content`` is the event content without ``url``/``file`` and without relations: the core
    adds the media reference (when ``media`` is set), the thread and reply relations, and the
    privacy block.
    """

    part_id: str
    content: dict[str, Any]
    event_type: str = "m.room.message"
    media: Media | None = None


@dataclass(frozen=True)
class ConvertedMessage:
    """What a remote message becomes in Matrix.

    Args:
        parts: one Matrix event per part, in order (text first, then attachments, say).
        thread_root_id: remote ID of the message that starts the thread this one belongs to
            (the core finds its Matrix event). ``None`` outside threads, or when this message
            is itself the root.
        reply_to_id: remote ID of the message this one answers.
        privacy: what is known of the privacy of the remote leg; put in every part's content
            under ``org.caliopen.privacy`` and stored with the message.
        metadata: JSON-able, stored with the message and handed back to the connector when a
            Matrix event refers to this message (reply, edit, read receipt).
    """

    parts: list[ConvertedPart]
    thread_root_id: str | None = None
    reply_to_id: str | None = None
    privacy: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MessageRef:
    """A bridged message as the connector sees it when a Matrix event refers to it."""

    remote_id: str
    metadata: dict[str, Any]


@dataclass(frozen=True)
class PortalRef:
    """A portal as the connector sees it."""

    portal_id: str
    login_id: str
    name: str | None
    metadata: dict[str, Any]


@dataclass(frozen=True)
class MatrixMessage:
    """A message a Matrix user sent into a portal, decrypted, media downloaded.

    ``msgtype`` is the Matrix msgtype (``m.text``, ``m.notice``, ``m.emote``, ``m.image``,
    ``m.file``, ``m.audio``, ``m.video``). ``thread_root`` and ``reply_to`` are set when the
    event is in a thread or answers a bridged message.
    """

    event_id: str
    portal: PortalRef
    sender_mxid: str
    msgtype: str
    body: str
    formatted_body: str | None = None
    media: Media | None = None
    thread_root: MessageRef | None = None
    reply_to: MessageRef | None = None
    timestamp: int = 0


@dataclass(frozen=True)
class SentMessage:
    """What the connector answers after sending a Matrix message to the network."""

    remote_id: str
    timestamp: int
    metadata: dict[str, Any] = field(default_factory=dict)
    state: DeliveryState = DeliveryState.SENT
