"""pytest fixtures for a real PostgreSQL server.

Import ``postgres_server`` into a conftest (or list this module in ``pytest_plugins``) to use it.
One server runs per test session; each test makes its own database with
:meth:`~tests.rig.postgres.PostgresServer.create_database`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.rig.postgres import PostgresServer


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PostgresServer]:
    """A running PostgreSQL server for the whole session, stopped at the end."""
    server = PostgresServer(tmp_path_factory.mktemp("postgres"))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
