"""Database fixtures: ``db_url`` is an empty database, once on SQLite and once on PostgreSQL."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import pytest_asyncio

from tests.rig.postgres import PostgresServer


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> PostgresServer | None:
    """The PostgreSQL server for the "postgres" case (started on first use), None for SQLite."""
    if request.param == "postgres":
        return request.getfixturevalue("postgres_server")
    return None


@pytest_asyncio.fixture
async def db_url(backend: PostgresServer | None, tmp_path: Path) -> str:
    """A mautrix-style URL of a fresh, empty database on the backend of this test case."""
    if backend is None:
        return f"sqlite:///{tmp_path / 'bridge.db'}"
    return await backend.create_database(f"t_{uuid.uuid4().hex[:16]}")
