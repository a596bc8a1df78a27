"""``remote_inbox``: remote events stored before they are bridged (the durable queue).

A row is inserted when a connector queues an event and deleted in the same transaction that
stores the message mapping, so an event is either waiting here or bridged, never lost.
"""

from __future__ import annotations

from dataclasses import dataclass

from mautrix.util.async_db import Connection

from .base import Table, now_ms


@dataclass
class InboxRow:
    id: int
    login_id: str
    portal_id: str
    kind: str
    remote_id: str
    payload: str
    attempts: int
    waits: int = 0  # in memory only: retries while the homeserver was unavailable


class Inbox(Table):
    async def add(self, login_id: str, portal_id: str, kind: str, remote_id: str, payload: str) -> int | None:
        """Store an event; None when (login, kind, remote_id) is already waiting."""
        row_id = await self.db.fetchval(
            "INSERT INTO remote_inbox (login_id, portal_id, kind, remote_id, payload, attempts, created_at) "
            "VALUES ($1,$2,$3,$4,$5,0,$6) ON CONFLICT (login_id, kind, remote_id) DO NOTHING RETURNING id",
            login_id, portal_id, kind, remote_id, payload, now_ms(),
        )
        return None if row_id is None else int(row_id)

    async def pending(self) -> list[InboxRow]:
        rows = await self.db.fetch(
            "SELECT id, login_id, portal_id, kind, remote_id, payload, attempts FROM remote_inbox ORDER BY id"
        )
        return [InboxRow(**dict(r)) for r in rows]

    async def delete(self, row_id: int, conn: Connection | None = None) -> None:
        await (conn or self.db).execute("DELETE FROM remote_inbox WHERE id=$1", row_id)

    async def bump_attempts(self, row_id: int) -> None:
        await self.db.execute("UPDATE remote_inbox SET attempts=attempts+1 WHERE id=$1", row_id)
