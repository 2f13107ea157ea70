"""The namespace leads every key: files (namespace, file_id), chunks (namespace, file_id, seq).

A database partitioned or distributed by namespace (PostgreSQL hash partitions, Citus)
needs the namespace in every primary key, and a statement reaches one partition only
when it names the namespace. Chunks gain a namespace column, copied from their file;
chunks whose file is gone are dropped.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from sqlstore.dialects import strategy_for
from sqlstore.schema import BytewiseString, Content, DirKey, FileId

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FILES_INDEX = "ix_sqlstore_files_namespace_parent_name"


def upgrade() -> None:
    bind = op.get_bind()
    # Chunks no file row counts any more: nothing can read them, and they have no namespace.
    op.execute(
        "DELETE FROM sqlstore_chunks WHERE file_id NOT IN (SELECT file_id FROM sqlstore_files)"
    )
    if bind.dialect.name == "sqlite":
        _rebuild_sqlite(with_namespace=True)
        return
    _set_primary_key(bind, "sqlstore_files", ["namespace", "file_id"])
    op.add_column("sqlstore_chunks", sa.Column("namespace", BytewiseString(255), nullable=True))
    op.execute(
        "UPDATE sqlstore_chunks SET namespace = (SELECT f.namespace FROM sqlstore_files f"
        " WHERE f.file_id = sqlstore_chunks.file_id)"
    )
    op.alter_column(
        "sqlstore_chunks", "namespace", existing_type=BytewiseString(255), nullable=False
    )
    _set_primary_key(bind, "sqlstore_chunks", ["namespace", "file_id", "seq"])
    # Statistics now, so the planner knows the listing index from the new primary key.
    for statement in strategy_for(bind.dialect.name).analyze():
        op.execute(statement)


def downgrade() -> None:
    bind = op.get_bind()
    strategy = strategy_for(bind.dialect.name)
    if strategy.partitions(bind):
        strategy.repartition(bind, 0)  # revision 0001's keys cannot be partitioned
    strategy.before_key_change(bind)  # nor distributed (Citus) by namespace
    if bind.dialect.name == "sqlite":
        _rebuild_sqlite(with_namespace=False)
        return
    _set_primary_key(bind, "sqlstore_chunks", ["file_id", "seq"])
    op.drop_column("sqlstore_chunks", "namespace")
    _set_primary_key(bind, "sqlstore_files", ["file_id"])


def _set_primary_key(bind: sa.Connection, table: str, columns: list[str]) -> None:
    name = f"pk_{table}"
    if bind.dialect.name in ("mysql", "mariadb"):
        # One ALTER: InnoDB rebuilds the table once, not twice.
        op.execute(f"ALTER TABLE {table} DROP PRIMARY KEY, ADD PRIMARY KEY ({', '.join(columns)})")
        return
    op.drop_constraint(name, table, type_="primary")
    op.create_primary_key(name, table, columns)


def _rebuild_sqlite(*, with_namespace: bool) -> None:
    """SQLite cannot change a primary key in place: copy each table into a new one."""
    times = (
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    )
    file_key = ["namespace", "file_id"] if with_namespace else ["file_id"]
    _copy(
        "sqlstore_files",
        [
            sa.Column("file_id", FileId, nullable=False),
            sa.Column("namespace", BytewiseString(255), nullable=False),
            sa.Column("parent", DirKey, nullable=False),
            sa.Column("name", BytewiseString(1024), nullable=False),
            sa.Column("content", Content, nullable=False),
            sa.Column("size", sa.BigInteger(), nullable=False),
            sa.Column("chunk_count", sa.Integer(), server_default="0", nullable=False),
            *times,
        ],
        file_key,
        "*",
    )
    op.create_index(_FILES_INDEX, "sqlstore_files", ["namespace", "parent", "name"])
    chunk_columns = [
        sa.Column("file_id", FileId, nullable=False),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("data", Content, nullable=False),
    ]
    if with_namespace:
        chunk_columns.append(sa.Column("namespace", BytewiseString(255), nullable=False))
        source = (
            "c.file_id, c.seq, c.data, f.namespace FROM sqlstore_chunks c"
            " JOIN sqlstore_files f ON f.file_id = c.file_id"
        )
        key = ["namespace", "file_id", "seq"]
    else:
        source = "file_id, seq, data FROM sqlstore_chunks"
        key = ["file_id", "seq"]
    _copy("sqlstore_chunks", chunk_columns, key, source)


def _copy(table: str, columns: list[sa.Column[object]], key: list[str], source: str) -> None:
    new = f"_new_{table}"
    op.create_table(new, *columns, sa.PrimaryKeyConstraint(*key, name=f"pk_{table}"))
    names = ", ".join(column.name for column in columns)
    select = f"{names} FROM {table}" if source == "*" else source
    op.execute(f"INSERT INTO {new} ({names}) SELECT {select}")
    if table == "sqlstore_files":
        op.drop_index(_FILES_INDEX, table_name=table)
    op.drop_table(table)
    op.rename_table(new, table)
