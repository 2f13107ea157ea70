"""PostgreSQL (psycopg 3): transaction-scoped advisory locks that wait in the server."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import URL

from ..errors import LockTimeoutError
from .base import DialectStrategy, timeout_ms

if TYPE_CHECKING:
    from ..session import Session

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
    insert = staticmethod(insert)

    def engine_options(self, url: URL) -> tuple[URL, dict[str, Any]]:
        """Take ``?prepare_threshold=`` out of the URL into psycopg's connect arguments.

        psycopg prepares a statement on the server after it ran 5 times on a connection.
        PgBouncer in transaction-pooling mode before 1.21 cannot route prepared
        statements; ``?prepare_threshold=none`` turns them off.
        """
        value = url.query.get("prepare_threshold")
        if value is None:
            return url, {}
        if isinstance(value, tuple):
            value = value[-1]
        threshold = None if value.lower() in ("none", "off", "") else int(value)
        return url.difference_update_query(["prepare_threshold"]), {
            "connect_args": {"prepare_threshold": threshold}
        }

    def enter_autocommit(self, dbapi_connection: Any) -> object | None:
        if dbapi_connection.autocommit:
            return None
        dbapi_connection.autocommit = True
        return False

    def leave_autocommit(self, dbapi_connection: Any, token: object) -> None:
        dbapi_connection.autocommit = token

    def begin_locked(self, session: Session, key: bytes, timeout: float) -> None:
        try:
            if timeout == 0:
                session.sql("BEGIN")
                self._try(session, key)
            else:
                # BEGIN and the lock in one round trip: with no parameters the driver
                # sends both statements at once (both values are integers we made).
                session.sql(f"BEGIN; {self._lock_sql(key, timeout)}")
        except BaseException as exc:
            session.sql("ROLLBACK")
            if isinstance(exc, Exception) and self.is_busy(exc):
                raise LockTimeoutError(f"lock not acquired within {timeout}s") from exc
            raise

    def acquire_nested(self, session: Session, key: bytes, timeout: float) -> None:
        if timeout == 0:
            self._try(session, key)
            return
        try:
            session.sql(self._lock_sql(key, timeout))
        except Exception as exc:
            if self.is_busy(exc):
                raise LockTimeoutError(f"lock not acquired within {timeout}s") from exc
            raise

    @staticmethod
    def _lock_sql(key: bytes, timeout: float) -> str:
        # The target list is evaluated left to right, so the timeout is in force when
        # the lock wait starts; SET LOCAL semantics end it with the transaction.
        return (
            f"SELECT set_config('lock_timeout', '{timeout_ms(timeout)}ms', true),"
            f" pg_advisory_xact_lock({advisory_key(key)})"
        )

    @staticmethod
    def _try(session: Session, key: bytes) -> None:
        if not session.sql(f"SELECT pg_try_advisory_xact_lock({advisory_key(key)})"):
            raise LockTimeoutError("lock is held by another session (timeout=0)")

    def is_transient(self, exc: BaseException) -> bool:
        code = getattr(exc, "sqlstate", None)
        if code is None:
            # psycopg raises OperationalError without a SQLSTATE when no server answers.
            return type(exc).__name__ == "OperationalError"
        return code in _TRANSIENT_CODES or code.startswith(_TRANSIENT_CLASSES)

    def is_busy(self, exc: BaseException) -> bool:
        return getattr(exc, "sqlstate", None) == _LOCK_NOT_AVAILABLE
