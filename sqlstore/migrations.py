"""Bring a database's sqlstore schema to a revision, from a checkout or an installed wheel.

Alembic is imported only when a function here runs: ``import sqlstore`` stays quick for
processes that only read and write.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy import Engine
from sqlalchemy.engine import URL, make_url

from .database import database_for
from .dialects.sqlite import in_memory
from .errors import SchemaError

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = [
    "alembic_config",
    "downgrade",
    "layout",
    "migrate",
    "migration_connection",
    "migrations_dir",
    "stamp",
]


def migrations_dir() -> Path:
    """The directory holding sqlstore's Alembic environment and revisions.

    Inside the package when installed from a wheel, else the checkout's top-level
    ``migrations/``.
    """
    packaged = Path(str(resources.files("sqlstore"))) / "_migrations"
    if (packaged / "env.py").is_file():
        return packaged
    checkout = Path(__file__).resolve().parent.parent / "migrations"
    if (checkout / "env.py").is_file():
        return checkout
    raise FileNotFoundError("sqlstore's migrations are missing from this installation")


def alembic_config(url: str | URL | None = None) -> Config:
    """An Alembic ``Config`` for sqlstore's migrations, independent of any ``alembic.ini``.

    Args:
        url: The database URL to put in ``sqlalchemy.url``, if any.
    """
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if url is not None:
        rendered = url.render_as_string(hide_password=False) if isinstance(url, URL) else url
        # ConfigParser interpolation would eat a literal % in a password.
        config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    config.attributes["configure_logging"] = False
    return config


def migrate(
    url_or_engine: str | URL | Engine, revision: str = "head", *, partitions: int | None = None
) -> None:
    """Upgrade the sqlstore schema of a database to ``revision`` (default: the newest).

    Safe to call on every start-up, also from several processes at once (replicas
    starting together): a database lock serialises them, and a database already at
    ``revision`` is left as it is. Only sqlstore's tables and its version table
    ``sqlstore_alembic_version`` are touched, so the database may hold an application's
    own tables and Alembic history.

    Args:
        url_or_engine: A database URL or an engine.
        revision: The Alembic revision to upgrade to.
        partitions: Also make sqlstore's tables this many hash partitions by namespace
            (PostgreSQL, MySQL/MariaDB; 0 undoes it). A change of layout copies every
            row once, with the tables locked; ``None`` (the default) keeps the layout.

    Raises:
        ValueError: ``partitions`` is invalid, or the database cannot partition tables.
        SchemaError: ``revision`` is unknown.
        LockTimeoutError: another process kept migrating the database for 10 minutes.
        DatabaseError: the database failed.
    """
    from alembic import command

    _run(url_or_engine, lambda config: command.upgrade(config, revision), partitions)


def downgrade(url_or_engine: str | URL | Engine, revision: str) -> None:
    """Downgrade the sqlstore schema to ``revision`` (``"base"`` drops sqlstore's tables)."""
    from alembic import command

    _run(url_or_engine, lambda config: command.downgrade(config, revision))


def stamp(url_or_engine: str | URL | Engine, revision: str) -> None:
    """Record ``revision`` as the database's sqlstore revision without running migrations.

    For a database whose tables were created another way; ``"base"`` forgets the
    revision (the tables stay).
    """
    from alembic import command

    _run(url_or_engine, lambda config: command.stamp(config, revision))


def _run(
    url_or_engine: str | URL | Engine,
    action: Callable[[Config], None],
    partitions: int | None = None,
) -> None:
    from alembic.util.exc import CommandError

    with migration_connection(url_or_engine) as conn:
        db = database_for(conn.engine)
        if partitions is not None:
            db.strategy.check_layout(partitions)  # before anything changes
        # Replicas that start together each migrate: a database lock serialises them,
        # and whoever waited finds the schema at head and does nothing.
        with db.converting(), db.strategy.schema_lock(conn, SCHEMA_LOCK_TIMEOUT):
            config = alembic_config()
            config.attributes["connection"] = conn
            try:
                action(config)
            except CommandError as exc:  # e.g. an unknown revision
                raise SchemaError(f"{db.safe_url}: {exc}") from exc
            if partitions is not None:
                db.strategy.repartition(conn, partitions)
            conn.commit()
        # Stores on this engine check the schema again on their next call.
        db.forget_schema()


#: Seconds a migration waits for another process's migration of the same database.
SCHEMA_LOCK_TIMEOUT = 600


def partitions(url_or_engine: str | URL | Engine) -> int:
    """How many hash partitions by namespace sqlstore's tables have (0: none)."""
    with migration_connection(url_or_engine) as conn:
        db = database_for(conn.engine)
        with db.converting():
            return db.strategy.partitions(conn)


def layout(url_or_engine: str | URL | Engine) -> str:
    """One line on how sqlstore's tables lie: plain, hash-partitioned, or distributed (Citus).

    On a Citus coordinator it names the distribution column, whether the tables are
    co-located, the shard count and the shards on each worker.
    """
    with migration_connection(url_or_engine) as conn:
        db = database_for(conn.engine)
        with db.converting():
            distributed = db.strategy.layout(conn)
            if distributed is not None:
                return distributed
            count = db.strategy.partitions(conn)
    if count:
        return f"{count} hash partitions by namespace"
    return "one table each (not partitioned)"


@contextmanager
def migration_connection(url_or_engine: str | URL | Engine) -> Iterator[sa.Connection]:
    """A connection that runs migrations in real transactions.

    A URL gets an engine of its own, made like :func:`sqlstore.create_engine` makes
    them (so sqlstore's URL parameters work here too) and disposed afterwards.

    Raises:
        ValueError: ``url_or_engine`` is the URL of an in-memory SQLite database (it
            would vanish with the engine made here: pass the engine instead).
        DatabaseError: the database cannot be reached.
    """
    from .engine import create_engine

    if isinstance(url_or_engine, Engine):
        engine, owned = url_or_engine, False
    else:
        url = make_url(url_or_engine)
        if url.get_backend_name() == "sqlite" and in_memory(url):
            raise ValueError(
                "an in-memory SQLite database lives only as long as its engine: create it "
                "with sqlstore.create_engine('sqlite://') and migrate that engine: "
                "sqlstore.migrate(engine)"
            )
        engine, owned = create_engine(url, poolclass=sa.pool.NullPool), True
    db = database_for(engine)
    try:
        with (
            db.converting(),
            engine.connect() as conn,
            # A migration may rewrite a whole table: no read timeout for it.
            db.strategy.read_timeout(conn.connection.dbapi_connection, None),
        ):
            # DDL runs in real transactions even on an autocommit engine (PostgreSQL and
            # SQLite roll a failed migration back whole).
            level = conn.dialect.default_isolation_level
            yield conn.execution_options(isolation_level=level) if level else conn
    finally:
        if owned:
            engine.dispose()
