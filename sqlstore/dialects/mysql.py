"""MySQL and MariaDB (PyMySQL): ``GET_LOCK`` named locks, chunked large contents."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Insert, Select, Table, func
from sqlalchemy.dialects.mysql import insert

from ..errors import DatabaseError, LockTimeoutError
from .base import DialectStrategy, timeout_seconds

if TYPE_CHECKING:
    from ..session import Session

# Server and client error numbers worth one more try on a fresh connection:
# deadlock, server shutdown, connection killed, gone away, lost, cannot connect.
_TRANSIENT = frozenset({1213, 1053, 1927, 2006, 2013, 2003, 4031})
_LOCK_WAIT_TIMEOUT = 1205


# GET_LOCK names are server-wide, so the current database goes into the name too:
# 'sqlstore/' and 40 hex digits of SHA-256(database, key) = 49 of the 64 characters allowed.
_LOCK_NAME = "CONCAT('sqlstore/', LEFT(SHA2(CONCAT(DATABASE(), '/', %(key)s), 256), 40))"


class MySQLStrategy(DialectStrategy):
    """Locks are session-level ``GET_LOCK`` names, released after the transaction ends.

    ``max_allowed_packet`` (16 MiB by default on MariaDB) bounds a whole statement, so
    contents above :attr:`chunk_size` are stored as several rows.
    """

    names = ("mysql", "mariadb")
    chunk_size = 1 << 20
    max_content_size = 1 << 30
    insert = staticmethod(insert)

    def enter_autocommit(self, dbapi_connection: Any) -> object | None:
        if dbapi_connection.get_autocommit():
            return None
        dbapi_connection.autocommit(True)
        return False

    def leave_autocommit(self, dbapi_connection: Any, token: object) -> None:
        dbapi_connection.autocommit(token)

    def utc_now(self) -> ColumnElement[Any]:
        # NOW() follows the session's time zone; DATETIME columns keep no zone.
        return func.utc_timestamp()

    def upsert(
        self,
        table: Table,
        columns: Sequence[str],
        source: Select[Any],
        replace: Sequence[str],
        touch: str,
    ) -> Insert:
        stmt = insert(table).from_select(list(columns), source)
        values: dict[str, Any] = {name: stmt.inserted[name] for name in (*replace, touch)}
        return stmt.on_duplicate_key_update(values)

    def begin(self, session: Session, *, snapshot: bool = False) -> None:
        if snapshot:
            session.sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            session.sql("START TRANSACTION WITH CONSISTENT SNAPSHOT")
        else:
            # READ COMMITTED: a statement sees what was committed before it, so a lock
            # taken in the middle of a transaction protects what is read after it.
            session.sql("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            session.sql("START TRANSACTION")

    def begin_locked(self, session: Session, key: bytes, timeout: float) -> None:
        self._acquire(session, key, timeout)
        try:
            self.begin(session)
        except BaseException:
            session.sql("SELECT RELEASE_ALL_LOCKS()")
            raise

    def acquire_nested(self, session: Session, key: bytes, timeout: float) -> None:
        self._acquire(session, key, timeout)

    def _acquire(self, session: Session, key: bytes, timeout: float) -> None:
        got = session.sql(
            f"SELECT GET_LOCK({_LOCK_NAME}, %(timeout)s)",
            {"key": key.hex(), "timeout": timeout_seconds(timeout)},
        )
        if got == 1:
            return
        if got == 0:
            raise LockTimeoutError(f"lock not acquired within {timeout}s")
        raise DatabaseError(f"GET_LOCK failed (returned {got!r})")

    def end(self, session: Session, *, commit: bool, keys: Iterable[bytes] = ()) -> None:
        try:
            session.sql("COMMIT" if commit else "ROLLBACK")
        finally:
            if keys:
                session.sql("SELECT RELEASE_ALL_LOCKS()")

    def is_transient(self, exc: BaseException) -> bool:
        return _error_number(exc) in _TRANSIENT

    def is_busy(self, exc: BaseException) -> bool:
        return _error_number(exc) == _LOCK_WAIT_TIMEOUT


def _error_number(exc: BaseException) -> int | None:
    """The MySQL error number PyMySQL puts first in its exception's args."""
    args: tuple[object, ...] = exc.args
    return args[0] if args and isinstance(args[0], int) else None
