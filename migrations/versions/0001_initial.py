"""Files and chunks tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from sqlstore.schema import BytewiseString, Content, DirKey, FileId

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLE_OPTIONS = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4"}


def upgrade() -> None:
    op.create_table(
        "sqlstore_files",
        sa.Column("file_id", FileId, nullable=False),
        sa.Column("namespace", BytewiseString(255), nullable=False),
        sa.Column("parent", DirKey, nullable=False),
        sa.Column("name", BytewiseString(1024), nullable=False),
        sa.Column("content", Content, nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("chunk_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.PrimaryKeyConstraint("file_id", name=op.f("pk_sqlstore_files")),
        **_TABLE_OPTIONS,
    )
    op.create_index(
        op.f("ix_sqlstore_files_namespace_parent_name"),
        "sqlstore_files",
        ["namespace", "parent", "name"],
        mysql_length={"parent": 1024, "name": 1024},
    )
    op.create_table(
        "sqlstore_chunks",
        sa.Column("file_id", FileId, nullable=False),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("data", Content, nullable=False),
        sa.PrimaryKeyConstraint("file_id", "seq", name=op.f("pk_sqlstore_chunks")),
        **_TABLE_OPTIONS,
    )
    bind = op.get_bind()
    if bind.dialect.name == "postgresql" and _has_lz4(bind):
        # lz4 TOAST compression wrote 64 KiB values ~4x faster than pglz here.
        for table, column in (("sqlstore_files", "content"), ("sqlstore_chunks", "data")):
            op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET COMPRESSION lz4")


def downgrade() -> None:
    op.drop_table("sqlstore_chunks")
    op.drop_index(op.f("ix_sqlstore_files_namespace_parent_name"), table_name="sqlstore_files")
    op.drop_table("sqlstore_files")


def _has_lz4(bind: sa.Connection) -> bool:
    if bind.dialect.server_version_info < (14,):
        return False
    found = bind.execute(
        sa.text(
            "SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression'"
            " AND 'lz4' = ANY(enumvals)"
        )
    ).first()
    return found is not None
