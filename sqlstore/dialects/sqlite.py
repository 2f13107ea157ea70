"""SQLite (the standard library driver): ``BEGIN IMMEDIATE`` is the lock.

SQLite allows one writer per database file, so every lock block excludes every other
lock block and every write on that file, whatever its path. Readers never wait (WAL).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Self

from sqlalchemy import ColumnElement, Connection, Engine, func, literal_column
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.engine import URL

from ..errors import LockTimeoutError
from .base import A_DIRECTORY, BELOW_A_FILE, DialectStrategy, timeout_ms

if TYPE_CHECKING:
    from ..connection import PooledConnection

_SQLITE_ERROR = 1
_SQLITE_BUSY = 5
#: The tree rules' refusals (see Statements.write): SQLITE_CONSTRAINT_NOTNULL, SQLITE_TOOBIG.
_REFUSALS = {1299: BELOW_A_FILE, 18: A_DIRECTORY}
_SYNCHRONOUS = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})


def in_memory(url: URL) -> bool:
    """Whether ``url`` names an in-memory SQLite database (one per connection)."""
    database = url.database or ""
    if database in ("", ":memory:"):
        return True
    return database.startswith("file:") and "mode=memory" in database


class SQLiteStrategy(DialectStrategy):
    """Locks take the database's write lock; waiting is SQLite's ``busy_timeout``.

    Args:
        synchronous: ``PRAGMA synchronous``. ``FULL`` (the default) makes every commit
            durable across power loss, like PostgreSQL's default; ``NORMAL`` trades the
            last commits before a power loss for speed.
        busy_timeout: Seconds a write outside a lock block waits for the write lock.
    """

    names = ("sqlite",)
    max_content_size = 1_000_000_000  # SQLITE_MAX_LENGTH's default
    connection_executes = True
    reuses_write_cursor = True
    insert = staticmethod(insert)

    def __init__(self, synchronous: str = "FULL", busy_timeout: float = 30.0) -> None:
        if synchronous.upper() not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {sorted(_SYNCHRONOUS)}")
        self.synchronous = synchronous.upper()
        self.busy_timeout_ms = timeout_ms(busy_timeout)
        #: The busy timeout as given, if positive: a lock timeout equal to it needs no
        #: conversion to know it is the connection's own.
        self._busy_timeout = busy_timeout if busy_timeout > 0 else None

    @classmethod
    def from_options(cls, **options: Any) -> Self:
        return cls(
            synchronous=options.get("sqlite_synchronous", "FULL"),
            busy_timeout=options.get("sqlite_busy_timeout", 30.0),
        )

    def engine_options(self, url: URL, given: Mapping[str, Any]) -> tuple[URL, dict[str, Any]]:
        if not in_memory(url):
            return url, {}
        if "poolclass" in given:
            raise ValueError(
                "an in-memory SQLite database is its one connection: sqlstore pools it "
                "itself, so poolclass cannot be given"
            )
        # The database's only connection, lent to one caller at a time, any thread.
        return url, {
            "pool_size": 1,
            "max_overflow": 0,
            "connect_args": {"check_same_thread": False},
        }

    def check_engine(self, engine: Engine) -> None:
        if in_memory(engine.url):
            # SQLAlchemy pools an in-memory database per thread (or shares one connection
            # between threads at once): neither gives every caller the same database
            # with transactions kept apart.
            raise ValueError(
                "an in-memory SQLite engine made by sqlalchemy.create_engine gives each "
                "thread its own database or shares one connection between threads at once; "
                "make it with sqlstore.create_engine('sqlite://') (one database per engine)"
            )

    def replaceable(self, url: URL) -> bool:
        return not in_memory(url)

    def on_connect(self, dbapi_connection: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={self.synchronous}")
            cursor.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
        finally:
            cursor.close()

    def enter_autocommit(self, dbapi_connection: Any) -> object | None:
        previous: object = dbapi_connection.isolation_level
        if previous is None:
            return None
        dbapi_connection.isolation_level = None
        return previous

    def leave_autocommit(self, dbapi_connection: Any, token: object) -> None:
        dbapi_connection.isolation_level = token

    def to_db_time(self, value: datetime) -> datetime:
        # CURRENT_TIMESTAMP is naive UTC text.
        return value.astimezone(UTC).replace(tzinfo=None)

    def begin(self, conn: PooledConnection) -> None:
        # A deferred BEGIN that later writes fails at once with SQLITE_BUSY instead of
        # waiting; IMMEDIATE takes the write lock up front, under busy_timeout.
        conn.sql("BEGIN IMMEDIATE")

    def begin_locked(self, conn: PooledConnection, key: bytes, timeout: float) -> None:
        # The connection waits busy_timeout already; the SDK's 30 s lock timeout is the
        # default one: then the two PRAGMA statements are left out.
        wait = None
        if timeout != self._busy_timeout:
            wait = timeout_ms(timeout) if timeout != 0 else 0
            if wait == self.busy_timeout_ms:
                wait = None
            else:
                conn.sql(f"PRAGMA busy_timeout={wait}")
        try:
            conn.command("BEGIN IMMEDIATE")
        except Exception as exc:
            if self.is_busy(exc):
                raise LockTimeoutError(
                    f"database write lock not acquired within {timeout}s"
                ) from exc
            raise
        finally:
            if wait is not None:
                conn.sql(f"PRAGMA busy_timeout={self.busy_timeout_ms}")

    @contextmanager
    def schema_lock(self, conn: Connection, timeout: float) -> Iterator[None]:
        # The database's write lock, waited for under busy_timeout, held to the commit.
        conn.exec_driver_sql("BEGIN IMMEDIATE")
        yield

    def acquire_nested(self, conn: PooledConnection, key: bytes, timeout: float) -> None:
        """The transaction already holds the database's only write lock."""

    def end(self, conn: PooledConnection, *, commit: bool, keys: Iterable[bytes] = ()) -> None:
        conn.command("COMMIT" if commit else "ROLLBACK")

    def is_transient(self, exc: BaseException) -> bool:
        return False

    def directory_refusal(self) -> ColumnElement[Any]:
        # SQLite stores any integer in any column: a blob longer than any SQLite allows
        # (SQLITE_MAX_LENGTH is at most 2**31 - 1) fails with SQLITE_TOOBIG instead,
        # raised only if the CASE takes this branch. The store itself never sends a
        # value that large (max_content_size).
        return func.zeroblob(literal_column("2147483648"))

    def refused_rule(self, exc: BaseException) -> str | None:
        return _REFUSALS.get(getattr(exc, "sqlite_errorcode", None) or 0)

    def is_missing_table(self, exc: BaseException) -> bool:
        # SQLite reports a missing table with its generic result code, SQLITE_ERROR.
        return getattr(exc, "sqlite_errorcode", None) == _SQLITE_ERROR

    def is_busy(self, exc: BaseException) -> bool:
        code = getattr(exc, "sqlite_errorcode", None)
        return code is not None and code & 0xFF == _SQLITE_BUSY

    def is_disconnect(self, exc: BaseException, dbapi_connection: Any) -> bool:
        # Only a closed connection is gone (the database is a file in this process).
        if dbapi_connection is None:
            return False
        try:
            dbapi_connection.in_transaction  # noqa: B018 - raises once closed
        except sqlite3.ProgrammingError:
            return True
        return False
