"""The bridge's tables as SQLAlchemy Core metadata, for alembic only.

Alembic compares this with the database (``autogenerate``, ``check``); the runtime never
imports SQLAlchemy and queries the tables with plain SQL (:mod:`bridges.db`). A change here
needs a new revision in ``alembic/versions`` that makes the same change, on both SQLite and
PostgreSQL (``python -m bridges.db.migrate revision -m "..." --db URL`` drafts one).

Conventions the runtime relies on: every timestamp is milliseconds since the epoch in a
BIGINT; JSON documents are TEXT; booleans are BOOLEAN on both backends.

Tables created by mautrix's crypto and state stores share the database and are not described
here: :data:`FOREIGN_TABLES` lists them, and alembic ignores them.
"""

from __future__ import annotations

import sqlalchemy as sa

NAMING_CONVENTION: dict[str, str] = {
    "pk": "pk_%(table_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

# Tables that mautrix creates in the bridge database, as seen on SQLite and PostgreSQL after
# ``mautrix.crypto.PgCryptoStore.upgrade_table`` and
# ``mautrix.client.state_store.asyncpg.PgStateStore.upgrade_table`` ran (mautrix 0.21), plus
# the tables of ``mautrix.util.async_db.Database`` itself (its default version table and the
# ``database_owner`` table made when an owner name is given). tests/db checks this list.
FOREIGN_TABLES: frozenset[str] = frozenset(
    {
        # mautrix.crypto.store.asyncpg (PgCryptoStore)
        "crypto_version",
        "crypto_account",
        "crypto_message_index",
        "crypto_tracked_user",
        "crypto_device",
        "crypto_olm_session",
        "crypto_megolm_inbound_session",
        "crypto_megolm_outbound_session",
        "crypto_cross_signing_keys",
        "crypto_cross_signing_signatures",
        # mautrix.client.state_store.asyncpg (PgStateStore)
        "mx_version",
        "mx_room_state",
        "mx_user_profile",
        # mautrix.util.async_db.Database
        "version",
        "database_owner",
    }
)

_ms = sa.BigInteger
_json = {"nullable": False, "server_default": "{}"}

bridge_user = sa.Table(
    "bridge_user",
    metadata,
    sa.Column("mxid", sa.Text, primary_key=True),
    sa.Column("management_room", sa.Text, nullable=True),
    sa.Column("disabled_networks", sa.Text, nullable=False, server_default="[]"),
    sa.Column("permission", sa.Text, nullable=True),
    sa.Column("created_at", _ms, nullable=False),
)

user_login = sa.Table(
    "user_login",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("network", sa.Text, nullable=False),
    sa.Column(
        "user_mxid",
        sa.Text,
        sa.ForeignKey("bridge_user.mxid", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("remote_id", sa.Text, nullable=False),
    sa.Column("remote_name", sa.Text, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("state_error", sa.Text, nullable=True),
    sa.Column("space_room", sa.Text, nullable=True),
    sa.Column("metadata", sa.Text, **_json),
    # Sealed with bridges.core.secrets.SecretBox; '' when there are none.
    sa.Column("secrets", sa.Text, nullable=False, server_default=""),
    sa.Column("created_at", _ms, nullable=False),
    sa.UniqueConstraint("network", "user_mxid", "remote_id"),
)

portal = sa.Table(
    "portal",
    metadata,
    sa.Column(
        "login_id",
        sa.Text,
        sa.ForeignKey("user_login.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("portal_id", sa.Text, primary_key=True),
    sa.Column("network", sa.Text, nullable=False),
    sa.Column("mxid", sa.Text, nullable=True, unique=True),
    sa.Column("name", sa.Text, nullable=True),
    sa.Column("topic", sa.Text, nullable=True),
    sa.Column("is_direct", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("encrypted", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("metadata", sa.Text, **_json),
    sa.Column("created_at", _ms, nullable=False),
)

ghost = sa.Table(
    "ghost",
    metadata,
    sa.Column("network", sa.Text, primary_key=True),
    sa.Column("remote_id", sa.Text, primary_key=True),
    sa.Column("mxid", sa.Text, nullable=False, unique=True),
    sa.Column("name", sa.Text, nullable=True),
    sa.Column("avatar_url", sa.Text, nullable=True),
)

message = sa.Table(
    "message",
    metadata,
    sa.Column("login_id", sa.Text, primary_key=True),
    sa.Column("remote_id", sa.Text, primary_key=True),
    sa.Column("part_id", sa.Text, primary_key=True),
    sa.Column("portal_id", sa.Text, nullable=False),
    sa.Column("mxid", sa.Text, nullable=False, unique=True),
    sa.Column("room_mxid", sa.Text, nullable=False),
    sa.Column("sender_id", sa.Text, nullable=False),
    sa.Column("timestamp", _ms, nullable=False),
    sa.Column("thread_root_id", sa.Text, nullable=True),
    sa.Column("metadata", sa.Text, **_json),
    sa.Column("privacy", sa.Text, nullable=True),
    sa.Column("delivery", sa.Text, nullable=True),
    sa.Column("part_index", sa.Integer, nullable=False, server_default="0"),
    sa.ForeignKeyConstraint(
        ["login_id", "portal_id"],
        ["portal.login_id", "portal.portal_id"],
        ondelete="CASCADE",
    ),
    sa.Index(None, "login_id", "portal_id", "timestamp"),
)

remote_inbox = sa.Table(
    "remote_inbox",
    metadata,
    # INTEGER PRIMARY KEY is SQLite's rowid alias (the only autoincrementing column there);
    # PostgreSQL gets a BIGINT identity column.
    sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
        sa.Identity(),
        primary_key=True,
    ),
    sa.Column(
        "login_id",
        sa.Text,
        sa.ForeignKey("user_login.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("portal_id", sa.Text, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("remote_id", sa.Text, nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
    sa.Column("created_at", _ms, nullable=False),
    sa.UniqueConstraint("login_id", "kind", "remote_id"),
    # AUTOINCREMENT: ids are never reused on SQLite either (the queue is ordered by id).
    sqlite_autoincrement=True,
)

matrix_event = sa.Table(
    "matrix_event",
    metadata,
    sa.Column("event_id", sa.Text, primary_key=True),
    sa.Column("room_mxid", sa.Text, nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("error", sa.Text, nullable=True),
    sa.Column("updated_at", _ms, nullable=False),
)

as_txn = sa.Table(
    "as_txn",
    metadata,
    sa.Column("txn_id", sa.Text, primary_key=True),
    sa.Column("received_at", _ms, nullable=False),
)

kv = sa.Table(
    "kv",
    metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
