"""Alembic environment for sqlstore's own tables.

The database URL comes from, in order: a connection handed over by
``sqlstore.migrate`` (``config.attributes["connection"]``), ``-x url=...``,
the ``SQLSTORE_URL`` environment variable, or ``sqlalchemy.url`` in the config.
sqlstore keeps its own version table and only ever looks at its own tables, so it
can live in a database whose application runs Alembic too.
"""

from __future__ import annotations

import os
from logging.config import fileConfig
from typing import Any

import sqlalchemy as sa
from alembic import context

from sqlstore.database import database_for
from sqlstore.migrations import migration_connection
from sqlstore.schema import TABLE_NAMES, VERSION_TABLE, metadata

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    url = (
        context.get_x_argument(as_dictionary=True).get("url")
        or os.environ.get("SQLSTORE_URL")
        or config.get_main_option("sqlalchemy.url")
    )
    if not url:
        raise SystemExit(
            "sqlstore migrations need a database URL: `alembic -x url=... upgrade head` "
            "or SQLSTORE_URL=..."
        )
    return url


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Only sqlstore's tables (and what belongs to them) take part in comparisons."""
    if type_ == "table":
        return name in TABLE_NAMES
    return True


def _configure(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        include_name=include_name,
        compare_type=True,
        compare_server_default=False,
        transaction_per_migration=True,
    )


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def _migrate(connection: sa.Connection) -> None:
    # A Citus worker is refused before anything changes; on a Citus coordinator the
    # tables are (still, or now) distributed by namespace once the revisions ran.
    strategy = database_for(connection.engine).strategy
    strategy.check_node(connection)
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()
    strategy.lay_out(connection)


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    with migration_connection(_url()) as conn:
        _migrate(conn)
        conn.commit()
        # `alembic -x partitions=8 upgrade head`: the layout sqlstore.migrate(partitions=8) makes.
        partitions = context.get_x_argument(as_dictionary=True).get("partitions")
        if partitions is not None:
            strategy = database_for(conn.engine).strategy
            with conn.begin():
                strategy.repartition(conn, int(partitions))


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
