"""Runtime SQL helpers shared by the table modules.

Queries use ``$1`` placeholders through :mod:`mautrix.util.async_db`, which runs them on both
asyncpg and aiosqlite. The schema is owned by alembic (``alembic/versions``); these modules only
read and write it.
"""

from __future__ import annotations

import json
import time
from typing import Any

from mautrix.util.async_db import Database


def now_ms() -> int:
    return int(time.time() * 1000)


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def loads(value: str | None, default: Any = None) -> Any:
    if not value:
        return {} if default is None else default
    return json.loads(value)


class Table:
    """Base of the table modules: holds the database."""

    def __init__(self, db: Database) -> None:
        self.db = db
