"""Alembic environment for the bridge database (SQLite through aiosqlite, PostgreSQL through asyncpg).

Normally run from :mod:`bridges.db.migrate`, which opens the connection (an async engine's
``run_sync``, inside the caller's event loop) and hands it over in
``config.attributes["connection"]``. Run any other way, the database comes from
``config.attributes["db_url"]`` (a mautrix-style URL) or the ``sqlalchemy.url`` option, and an
event loop of its own is started.

Only the tables in :data:`bridges.db.schema.metadata` are compared: the ones mautrix's crypto
and state stores own (:data:`bridges.db.schema.FOREIGN_TABLES`) live in the same database and
are ignored. SQLite gets batch mode ("move and copy") for the ALTERs it lacks.
"""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import context
from sqlalchemy.engine import Connection

from bridges.db import migrate
from bridges.db.schema import metadata

config = context.config


def _configure(**kwargs: Any) -> None:
    sqlite = kwargs.pop("sqlite")
    context.configure(
        target_metadata=metadata,
        render_as_batch=sqlite,
        compare_type=True,
        # alembic's own default comparison is right on PostgreSQL (and its user hook cannot
        # take identity columns there); SQLite needs the hook.
        compare_server_default=migrate.compare_server_default if sqlite else True,
        include_name=migrate.include_name,
        include_object=migrate.include_object,
        **kwargs,
    )


def run_migrations_offline() -> None:
    """Write the SQL to the output instead of running it (``--sql``)."""
    url = migrate.config_url(config)
    _configure(
        sqlite=url.get_backend_name() == "sqlite",
        url=url,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    _configure(sqlite=connection.dialect.name == "sqlite", connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async_migrations() -> None:
    engine = migrate.create_engine(migrate.config_url(config))
    try:
        async with engine.begin() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
    else:
        asyncio.run(_run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
