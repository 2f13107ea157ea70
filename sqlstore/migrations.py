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
from sqlalchemy.engine import URL

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = [
    "alembic_config",
    "downgrade",
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


def migrate(url_or_engine: str | URL | Engine, revision: str = "head") -> None:
    """Upgrade the sqlstore schema of a database to ``revision`` (default: the newest).

    Safe to call on every start-up: a database already at ``revision`` is left as it
    is. Only sqlstore's tables and its version table ``sqlstore_alembic_version`` are
    touched, so the database may hold an application's own tables and Alembic history.

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
    with migration_connection(url_or_engine) as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        action(config)
        conn.commit()


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
