"""PostgreSQL (psycopg 3): transaction-scoped advisory locks that wait in the server."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Insert, Select, Table
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import DBAPIError

from ..errors import LockTimeoutError
from .base import DialectStrategy, on_conflict_upsert, timeout_ms

# SQLSTATE classes and codes worth one more try on a fresh connection.
_TRANSIENT_CLASSES = ("08", "57P")  # connection exceptions, operator intervention
_TRANSIENT_CODES = frozenset({"40001", "40P01"})  # serialization failure, deadlock
_LOCK_NOT_AVAILABLE = "55P03"


def advisory_key(key: bytes) -> int:
    """The signed 64-bit advisory lock key for a lock digest (big-endian, explicit)."""
    return int.from_bytes(key[:8], "big", signed=True)


class PostgreSQLStrategy(DialectStrategy):
    """Locks are ``pg_advisory_xact_lock`` keys, released by ``COMMIT``/``ROLLBACK``.

    Transaction-scoped locks cannot leak to the next user of a pooled connection and
    keep working behind PgBouncer in transaction-pooling mode. The wait happens in the
    server under ``SET LOCAL lock_timeout``, which also bounds row-lock waits for the
    rest of the lock block.
    """

    names = ("postgresql",)
    max_content_size = (1 << 30) - 1  # bytea's limit
    lock_scope = "one (namespace, path) pair; other paths do not wait"

    def upsert(
        self,
        table: Table,
        columns: Sequence[str],
        source: Select[Any],
        replace: Sequence[str],
        touch: str,
    ) -> Insert:
        return on_conflict_upsert(insert, table, columns, source, replace, touch)

    def begin_locked(self, conn: Connection, key: bytes, timeout: float) -> None:
        conn.exec_driver_sql("BEGIN")
        try:
            self._acquire(conn, key, timeout)
        except BaseException:
            conn.exec_driver_sql("ROLLBACK")
            raise

    def acquire_nested(self, conn: Connection, key: bytes, timeout: float) -> None:
        self._acquire(conn, key, timeout)

    def _acquire(self, conn: Connection, key: bytes, timeout: float) -> None:
        params = {"key": advisory_key(key), "timeout": f"{timeout_ms(timeout)}ms"}
        if timeout <= 0:
            got = conn.exec_driver_sql(
                "SELECT pg_try_advisory_xact_lock(%(key)s)", params
            ).scalar_one()
            if not got:
                raise LockTimeoutError("lock is held by another session (timeout=0)")
            return
        try:
            # One round trip: the target list is evaluated left to right, so the
            # timeout is in force when the lock wait starts.
            conn.exec_driver_sql(
                "SELECT set_config('lock_timeout', %(timeout)s, true),"
                " pg_advisory_xact_lock(%(key)s)",
                params,
            )
        except DBAPIError as exc:
            if self.is_busy(exc):
                raise LockTimeoutError(f"lock not acquired within {timeout}s") from exc
            raise

    def is_transient(self, exc: DBAPIError) -> bool:
        if exc.connection_invalidated:
            return True
        code = getattr(exc.orig, "sqlstate", None)
        if code is None:
            # psycopg raises OperationalError without a SQLSTATE when no server answers.
            return type(exc.orig).__name__ == "OperationalError"
        return code in _TRANSIENT_CODES or code.startswith(_TRANSIENT_CLASSES)

    def is_busy(self, exc: DBAPIError) -> bool:
        return getattr(exc.orig, "sqlstate", None) == _LOCK_NOT_AVAILABLE
