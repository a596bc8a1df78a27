"""``user_login``: one row per login of a Matrix user on a network. Secrets are sealed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .base import Table, dumps, loads, now_ms


@dataclass
class LoginRow:
    id: str
    network: str
    user_mxid: str
    remote_id: str
    remote_name: str
    state: str
    state_error: str | None = None
    space_room: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    sealed_secrets: str = ""


_COLS = "id, network, user_mxid, remote_id, remote_name, state, state_error, space_room, metadata, secrets"


def _row(r: Any) -> LoginRow:
    return LoginRow(
        r["id"], r["network"], r["user_mxid"], r["remote_id"], r["remote_name"], r["state"],
        r["state_error"], r["space_room"], loads(r["metadata"]), r["secrets"] or "",
    )


class Logins(Table):
    async def get(self, login_id: str) -> LoginRow | None:
        r = await self.db.fetchrow(f"SELECT {_COLS} FROM user_login WHERE id=$1", login_id)
        return _row(r) if r else None

    async def all(self) -> list[LoginRow]:
        return [_row(r) for r in await self.db.fetch(f"SELECT {_COLS} FROM user_login ORDER BY created_at")]

    async def by_user(self, mxid: str) -> list[LoginRow]:
        rows = await self.db.fetch(
            f"SELECT {_COLS} FROM user_login WHERE user_mxid=$1 ORDER BY created_at", mxid
        )
        return [_row(r) for r in rows]

    async def find(self, network: str, user_mxid: str, remote_id: str) -> LoginRow | None:
        r = await self.db.fetchrow(
            f"SELECT {_COLS} FROM user_login WHERE network=$1 AND user_mxid=$2 AND remote_id=$3",
            network, user_mxid, remote_id,
        )
        return _row(r) if r else None

    async def insert(self, row: LoginRow) -> None:
        await self.db.execute(
            f"INSERT INTO user_login ({_COLS}, created_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11)",
            row.id, row.network, row.user_mxid, row.remote_id, row.remote_name, row.state,
            row.state_error, row.space_room, dumps(row.metadata), row.sealed_secrets, now_ms(),
        )

    async def update_credentials(self, row: LoginRow) -> None:
        await self.db.execute(
            "UPDATE user_login SET remote_name=$2, metadata=$3, secrets=$4 WHERE id=$1",
            row.id, row.remote_name, dumps(row.metadata), row.sealed_secrets,
        )

    async def set_metadata(self, login_id: str, metadata: dict[str, Any]) -> None:
        await self.db.execute("UPDATE user_login SET metadata=$2 WHERE id=$1", login_id, dumps(metadata))

    async def set_state(self, login_id: str, state: str, error: str | None) -> None:
        await self.db.execute(
            "UPDATE user_login SET state=$2, state_error=$3 WHERE id=$1", login_id, state, error
        )

    async def set_space(self, login_id: str, space_room: str) -> None:
        await self.db.execute("UPDATE user_login SET space_room=$2 WHERE id=$1", login_id, space_room)

    async def delete(self, login_id: str) -> None:
        await self.db.execute("DELETE FROM user_login WHERE id=$1", login_id)
