"""``ghost``: a remote person's Matrix user (one per network and remote ID)."""

from __future__ import annotations

from dataclasses import dataclass

from .base import Table


@dataclass
class GhostRow:
    network: str
    remote_id: str
    mxid: str
    name: str | None = None
    avatar_url: str | None = None


class Ghosts(Table):
    async def get(self, network: str, remote_id: str) -> GhostRow | None:
        r = await self.db.fetchrow(
            "SELECT network, remote_id, mxid, name, avatar_url FROM ghost WHERE network=$1 AND remote_id=$2",
            network, remote_id,
        )
        return GhostRow(r["network"], r["remote_id"], r["mxid"], r["name"], r["avatar_url"]) if r else None

    async def by_mxid(self, mxid: str) -> GhostRow | None:
        r = await self.db.fetchrow(
            "SELECT network, remote_id, mxid, name, avatar_url FROM ghost WHERE mxid=$1", mxid
        )
        return GhostRow(r["network"], r["remote_id"], r["mxid"], r["name"], r["avatar_url"]) if r else None

    async def upsert(self, g: GhostRow) -> None:
        await self.db.execute(
            "INSERT INTO ghost (network, remote_id, mxid, name, avatar_url) VALUES ($1,$2,$3,$4,$5) "
            "ON CONFLICT (network, remote_id) DO UPDATE SET name=excluded.name, avatar_url=excluded.avatar_url",
            g.network, g.remote_id, g.mxid, g.name, g.avatar_url,
        )
