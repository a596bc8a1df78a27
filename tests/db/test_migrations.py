"""Alembic migrations on a real SQLite file and a real PostgreSQL server, beside mautrix's stores."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from mautrix.client.state_store.asyncpg import PgStateStore
from mautrix.crypto import PgCryptoStore
from mautrix.util.async_db import Database
from mautrix.util.logging import TraceLogger
from sqlalchemy.engine import Connection

from bridges.db import migrate
from bridges.db.schema import FOREIGN_TABLES, metadata

OUR_TABLES = frozenset(metadata.tables)
MAUTRIX_LOG = logging.getLogger("mau.test_db")
assert isinstance(MAUTRIX_LOG, TraceLogger)


async def table_names(db_url: str) -> set[str]:
    engine = migrate.make_engine(db_url)
    try:
        async with engine.connect() as conn:
            return set(await conn.run_sync(lambda c: sa.inspect(c).get_table_names()))
    finally:
        await engine.dispose()


async def run_sql(db_url: str, *statements: str) -> None:
    db = Database.create(db_url, log=MAUTRIX_LOG)
    await db.start()
    try:
        for statement in statements:
            await db.execute(statement)
    finally:
        await db.stop()


async def create_mautrix_stores(db_url: str) -> None:
    """What the bridge's Matrix side does at start: the crypto store and the state store."""
    for upgrade_table in (PgCryptoStore.upgrade_table, PgStateStore.upgrade_table):
        db = Database.create(
            db_url, upgrade_table=upgrade_table, log=MAUTRIX_LOG, owner_name="caliopen"
        )
        await db.start()
        await db.stop()


def test_scripts_have_one_head() -> None:
    assert (migrate.ALEMBIC_DIR / "env.py").is_file()
    newest = max(p.name.split("_", 1)[0] for p in (migrate.ALEMBIC_DIR / "versions").glob("[0-9]*_*.py"))
    assert migrate.head_revision() == newest


async def test_upgrade_from_0001_keeps_messages(db_url: str) -> None:
    """A database made by the first release upgrades in place; its messages get part_index 0."""
    from mautrix.util.async_db import Database

    await migrate.upgrade(db_url, "0001")
    db = Database.create(db_url, log=logging.getLogger("mau.test"))
    await db.start()
    try:
        await db.execute("INSERT INTO bridge_user (mxid, created_at) VALUES ('@u:x', 1)")
        await db.execute("INSERT INTO user_login (id, network, user_mxid, remote_id, remote_name, state, created_at) "
                         "VALUES ('l', 'fake', '@u:x', 'r', 'R', 'CONNECTED', 1)")
        await db.execute("INSERT INTO portal (login_id, portal_id, network, created_at) VALUES ('l', 'p', 'fake', 1)")
        await db.execute("INSERT INTO message (login_id, remote_id, part_id, portal_id, mxid, room_mxid, sender_id, "
                         "timestamp) VALUES ('l', 'm', 'body', 'p', '$e', '!r', 's', 1)")
    finally:
        await db.stop()
    await migrate.upgrade(db_url)
    await migrate.check(db_url)
    db = Database.create(db_url, log=logging.getLogger("mau.test"))
    await db.start()
    try:
        assert await db.fetchval("SELECT part_index FROM message WHERE mxid='$e'") == 0
    finally:
        await db.stop()


async def test_upgrade_empty_database(db_url: str) -> None:
    assert await migrate.current_revision(db_url) is None
    assert not await migrate.is_current(db_url)
    with pytest.raises(migrate.SchemaMismatchError):
        await migrate.check(db_url)  # not at head yet

    await migrate.upgrade(db_url)

    assert await migrate.current_revision(db_url) == migrate.head_revision()
    assert await migrate.is_current(db_url)
    assert await table_names(db_url) == OUR_TABLES | {"alembic_version"}
    await migrate.check(db_url)


async def test_upgrade_is_idempotent_and_keeps_data(db_url: str) -> None:
    await migrate.upgrade(db_url)
    await run_sql(db_url, "INSERT INTO kv (key, value) VALUES ('k', 'v')")
    await migrate.upgrade(db_url)
    await migrate.upgrade(db_url)
    assert await migrate.is_current(db_url)
    db = Database.create(db_url, log=MAUTRIX_LOG)
    await db.start()
    try:
        assert await db.fetchval("SELECT value FROM kv WHERE key=$1", "k") == "v"
    finally:
        await db.stop()


async def test_mautrix_tables_are_ignored(db_url: str) -> None:
    await migrate.upgrade(db_url)
    await create_mautrix_stores(db_url)

    foreign = await table_names(db_url) - OUR_TABLES - {"alembic_version"}
    # Every table mautrix made is on the ignore list...
    assert foreign <= FOREIGN_TABLES, f"not ignored: {sorted(foreign - FOREIGN_TABLES)}"
    # ...and the list names no crypto or state store table that mautrix does not make.
    listed = {t for t in FOREIGN_TABLES if t.startswith(("crypto_", "mx_"))} | {"database_owner"}
    assert listed <= foreign, f"listed but not created: {sorted(listed - foreign)}"

    await migrate.check(db_url)
    assert await migrate.is_current(db_url)

    # Without the filter, the same comparison would want to drop mautrix's tables.
    def unfiltered(connection: Connection) -> list[tuple]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, metadata)

    engine = migrate.make_engine(db_url)
    try:
        async with engine.connect() as conn:
            diffs = await conn.run_sync(unfiltered)
    finally:
        await engine.dispose()
    removed = {d[1].name for d in diffs if isinstance(d, tuple) and d[0] == "remove_table"}
    assert "crypto_account" in removed and "mx_room_state" in removed


async def test_downgrade_to_base_and_upgrade_again(db_url: str) -> None:
    await migrate.upgrade(db_url)
    await create_mautrix_stores(db_url)

    await migrate.downgrade(db_url, "base")
    assert await migrate.current_revision(db_url) is None
    remaining = await table_names(db_url)
    assert not remaining & OUR_TABLES
    assert {"crypto_account", "mx_room_state"} <= remaining  # not ours: left alone

    await migrate.upgrade(db_url)
    assert await migrate.is_current(db_url)
    await migrate.check(db_url)


@pytest.mark.parametrize(
    ("drift", "expected"),
    [
        (["CREATE TABLE stray (x INTEGER)"], "stray"),
        (["ALTER TABLE kv ADD COLUMN extra TEXT"], "extra"),
        (["DROP TABLE as_txn"], "as_txn"),
        (
            [
                "DROP TABLE kv",
                "CREATE TABLE kv (key TEXT NOT NULL PRIMARY KEY, value INTEGER NOT NULL)",
            ],
            "value",
        ),
        (["CREATE INDEX ix_extra ON matrix_event (room_mxid)"], "ix_extra"),
        (
            [
                "DROP TABLE as_txn",
                "CREATE TABLE as_txn (txn_id TEXT NOT NULL PRIMARY KEY,"
                " received_at BIGINT NOT NULL DEFAULT 7)",
            ],
            "received_at",
        ),
    ],
    ids=["extra-table", "extra-column", "missing-table", "changed-type", "extra-index", "default"],
)
async def test_check_reports_drift(db_url: str, drift: list[str], expected: str) -> None:
    await migrate.upgrade(db_url)
    await run_sql(db_url, *drift)
    with pytest.raises(migrate.SchemaMismatchError) as excinfo:
        await migrate.check(db_url)
    assert expected in str(excinfo.value)
    assert await migrate.is_current(db_url)  # the revision alone does not see drift


async def test_unknown_revision_in_database_is_refused(db_url: str) -> None:
    await migrate.upgrade(db_url)
    await run_sql(db_url, "UPDATE alembic_version SET version_num='9999'")
    assert not await migrate.is_current(db_url)
    with pytest.raises(migrate.MigrationError, match="9999"):
        await migrate.upgrade(db_url)


async def test_runtime_sql_on_the_schema(db_url: str) -> None:
    """The schema behaves the same for ``$1`` SQL on both backends: defaults, cascades, ids."""
    await migrate.upgrade(db_url)
    db = Database.create(db_url, log=MAUTRIX_LOG)
    await db.start()
    try:
        await db.execute("INSERT INTO bridge_user (mxid, created_at) VALUES ($1, $2)", "@a:x", 1)
        await db.execute(
            "INSERT INTO user_login (id, network, user_mxid, remote_id, remote_name, state, created_at)"
            " VALUES ($1, 'email', $2, 'a@example.org', 'A', 'connected', 1)",
            "login1",
            "@a:x",
        )
        await db.execute(
            "INSERT INTO portal (login_id, portal_id, network, created_at) VALUES ($1, $2, 'email', 1)",
            "login1",
            "p1",
        )
        portal = await db.fetchrow("SELECT is_direct, encrypted, metadata FROM portal")
        assert bool(portal["is_direct"]) is True and bool(portal["encrypted"]) is True
        assert portal["metadata"] == "{}"
        login = await db.fetchrow("SELECT metadata, secrets FROM user_login WHERE id=$1", "login1")
        assert (login["metadata"], login["secrets"]) == ("{}", "")

        big = 2**41  # milliseconds past 2038 do not fit 32 bits
        await db.execute(
            "INSERT INTO message (login_id, remote_id, part_id, portal_id, mxid, room_mxid,"
            " sender_id, timestamp) VALUES ($1, 'm1', '', $2, '$e1', '!r', 's', $3)",
            "login1",
            "p1",
            big,
        )
        assert await db.fetchval(
            "SELECT timestamp FROM message WHERE timestamp<=$1 ORDER BY timestamp DESC", big
        ) == big

        ids = []
        for n in range(3):
            await db.execute(
                "INSERT INTO remote_inbox (login_id, portal_id, kind, remote_id, payload, created_at)"
                " VALUES ($1, 'p1', 'msg', $2, '{}', 1)",
                "login1",
                f"r{n}",
            )
            ids.append(await db.fetchval("SELECT MAX(id) FROM remote_inbox"))
        assert ids == sorted(ids) and len(set(ids)) == 3
        await db.execute("DELETE FROM remote_inbox WHERE id=$1", ids[-1])
        await db.execute(
            "INSERT INTO remote_inbox (login_id, portal_id, kind, remote_id, payload, created_at)"
            " VALUES ($1, 'p1', 'msg', 'r9', '{}', 1)",
            "login1",
        )
        assert await db.fetchval("SELECT MAX(id) FROM remote_inbox") > ids[-1]  # never reused
        attempts = await db.fetchval("SELECT attempts FROM remote_inbox WHERE remote_id='r9'")
        assert attempts == 0

        # Deleting the user deletes its logins, their portals, messages and inbox.
        await db.execute("DELETE FROM bridge_user WHERE mxid=$1", "@a:x")
        for table in ("user_login", "portal", "message", "remote_inbox"):
            assert await db.fetchval(f"SELECT COUNT(*) FROM {table}") == 0, table
    finally:
        await db.stop()


def test_developer_command_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bridges.db.migrate", *args, "--db", url],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=Path(__file__).resolve().parents[2],
        )

    assert run("check").returncode == 1
    assert run("upgrade").returncode == 0
    current = run("current")
    assert current.returncode == 0 and current.stdout.startswith(migrate.head_revision())
    assert run("check").returncode == 0
