"""Bring a database's sqlstore schema to a revision, from a checkout or an installed wheel.

Alembic is imported only when a function here runs: ``import sqlstore`` stays quick for
processes that only read and write.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy import Engine
from sqlalchemy.engine import URL

if TYPE_CHECKING:
    from alembic.config import Config


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


def migrate(url_or_engine: str | URL | Engine, revision: str = "head") -> None:
    """Upgrade the sqlstore schema of a database to ``revision`` (default: the newest).

    Safe to call on every start-up, also from several processes at once (replicas
    starting together): a database lock serialises them, and a database already at
    ``revision`` is left as it is. Only sqlstore's tables and its version table
    ``sqlstore_alembic_version`` are touched, so the database may hold an application's
    own tables and Alembic history.

    Args:
        url_or_engine: A database URL or an engine.
        revision: The Alembic revision to upgrade to.
    """
    from alembic import command

    _run(url_or_engine, lambda config: command.upgrade(config, revision))


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


def _run(url_or_engine: str | URL | Engine, action: Callable[[Config], None]) -> None:
    with migration_connection(url_or_engine) as conn, _schema_lock(conn):
        config = alembic_config()
        config.attributes["connection"] = conn
        action(config)
        conn.commit()


#: How long a MySQL/MariaDB migration waits for another process's migration to end.
SCHEMA_LOCK_TIMEOUT = 600


@contextmanager
def _schema_lock(conn: sa.Connection) -> Iterator[None]:
    """Serialise schema changes between processes sharing one database.

    Replicas that start together each migrate; without this, two of them create the
    version table at once and one fails. The lock is the database's own: a
    transaction-scoped advisory lock on PostgreSQL (safe behind PgBouncer; the
    migrations then run inside that transaction), ``GET_LOCK`` on MySQL/MariaDB (DDL
    commits there, so the lock is the session's), and the write lock on SQLite
    (``BEGIN IMMEDIATE``). Whoever waits finds the schema at head and does nothing.
    """
    name = conn.dialect.name
    database = conn.engine.url.database or ""
    digest = hashlib.blake2b(database.encode(), digest_size=8, person=b"sqlstore-ddl")
    if name == "postgresql":
        key = int.from_bytes(digest.digest(), "big", signed=True)
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        yield  # released when _run commits (or the connection rolls back)
    elif name in ("mysql", "mariadb"):
        lock = f"sqlstore-ddl-{digest.hexdigest()}"
        got = conn.execute(
            sa.text("SELECT GET_LOCK(:lock, :timeout)"),
            {"lock": lock, "timeout": SCHEMA_LOCK_TIMEOUT},
        ).scalar()
        conn.commit()  # the migrations run in transactions of their own
        if got != 1:
            raise TimeoutError(f"another process kept migrating for {SCHEMA_LOCK_TIMEOUT}s")
        try:
            yield
        finally:
            conn.rollback()
            conn.execute(sa.text("SELECT RELEASE_LOCK(:lock)"), {"lock": lock})
            conn.commit()
    elif name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # waits under busy_timeout
        yield
    else:
        yield


@contextmanager
def migration_connection(url_or_engine: str | URL | Engine) -> Iterator[sa.Connection]:
    """A connection that runs migrations in real transactions.

    A URL gets an engine of its own, made like :func:`sqlstore.create_engine` makes
    them (so sqlstore's URL parameters work here too) and disposed afterwards.
    """
    from .engine import create_engine

    if isinstance(url_or_engine, Engine):
        engine, owned = url_or_engine, False
    else:
        engine, owned = create_engine(url_or_engine, poolclass=sa.pool.NullPool), True
    try:
        with engine.connect() as conn:
            # DDL runs in real transactions even on an autocommit engine (PostgreSQL and
            # SQLite roll a failed migration back whole).
            level = conn.dialect.default_isolation_level
            yield conn.execution_options(isolation_level=level) if level else conn
    finally:
        if owned:
            engine.dispose()
