"""SQLite (the standard library driver): ``BEGIN IMMEDIATE`` is the lock.

SQLite allows one writer per database file, so every lock block excludes every other
lock block and every write on that file, whatever its path. Readers never wait (WAL).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Insert, Select, Table
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError

from ..errors import LockTimeoutError
from .base import DialectStrategy, on_conflict_upsert, timeout_ms

_SQLITE_BUSY = 5
_SYNCHRONOUS = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})


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
    lock_scope = "the whole database file: SQLite has one writer at a time"

    def __init__(self, synchronous: str = "FULL", busy_timeout: float = 30.0) -> None:
        if synchronous.upper() not in _SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {sorted(_SYNCHRONOUS)}")
        self.synchronous = synchronous.upper()
        self.busy_timeout_ms = timeout_ms(busy_timeout)

    def engine_options(self, url: URL) -> dict[str, Any]:
        return {}

    def on_connect(self, dbapi_connection: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={self.synchronous}")
            cursor.execute(f"PRAGMA busy_timeout={self.busy_timeout_ms}")
        finally:
            cursor.close()

    def upsert(
        self,
        table: Table,
        columns: Sequence[str],
        source: Select[Any],
        replace: Sequence[str],
        touch: str,
    ) -> Insert:
        return on_conflict_upsert(insert, table, columns, source, replace, touch)

    def begin(self, conn: Connection, *, snapshot: bool = False) -> None:
        # A deferred BEGIN that later writes fails at once with SQLITE_BUSY instead of
        # waiting; IMMEDIATE takes the write lock up front, under busy_timeout.
        conn.exec_driver_sql("BEGIN" if snapshot else "BEGIN IMMEDIATE")

    def begin_locked(self, conn: Connection, key: bytes, timeout: float) -> None:
        conn.exec_driver_sql(f"PRAGMA busy_timeout={timeout_ms(timeout) if timeout > 0 else 0}")
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except DBAPIError as exc:
            if self.is_busy(exc):
                raise LockTimeoutError(
                    f"database write lock not acquired within {timeout}s"
                ) from exc
            raise
        finally:
            conn.exec_driver_sql(f"PRAGMA busy_timeout={self.busy_timeout_ms}")

    def acquire_nested(self, conn: Connection, key: bytes, timeout: float) -> None:
        """The transaction already holds the database's only write lock."""

    def is_transient(self, exc: DBAPIError) -> bool:
        return False

    def is_busy(self, exc: DBAPIError) -> bool:
        code = getattr(exc.orig, "sqlite_errorcode", None)
        if code is not None:
            return bool(code & 0xFF == _SQLITE_BUSY)
        return "database is locked" in str(exc.orig)
