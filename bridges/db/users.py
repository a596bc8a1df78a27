"""``bridge_user``: Matrix users who have talked to the bridge."""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import Table, dumps, loads, now_ms


@dataclass
class UserRow:
    mxid: str
    management_room: str | None = None
    disabled_networks: list[str] = field(default_factory=list)


class Users(Table):
    async def get(self, mxid: str) -> UserRow | None:
        row = await self.db.fetchrow(
            "SELECT mxid, management_room, disabled_networks FROM bridge_user WHERE mxid=$1", mxid
        )
        if row is None:
            return None
        return UserRow(row["mxid"], row["management_room"], loads(row["disabled_networks"], []))

    async def get_or_create(self, mxid: str) -> UserRow:
        user = await self.get(mxid)
        if user is None:
            await self.db.execute(
                "INSERT INTO bridge_user (mxid, disabled_networks, created_at) VALUES ($1, '[]', $2) "
                "ON CONFLICT (mxid) DO NOTHING",
                mxid,
                now_ms(),
            )
            user = UserRow(mxid)
        return user

    async def by_management_room(self, room_id: str) -> UserRow | None:
        mxid = await self.db.fetchval("SELECT mxid FROM bridge_user WHERE management_room=$1", room_id)
        return await self.get(mxid) if mxid else None

    async def save(self, user: UserRow) -> None:
        await self.db.execute(
            "UPDATE bridge_user SET management_room=$2, disabled_networks=$3 WHERE mxid=$1",
            user.mxid,
            user.management_room,
            dumps(sorted(set(user.disabled_networks))),
        )
