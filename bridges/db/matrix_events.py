"""``matrix_event`` and ``as_txn``: Matrix events and appservice transactions already handled."""

from __future__ import annotations

from .base import Table, now_ms


class MatrixEvents(Table):
    async def claim(self, event_id: str, room_id: str) -> bool:
        """Mark an event as being handled; False when it was handled (or claimed) before."""
        if await self.db.fetchval("SELECT 1 FROM matrix_event WHERE event_id=$1", event_id):
            return False
        await self.db.execute(
            "INSERT INTO matrix_event (event_id, room_mxid, state, updated_at) VALUES ($1,$2,'pending',$3) "
            "ON CONFLICT (event_id) DO NOTHING",
            event_id, room_id, now_ms(),
        )
        return True

    async def state(self, event_id: str) -> str | None:
        return await self.db.fetchval("SELECT state FROM matrix_event WHERE event_id=$1", event_id)

    async def set_state(self, event_id: str, state: str, error: str | None = None) -> None:
        await self.db.execute(
            "UPDATE matrix_event SET state=$2, error=$3, updated_at=$4 WHERE event_id=$1",
            event_id, state, error, now_ms(),
        )

    async def release(self, event_id: str) -> None:
        """Forget a claim whose handling did not finish (so a replay handles it again)."""
        await self.db.execute("DELETE FROM matrix_event WHERE event_id=$1 AND state='pending'", event_id)


class Transactions(Table):
    async def seen(self, txn_id: str) -> bool:
        return bool(await self.db.fetchval("SELECT 1 FROM as_txn WHERE txn_id=$1", txn_id))

    async def mark(self, txn_id: str) -> None:
        await self.db.execute(
            "INSERT INTO as_txn (txn_id, received_at) VALUES ($1,$2) ON CONFLICT (txn_id) DO NOTHING",
            txn_id, now_ms(),
        )
