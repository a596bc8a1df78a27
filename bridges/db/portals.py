"""``portal``: a bridged conversation of one login, and its Matrix room."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .base import Table, dumps, loads, now_ms


@dataclass
class PortalRow:
    login_id: str
    portal_id: str
    network: str
    mxid: str | None = None
    name: str | None = None
    topic: str | None = None
    is_direct: bool = True
    encrypted: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)


_COLS = "login_id, portal_id, network, mxid, name, topic, is_direct, encrypted, metadata"


def _row(r: Any) -> PortalRow:
    return PortalRow(
        r["login_id"], r["portal_id"], r["network"], r["mxid"], r["name"], r["topic"],
        bool(r["is_direct"]), bool(r["encrypted"]), loads(r["metadata"]),
    )


class Portals(Table):
    async def get(self, login_id: str, portal_id: str) -> PortalRow | None:
        r = await self.db.fetchrow(
            f"SELECT {_COLS} FROM portal WHERE login_id=$1 AND portal_id=$2", login_id, portal_id
        )
        return _row(r) if r else None

    async def by_mxid(self, room_id: str) -> PortalRow | None:
        r = await self.db.fetchrow(f"SELECT {_COLS} FROM portal WHERE mxid=$1", room_id)
        return _row(r) if r else None

    async def by_login(self, login_id: str) -> list[PortalRow]:
        return [_row(r) for r in await self.db.fetch(f"SELECT {_COLS} FROM portal WHERE login_id=$1", login_id)]

    async def upsert(self, p: PortalRow) -> None:
        await self.db.execute(
            f"INSERT INTO portal ({_COLS}, created_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) "
            "ON CONFLICT (login_id, portal_id) DO UPDATE SET mxid=excluded.mxid, name=excluded.name, "
            "topic=excluded.topic, is_direct=excluded.is_direct, encrypted=excluded.encrypted, "
            "metadata=excluded.metadata",
            p.login_id, p.portal_id, p.network, p.mxid, p.name, p.topic, p.is_direct, p.encrypted,
            dumps(p.metadata), now_ms(),
        )
