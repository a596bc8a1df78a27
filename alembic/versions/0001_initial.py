"""Initial schema: users, logins, portals, ghosts, messages, the remote inbox, Matrix event state.

Revision ID: 0001
Revises:
Create Date: 2026-11-27

Runs on SQLite (batch mode: use ``op.batch_alter_table`` for ALTERs) and PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "bridge_user",
        sa.Column("mxid", sa.Text(), nullable=False),
        sa.Column("management_room", sa.Text(), nullable=True),
        sa.Column("disabled_networks", sa.Text(), server_default="[]", nullable=False),
        sa.Column("permission", sa.Text(), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("mxid", name="pk_bridge_user"),
    )
    op.create_table(
        "user_login",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("network", sa.Text(), nullable=False),
        sa.Column("user_mxid", sa.Text(), nullable=False),
        sa.Column("remote_id", sa.Text(), nullable=False),
        sa.Column("remote_name", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("state_error", sa.Text(), nullable=True),
        sa.Column("space_room", sa.Text(), nullable=True),
        sa.Column("metadata", sa.Text(), server_default="{}", nullable=False),
        sa.Column("secrets", sa.Text(), server_default="", nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_user_login"),
        sa.ForeignKeyConstraint(
            ["user_mxid"],
            ["bridge_user.mxid"],
            name="fk_user_login_user_mxid_bridge_user",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint(
            "network", "user_mxid", "remote_id", name="uq_user_login_network_user_mxid_remote_id"
        ),
    )
    op.create_table(
        "portal",
        sa.Column("login_id", sa.Text(), nullable=False),
        sa.Column("portal_id", sa.Text(), nullable=False),
        sa.Column("network", sa.Text(), nullable=False),
        sa.Column("mxid", sa.Text(), nullable=True),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("topic", sa.Text(), nullable=True),
        sa.Column("is_direct", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("encrypted", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("metadata", sa.Text(), server_default="{}", nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("login_id", "portal_id", name="pk_portal"),
        sa.ForeignKeyConstraint(
            ["login_id"],
            ["user_login.id"],
            name="fk_portal_login_id_user_login",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("mxid", name="uq_portal_mxid"),
    )
    op.create_table(
        "ghost",
        sa.Column("network", sa.Text(), nullable=False),
        sa.Column("remote_id", sa.Text(), nullable=False),
        sa.Column("mxid", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("avatar_url", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("network", "remote_id", name="pk_ghost"),
        sa.UniqueConstraint("mxid", name="uq_ghost_mxid"),
    )
    op.create_table(
        "message",
        sa.Column("login_id", sa.Text(), nullable=False),
        sa.Column("remote_id", sa.Text(), nullable=False),
        sa.Column("part_id", sa.Text(), nullable=False),
        sa.Column("portal_id", sa.Text(), nullable=False),
        sa.Column("mxid", sa.Text(), nullable=False),
        sa.Column("room_mxid", sa.Text(), nullable=False),
        sa.Column("sender_id", sa.Text(), nullable=False),
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
        sa.Column("thread_root_id", sa.Text(), nullable=True),
        sa.Column("metadata", sa.Text(), server_default="{}", nullable=False),
        sa.Column("privacy", sa.Text(), nullable=True),
        sa.Column("delivery", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("login_id", "remote_id", "part_id", name="pk_message"),
        sa.ForeignKeyConstraint(
            ["login_id", "portal_id"],
            ["portal.login_id", "portal.portal_id"],
            name="fk_message_login_id_portal_id_portal",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("mxid", name="uq_message_mxid"),
    )
    op.create_index(
        "ix_message_login_id_portal_id_timestamp",
        "message",
        ["login_id", "portal_id", "timestamp"],
    )
    op.create_table(
        "remote_inbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            sa.Identity(always=False),
            nullable=False,
        ),
        sa.Column("login_id", sa.Text(), nullable=False),
        sa.Column("portal_id", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("remote_id", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_remote_inbox"),
        sa.ForeignKeyConstraint(
            ["login_id"],
            ["user_login.id"],
            name="fk_remote_inbox_login_id_user_login",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint(
            "login_id", "kind", "remote_id", name="uq_remote_inbox_login_id_kind_remote_id"
        ),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "matrix_event",
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("room_mxid", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name="pk_matrix_event"),
    )
    op.create_table(
        "as_txn",
        sa.Column("txn_id", sa.Text(), nullable=False),
        sa.Column("received_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("txn_id", name="pk_as_txn"),
    )
    op.create_table(
        "kv",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_kv"),
    )


def downgrade() -> None:
    op.drop_table("kv")
    op.drop_table("as_txn")
    op.drop_table("matrix_event")
    op.drop_table("remote_inbox")
    op.drop_index("ix_message_login_id_portal_id_timestamp", table_name="message")
    op.drop_table("message")
    op.drop_table("ghost")
    op.drop_table("portal")
    op.drop_table("user_login")
    op.drop_table("bridge_user")
