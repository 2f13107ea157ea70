"""Engines configured the way sqlstore works best."""

from __future__ import annotations

from typing import Any

import sqlalchemy
from sqlalchemy import Engine
from sqlalchemy.engine import URL

from .database import register, safe_url
from .dialects import strategy_for
from .pooling import BoundedQueuePool, Timeouts
from .urls import check_url

_AUTOCOMMIT = "AUTOCOMMIT"


def create_engine(
    url: str | URL,
    *,
    connect_timeout: float = 10.0,
    read_timeout: float = 60.0,
    sqlite_synchronous: str = "FULL",
    sqlite_busy_timeout: float = 30.0,
    **engine_options: Any,
) -> Engine:
    """Create an engine configured the way sqlstore works best.

    Connections run in autocommit mode (a single statement needs no ``BEGIN`` and
    ``COMMIT`` round trips; lock blocks open their own transactions), every wait for the
    server is bounded, and SQLite connections get WAL, ``synchronous`` and
    ``busy_timeout`` set. ``sqlite://`` (in memory) gives one database per engine,
    shared by every thread, one caller at a time.

    Args:
        url: A SQLAlchemy URL, e.g. ``postgresql+psycopg://user@host/db``,
            ``sqlite:///conversations.db`` or ``mysql+pymysql://root@host/db``. Behind
            PgBouncer (transaction pooling, before 1.21) add ``?prepare_threshold=none``.
        connect_timeout: Seconds to establish a connection (PostgreSQL rounds up to
            whole seconds, at least 2).
        read_timeout: Seconds to wait for the answer to one statement, beyond any lock
            wait the statement asks for. A server that stops answering costs a call
            this long, then ``DatabaseTimeoutError``.
        sqlite_synchronous: SQLite's ``PRAGMA synchronous`` (``FULL`` or ``NORMAL``).
        sqlite_busy_timeout: Seconds a SQLite write waits for another writer.
        **engine_options: Passed to :func:`sqlalchemy.create_engine`, overriding
            sqlstore's defaults (``pool_size``, ``max_overflow``, ``pool_timeout``,
            ``pool_recycle``...).

    Raises:
        UnsupportedDialectError: the URL names a database or driver sqlstore does not
            work with (see :func:`sqlstore.urls.check_url`); the message names the fix.
        DriverNotInstalledError: the driver is missing; the message names the extra.
        ValueError: an option is invalid.
    """
    url = check_url(url)
    timeouts = Timeouts(connect_timeout, read_timeout)
    strategy = strategy_for(
        url.get_backend_name(),
        sqlite_synchronous=sqlite_synchronous,
        sqlite_busy_timeout=sqlite_busy_timeout,
    )
    url, dialect_options = strategy.engine_options(url, engine_options)
    options: dict[str, Any] = {
        "isolation_level": _AUTOCOMMIT,
        # Every transaction sqlstore opens, it ends itself; a rollback on each pool
        # check-in would only add a round trip.
        "skip_autocommit_rollback": True,
        # The lock timeout bounds the wait for a free connection (see pooling).
        "poolclass": BoundedQueuePool,
        # The most recently used connection first: its server process and prepared
        # statements are warm, and spare connections can time out when idle.
        "pool_use_lifo": True,
        **dialect_options,
        **engine_options,
    }
    if "poolclass" in engine_options and "pool_use_lifo" not in engine_options:
        del options["pool_use_lifo"]  # another pool class may not take it
    connect_args = {
        **dialect_options.get("connect_args", {}),
        **engine_options.get("connect_args", {}),
    }
    if connect_args:
        options["connect_args"] = connect_args
    engine = sqlalchemy.create_engine(url, **options)
    register(engine, strategy, timeouts)
    return engine


__all__ = ["create_engine", "safe_url"]
