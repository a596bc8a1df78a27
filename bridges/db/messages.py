"""``message``: the mapping between remote messages (and their parts) and Matrix events."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mautrix.util.async_db import Connection

from .base import Table, dumps, loads


@dataclass
class MessageRow:
    login_id: str
    remote_id: str
    part_id: str
    portal_id: str
    mxid: str
    room_mxid: str
    sender_id: str
    timestamp: int
    thread_root_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    privacy: dict[str, Any] | None = None
    delivery: str | None = None
    part_index: int = 0  # the order parts were sent in; 0 is what threads and replies point at


_COLS = (
    "login_id, remote_id, part_id, portal_id, mxid, room_mxid, sender_id, timestamp, "
    "thread_root_id, metadata, privacy, delivery, part_index"
)


def _row(r: Any) -> MessageRow:
    return MessageRow(
        r["login_id"], r["remote_id"], r["part_id"], r["portal_id"], r["mxid"], r["room_mxid"],
        r["sender_id"], r["timestamp"], r["thread_root_id"], loads(r["metadata"]),
        loads(r["privacy"]) if r["privacy"] else None, r["delivery"], r["part_index"],
    )


class Messages(Table):
    async def insert(self, m: MessageRow, conn: Connection | None = None) -> None:
        await (conn or self.db).execute(
            f"INSERT INTO message ({_COLS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13) "
            "ON CONFLICT (login_id, remote_id, part_id) DO NOTHING",
            m.login_id, m.remote_id, m.part_id, m.portal_id, m.mxid, m.room_mxid, m.sender_id,
            m.timestamp, m.thread_root_id, dumps(m.metadata),
            dumps(m.privacy) if m.privacy is not None else None, m.delivery, m.part_index,
        )

    async def parts(self, login_id: str, remote_id: str) -> list[MessageRow]:
        rows = await self.db.fetch(
            f"SELECT {_COLS} FROM message WHERE login_id=$1 AND remote_id=$2 ORDER BY part_index", login_id, remote_id
        )
        return [_row(r) for r in rows]

    async def first_part(self, login_id: str, remote_id: str) -> MessageRow | None:
        r = await self.db.fetchrow(
            f"SELECT {_COLS} FROM message WHERE login_id=$1 AND remote_id=$2 ORDER BY part_index LIMIT 1",
            login_id, remote_id,
        )
        return _row(r) if r else None

    async def by_mxid(self, mxid: str) -> MessageRow | None:
        r = await self.db.fetchrow(f"SELECT {_COLS} FROM message WHERE mxid=$1", mxid)
        return _row(r) if r else None

    async def exists(self, login_id: str, remote_id: str) -> bool:
        return bool(
            await self.db.fetchval(
                "SELECT 1 FROM message WHERE login_id=$1 AND remote_id=$2 LIMIT 1", login_id, remote_id
            )
        )

    async def exists_or_queued(self, login_id: str, remote_id: str) -> bool:
        """True when the message is bridged or waiting in the remote inbox (one query)."""
        return bool(
            await self.db.fetchval(
                "SELECT 1 FROM message WHERE login_id=$1 AND remote_id=$2 "
                "UNION ALL SELECT 1 FROM remote_inbox WHERE login_id=$1 AND remote_id=$2 LIMIT 1",
                login_id, remote_id,
            )
        )

    async def up_to(self, room_mxid: str, timestamp: int, limit: int = 200) -> list[MessageRow]:
        """The room's bridged messages at or before ``timestamp``, newest first."""
        rows = await self.db.fetch(
            f"SELECT {_COLS} FROM message WHERE room_mxid=$1 AND timestamp<=$2 ORDER BY timestamp DESC LIMIT $3",
            room_mxid, timestamp, limit,
        )
        return [_row(r) for r in rows]

    async def set_delivery(self, login_id: str, remote_id: str, state: str) -> None:
        await self.db.execute(
            "UPDATE message SET delivery=$3 WHERE login_id=$1 AND remote_id=$2", login_id, remote_id, state
        )

    async def count_for_login(self, login_id: str) -> int:
        return int(await self.db.fetchval("SELECT COUNT(*) FROM message WHERE login_id=$1", login_id) or 0)
