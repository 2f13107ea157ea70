"""MySQL and MariaDB (PyMySQL): ``GET_LOCK`` named locks, chunked large contents."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Connection, Insert, Select, Table, func
from sqlalchemy.dialects.mysql import insert

from ..errors import DatabaseError, LockTimeoutError
from .base import TABLES, DialectStrategy, check_partitions, schema_lock_key, timeout_seconds

if TYPE_CHECKING:
    from ..connection import PooledConnection

# Server and client error numbers worth one more try on a fresh connection:
# deadlock, server shutdown, connection killed, gone away, lost, cannot connect.
_TRANSIENT = frozenset({1213, 1053, 1927, 2006, 2013, 2003, 4031})
_LOCK_WAIT_TIMEOUT = 1205
# PyMySQL reports its own socket timeouts as "cannot connect" or "lost connection".
_CLIENT_TIMEOUTS = frozenset({2003, 2013})


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
    partitionable = True

    def connect_params(self, cparams: dict[str, Any], connect: float, read: float) -> None:
        cparams["connect_timeout"] = min(
            max(connect, 0.001), float(cparams.get("connect_timeout", connect))
        )
        cparams.setdefault("read_timeout", read)
        cparams.setdefault("write_timeout", read)

    def connect(self, dialect: Any, cargs: list[Any], cparams: dict[str, Any], read: float) -> Any:
        # PyMySQL's connect timeout covers the TCP connect only; waiting for the
        # server's greeting is part of connecting too, so bound it the same way.
        read_timeout = cparams["read_timeout"]
        greeting = {**cparams, "read_timeout": min(cparams["connect_timeout"], read_timeout)}
        connection = dialect.loaded_dbapi.connect(*cargs, **greeting)
        connection._read_timeout = read_timeout
        return connection

    def on_connect(self, dbapi_connection: Any) -> None:
        # READ COMMITTED, for single statements and lock blocks alike. A statement sees
        # what was committed before it, so a lock taken in the middle of a transaction
        # protects what is read after it; and the reads inside a write (its tree rules)
        # take no next-key locks, which at REPEATABLE READ made writes to unrelated
        # namespaces wait for each other's open lock blocks.
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
        finally:
            cursor.close()

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

    def to_db_time(self, value: datetime) -> datetime:
        # DATETIME keeps whole seconds and would round, not truncate.
        return value.astimezone(UTC).replace(tzinfo=None, microsecond=0)

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

    def begin(self, conn: PooledConnection) -> None:
        # The session runs at READ COMMITTED (see on_connect).
        conn.sql("START TRANSACTION")

    def begin_locked(self, conn: PooledConnection, key: bytes, timeout: float) -> None:
        self._acquire(conn, key, timeout)
        try:
            self.begin(conn)
        except BaseException:
            conn.sql("SELECT RELEASE_ALL_LOCKS()")
            raise

    def acquire_nested(self, conn: PooledConnection, key: bytes, timeout: float) -> None:
        self._acquire(conn, key, timeout)

    def _acquire(self, conn: PooledConnection, key: bytes, timeout: float) -> None:
        wait = timeout_seconds(timeout)
        # The wait happens in the server: the answer may take that much longer.
        with self.read_timeout(conn.dbapi, self.timeouts.read + wait):
            got = conn.sql(
                f"SELECT GET_LOCK({_LOCK_NAME}, %(timeout)s)", {"key": key.hex(), "timeout": wait}
            )
        if got == 1:
            return
        if got == 0:
            raise LockTimeoutError(f"lock not acquired within {timeout}s")
        raise DatabaseError(f"GET_LOCK failed (returned {got!r})")

    @contextmanager
    def read_timeout(self, dbapi_connection: Any, seconds: float | None) -> Iterator[None]:
        # PyMySQL takes its read timeout only at connect; it reads the attribute again
        # before every packet, which is the one way to change it for a statement.
        base = dbapi_connection._read_timeout
        dbapi_connection._read_timeout = seconds
        try:
            yield
        finally:
            dbapi_connection._read_timeout = base

    def end(self, conn: PooledConnection, *, commit: bool, keys: Iterable[bytes] = ()) -> None:
        try:
            conn.sql("COMMIT" if commit else "ROLLBACK")
        finally:
            if keys:
                conn.sql("SELECT RELEASE_ALL_LOCKS()")

    @contextmanager
    def schema_lock(self, conn: Connection, timeout: float) -> Iterator[None]:
        # A session lock: MySQL commits DDL at once, so each migration runs in
        # transactions of its own while this session holds the lock.
        name = f"sqlstore-ddl-{schema_lock_key(conn).hex()}"
        with self.read_timeout(conn.connection.dbapi_connection, None):
            got = conn.exec_driver_sql("SELECT GET_LOCK(%s, %s)", (name, timeout)).scalar()
        conn.commit()
        if got != 1:
            raise LockTimeoutError(f"another process kept migrating this database for {timeout}s")
        try:
            yield
        finally:
            conn.rollback()
            conn.exec_driver_sql("SELECT RELEASE_LOCK(%s)", (name,))
            conn.commit()

    def partitions(self, conn: Connection) -> int:
        found = conn.exec_driver_sql(
            "SELECT COUNT(*) FROM information_schema.partitions WHERE table_schema = DATABASE()"
            " AND table_name = 'sqlstore_files' AND partition_name IS NOT NULL"
        ).scalar_one()
        return int(found)

    def repartition(self, conn: Connection, count: int) -> None:
        # KEY partitioning hashes the namespace with the server's own function; every
        # unique key includes the namespace, and sqlstore has no foreign keys (which
        # partitioned InnoDB tables refuse).
        if check_partitions(count) == self.partitions(conn):
            return
        layout = f"PARTITION BY KEY (namespace) PARTITIONS {count}" if count else None
        for table in TABLES:
            if layout is None:
                conn.exec_driver_sql(f"ALTER TABLE {table} REMOVE PARTITIONING")
            else:
                conn.exec_driver_sql(f"ALTER TABLE {table} {layout}")

    def is_transient(self, exc: BaseException) -> bool:
        return _error_number(exc) in _TRANSIENT and not self.is_timeout(exc)

    def is_busy(self, exc: BaseException) -> bool:
        return _error_number(exc) == _LOCK_WAIT_TIMEOUT

    def is_timeout(self, exc: BaseException) -> bool:
        return _error_number(exc) in _CLIENT_TIMEOUTS and "timed out" in str(exc)


def _error_number(exc: BaseException) -> int | None:
    """The MySQL error number PyMySQL puts first in its exception's args."""
    args: tuple[object, ...] = exc.args
    return args[0] if args and isinstance(args[0], int) else None
