"""MySQL and MariaDB (PyMySQL): ``GET_LOCK`` named locks, chunked large contents."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Insert,
    Select,
    Table,
    TextClause,
    cast,
    func,
)
from sqlalchemy.dialects.mysql import CHAR, insert

from ..deferral import Deferral, Params, StatementFailed
from ..errors import DatabaseError, LockTimeoutError
from .base import (
    A_DIRECTORY,
    BELOW_A_FILE,
    TABLES,
    DialectStrategy,
    check_partitions,
    schema_lock_key,
    timeout_seconds,
    typed_text,
)

if TYPE_CHECKING:
    from ..connection import PooledConnection
    from ..statements import Statement
    from .base import Read

# Server and client error numbers worth one more try on a fresh connection:
# deadlock, server shutdown, connection killed, gone away, lost, cannot connect.
_TRANSIENT = frozenset({1213, 1053, 1927, 2006, 2013, 2003, 4031})
_LOCK_WAIT_TIMEOUT = 1205
_NO_SUCH_TABLE = 1146
_MULTI_STATEMENTS = 1 << 16  # CLIENT_MULTI_STATEMENTS
#: Most bytes of SQL sent ahead in one packet (max_allowed_packet is 16 MiB by default
#: on MariaDB, and escaped binary content can take twice its size).
_BATCH_BYTES = 4 << 20
#: The tree rules' refusals (see Statements.write, and strict mode in on_connect):
#: ER_BAD_NULL_ERROR, ER_WARN_DATA_OUT_OF_RANGE.
_REFUSALS = {1048: BELOW_A_FILE, 1264: A_DIRECTORY}
#: The connection is gone: killed, gone away, lost, out of sync, ... (SQLAlchemy's list).
_GONE = frozenset({1927, 2006, 2013, 2014, 2045, 2055, 4031})
#: Longest wait to end a timed-out connection's server session from another connection.
_KILL_TIMEOUT = 5.0
# PyMySQL reports its own socket timeouts as "cannot connect" or "lost connection".
_CLIENT_TIMEOUTS = frozenset({2003, 2013})


# GET_LOCK names are server-wide, so the current database goes into the name too:
# 'sqlstore/' and 40 hex digits of SHA-256(database, key) = 49 of the 64 characters allowed.
_LOCK_NAME = "CONCAT('sqlstore/', LEFT(SHA2(CONCAT(DATABASE(), '/', '{key}'), 256), 40))"
#: Lock statements made so far, by key and wait (a store locks a handful of paths).
_LOCK_SQL_MAX = 4096
_lock_sql_made: dict[tuple[bytes, float, bool], str] = {}


def _lock_sql(key: bytes, wait: float, begin: bool) -> str:
    """``GET_LOCK`` of ``key`` for ``wait`` seconds, after ``START TRANSACTION`` if ``begin``.

    Literal SQL: the key goes in as hex digits, the wait as a float's ``repr``.
    """
    made = _lock_sql_made.get((key, wait, begin))
    if made is None:
        if len(_lock_sql_made) >= _LOCK_SQL_MAX:
            _lock_sql_made.clear()
        made = f"SELECT GET_LOCK({_LOCK_NAME.format(key=key.hex())}, {float(wait)!r})"
        if begin:
            made = f"START TRANSACTION; {made}"
        _lock_sql_made[key, wait, begin] = made
    return made


@cache
def _ending_connection() -> Any:
    """PyMySQL's ``Connection``, ending its server session when a read times out.

    PyMySQL closes the socket on a read timeout, but the server goes on with what it
    was sent: a lock block's writes and COMMIT travel in one packet, so a block whose
    write waited out the timeout (on a row lock, say) would commit after the caller was
    told it failed. ``KILL`` from a second connection ends the session first, and its
    transaction rolls back.

    Every answer read after connecting is read by one of the two methods wrapped here
    (a statement's results, ``next_result`` included; an OK packet: ``COMMIT()``,
    ``ping``, autocommit). They run once per answer, where PyMySQL's ``_read_bytes``
    runs twice per packet: twice per row of a result.
    """
    import pymysql

    class EndingConnection(pymysql.connections.Connection):  # type: ignore[misc]
        #: Connect parameters for the second connection; set by sqlstore.
        kill_params: dict[str, Any] | None = None

        def _read_query_result(self, unbuffered: bool = False) -> int:
            try:
                found: int = super()._read_query_result(unbuffered)
            except pymysql.err.OperationalError as exc:
                self._timed_out(exc)
                raise
            return found

        def _read_ok_packet(self) -> Any:
            try:
                return super()._read_ok_packet()
            except pymysql.err.OperationalError as exc:
                self._timed_out(exc)
                raise

        def _timed_out(self, exc: BaseException) -> None:
            # PyMySQL raises its socket's TimeoutError as "lost connection", from
            # inside the handler: the timeout is the error's context.
            if self.kill_params is not None and isinstance(exc.__context__, TimeoutError):
                _kill(self.kill_params, self.server_thread_id[0])

    return EndingConnection


def _kill(params: dict[str, Any], thread_id: int) -> None:
    """End server session ``thread_id``, if the server lets us in time (else nothing)."""
    import pymysql

    with contextlib.suppress(Exception):
        side = pymysql.connect(**params)
        try:
            with side.cursor() as cursor:
                cursor.execute(f"KILL {int(thread_id)}")
        finally:
            side.close()


class BatchDeferral(Deferral):
    """Deferred statements queued, then sent in one multi-statement packet.

    They go with the next read (before it, one round trip) or with the ``COMMIT``
    and what follows it (one round trip for all). MySQL runs the statements of a
    packet in order and stops at the first that fails.

    A lock block's deferral is kept on its connection for the next block (it holds
    nothing between blocks), with one cursor for writing out and sending statements.
    """

    def __init__(self, conn: PooledConnection, *, begin: bool) -> None:
        self._conn = conn
        self._queued: list[str] = ["START TRANSACTION"] if begin else []
        self._labels: list[str | None] = [None] if begin else []
        self._size = 0
        self._cursor: Any = None

    def defer(self, statement: Statement, params: Params, label: str | None) -> None:
        sql = self.mogrify(statement.sql, statement.args(params))
        if self._size + len(sql) > _BATCH_BYTES:
            self._send()
        self._queued.append(sql)
        self._labels.append(label)
        self._size += len(sql)

    def before_read(self) -> None:
        self._send()

    def settle(self) -> None:
        self._send()

    def commit(self, then: Sequence[str] = ()) -> None:
        self._send(("COMMIT", *then))
        if self._conn.deferral is self:
            self._conn.deferral = None

    def discard(self) -> None:
        self._queued, self._labels, self._size = [], [], 0
        if self._conn.deferral is self:
            self._conn.deferral = None

    def ask(self, tail: Sequence[str]) -> list[Any]:
        """Send what is queued, then ``tail``, in one packet; the first row of each of ``tail``.

        ``None`` for a statement of ``tail`` that returns no rows.

        Raises:
            StatementFailed: a statement failed (a queued one: with its label).
        """
        rows: list[Any] = []
        self._send(tail, rows)
        return rows

    def mogrify(self, sql: str, params: Any) -> str:
        """``sql`` with ``params`` written in as literals, as PyMySQL sends every statement."""
        return str(self._kept_cursor().mogrify(sql, params))

    def _kept_cursor(self) -> Any:
        """The cursor this deferral writes out and sends statements with (made once)."""
        cursor = self._cursor
        if cursor is None:
            cursor = self._cursor = self._conn.dbapi.cursor()
        return cursor

    def _send(self, tail: Sequence[str] = (), rows: list[Any] | None = None) -> None:
        """Send what is queued, then ``tail``; the first rows of ``tail`` into ``rows``."""
        queued, labels = self._queued, self._labels
        if queued:
            self._queued, self._labels, self._size = [], [], 0
            sql = "; ".join([*queued, *tail])
        elif tail:
            sql = "; ".join(tail)
        else:
            return
        cursor = self._kept_cursor()
        done = 0
        try:
            cursor.execute(sql)
            if rows is None:
                done = 1
                while cursor.nextset():
                    done += 1
            else:
                first_of_tail = len(queued)
                while True:
                    if done >= first_of_tail:
                        rows.append(None if cursor.description is None else cursor.fetchone())
                    done += 1
                    if not cursor.nextset():
                        break
        except Exception as exc:
            # A cursor of unknown state: the next statement gets a new one.
            self._cursor = None
            with contextlib.suppress(Exception):
                cursor.close()
            # The statement that failed: one queued, else one of the tail (no label).
            raise StatementFailed(exc, labels[done] if done < len(labels) else None) from exc


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
    # PyMySQL's cursors are Python objects (made, then closed by draining their
    # results: a dozen calls), and its default cursor reads a result whole: once
    # fetched, it holds nothing on the server.
    reuses_cursors = True
    sends_ahead = True

    def connect_params(self, cparams: dict[str, Any], connect: float, read: float) -> None:
        cparams["connect_timeout"] = min(
            max(connect, 0.001), float(cparams.get("connect_timeout", connect))
        )
        cparams.setdefault("read_timeout", read)
        cparams.setdefault("write_timeout", read)
        # Several statements in one packet: a lock block's writes travel with its
        # COMMIT, in one round trip (see BatchDeferral). PyMySQL escapes every value
        # client-side, as it always does, so no value can end a statement.
        cparams["client_flag"] = int(cparams.get("client_flag", 0)) | _MULTI_STATEMENTS
        # Names come back as utf8mb4 text (see name_as_text): a connection in another
        # character set would have the server convert them, and lose what it cannot
        # represent. sqlstore sends every other value as bytes.
        cparams["charset"] = "utf8mb4"

    def connect(self, dialect: Any, cargs: list[Any], cparams: dict[str, Any], read: float) -> Any:
        # PyMySQL's connect timeout covers the TCP connect only; waiting for the
        # server's greeting is part of connecting too, so bound it the same way.
        read_timeout = cparams["read_timeout"]
        greeting = {**cparams, "read_timeout": min(cparams["connect_timeout"], read_timeout)}
        connection = _ending_connection()(*cargs, **greeting)
        connection._read_timeout = read_timeout
        bound = min(read_timeout, _KILL_TIMEOUT)
        connection.kill_params = {
            **cparams,
            "connect_timeout": bound,
            "read_timeout": bound,
            "write_timeout": bound,
            "client_flag": cparams["client_flag"] & ~_MULTI_STATEMENTS,
        }
        return connection

    def on_connect(self, dbapi_connection: Any) -> None:
        # READ COMMITTED, for single statements and lock blocks alike. A statement sees
        # what was committed before it, so a lock taken in the middle of a transaction
        # protects what is read after it; and the reads inside a write (its tree rules)
        # take no next-key locks, which at REPEATABLE READ made writes to unrelated
        # namespaces wait for each other's open lock blocks.
        # Strict mode: a NULL in a NOT NULL column is an error (a tree rule refusing a
        # write, see statements.REFUSALS), never quietly an empty value.
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            cursor.execute(
                "SET SESSION sql_mode = CONCAT_WS(',', @@SESSION.sql_mode, 'STRICT_ALL_TABLES')"
            )
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

    def name_as_text(self, column: ColumnElement[Any]) -> ColumnElement[Any]:
        # Names are stored as VARBINARY (see BytewiseString), which PyMySQL returns as
        # bytes; decoding them in Python cost a call or two per row of a listing.
        # Cast to text in the query, PyMySQL decodes them in its own loop over the
        # columns, as it does for every text column. The connection's character set is
        # utf8mb4 (see connect_params), so the server sends them unchanged.
        return cast(column, CHAR(charset="utf8mb4"))

    def to_db_time(self, value: datetime) -> datetime:
        # DATETIME keeps whole seconds and would round, not truncate.
        return value.astimezone(UTC).replace(tzinfo=None, microsecond=0)

    def delete_with_chunks(self, types: Mapping[str, Any], *, subtree: bool) -> TextClause:
        # MySQL deletes from several tables in one statement; the join finds exactly
        # the chunks of the files deleted (a file's chunks share its key).
        where = "f.namespace = :ns"
        if subtree:
            where += " AND (f.file_id = :fid OR (f.parent >= :low AND f.parent < :high))"
        return typed_text(
            "DELETE f, c FROM sqlstore_files AS f LEFT JOIN sqlstore_chunks AS c"
            f" ON c.namespace = f.namespace AND c.file_id = f.file_id WHERE {where}",
            types,
            ("ns", "fid", "low", "high") if subtree else ("ns",),
        )

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
        # The transaction and the lock in one round trip, on the connection's kept
        # cursor: with no parameters PyMySQL sends the SQL as it is (every value in it
        # is one we made: the key's hex digits and a number of seconds).
        wait = timeout_seconds(timeout)
        dbapi = conn.dbapi
        base = dbapi._read_timeout
        # The wait happens in the server: the answer may take that much longer
        # (read_timeout, written out: this runs on every lock).
        dbapi._read_timeout = self.timeouts.read + wait
        try:
            (got,) = conn.first_of_last(_lock_sql(key, wait, True), 2)
        except BaseException:
            # The transaction may be open (the lock failed after it): never leave it.
            self.abandon_locked(conn, key)
            raise
        finally:
            dbapi._read_timeout = base
        if got != 1:
            # The transaction opened anyway; the lock was not taken (or failed).
            self.abandon_locked(conn, key)
            self._refuse(got, timeout)

    def acquire_nested(self, conn: PooledConnection, key: bytes, timeout: float) -> None:
        wait = timeout_seconds(timeout)
        dbapi = conn.dbapi
        base = dbapi._read_timeout
        dbapi._read_timeout = self.timeouts.read + wait  # the wait is in the server
        try:
            (got,) = conn.first_of_last(_lock_sql(key, wait, False), 1)
        finally:
            dbapi._read_timeout = base
        self._refuse(got, timeout)

    def begin_locked_reading(
        self, conn: PooledConnection, key: bytes, timeout: float, read: Read
    ) -> tuple[object, Sequence[Any] | None]:
        # The lock, the transaction and the read in one packet: one round trip. The
        # read runs after GET_LOCK has answered (in order), so under the lock.
        if conn.observer is not None:
            return super().begin_locked_reading(conn, key, timeout, read)
        # The deferral the block takes next, sending its first packet.
        packet = _spare(conn)
        try:
            got, _, found = self._locking(
                conn,
                packet,
                timeout,
                [_lock_sql(key, timeout_seconds(timeout), False), "START TRANSACTION"],
                read,
            )
        except BaseException:
            self.abandon_locked(conn, key)
            raise
        if got is None or got[0] != 1:
            self.abandon_locked(conn, key)
            self._refuse(None if got is None else got[0], timeout)
        return None, None if found is None else read[0].convert(found)

    def enter_nested(
        self,
        conn: PooledConnection,
        savepoint: str,
        key: bytes | None,
        timeout: float,
        read: Read | None = None,
    ) -> Sequence[Any] | None:
        # GET_LOCK failing leaves the transaction as it was: the lock needs no savepoint
        # of its own. The savepoint, the lock and the read go in one packet, after the
        # statements queued before them: one round trip.
        deferral = conn.deferral
        if not isinstance(deferral, BatchDeferral):
            return super().enter_nested(conn, savepoint, key, timeout, read)
        head = [f"SAVEPOINT {savepoint}"]
        if key is not None:
            head.append(_lock_sql(key, timeout_seconds(timeout), False))
        rows = self._locking(conn, deferral, timeout if key is not None else 0, head, read)
        if key is not None:
            got = rows[1]
            self._refuse(None if got is None else got[0], timeout)
        found = rows[-1] if read is not None else None
        return None if found is None or read is None else read[0].convert(found)

    def _locking(
        self,
        conn: PooledConnection,
        packet: BatchDeferral,
        timeout: float,
        head: list[str],
        read: Read | None,
    ) -> list[Any]:
        """``head``, then ``read``, sent by ``packet``; the first rows (``ask``)."""
        statements = list(head)
        if read is not None:
            statements.append(packet.mogrify(read[0].sql, read[0].args(read[1])))
        wait = timeout_seconds(timeout) if timeout else 0
        # A lock wait happens in the server: the answer may take that much longer
        # (read_timeout, written out).
        dbapi = conn.dbapi
        base = dbapi._read_timeout
        dbapi._read_timeout = self.timeouts.read + wait
        try:
            return packet.ask(statements)
        finally:
            dbapi._read_timeout = base

    @staticmethod
    def _refuse(got: Any, timeout: float) -> None:
        if got == 1:
            return
        if got == 0:
            raise LockTimeoutError(f"lock not acquired within {timeout}s")
        raise DatabaseError(f"GET_LOCK failed (returned {got!r})")

    def deferral(self, conn: PooledConnection, *, begin: bool) -> Deferral | None:
        if begin:  # a multi-statement transaction outside lock blocks (chunked writes)
            return BatchDeferral(conn, begin=True)
        return _spare(conn)

    def after_commit(self, keys: Iterable[bytes]) -> list[str]:
        return ["SELECT RELEASE_ALL_LOCKS()"] if keys else []

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

    def refused_rule(self, exc: BaseException) -> str | None:
        # The error number alone: the message is in the server's language (lc_messages).
        return _REFUSALS.get(_error_number(exc) or 0)

    def is_missing_table(self, exc: BaseException) -> bool:
        return _error_number(exc) == _NO_SUCH_TABLE

    def is_timeout(self, exc: BaseException) -> bool:
        # PyMySQL raises its socket's TimeoutError as "cannot connect" or "lost
        # connection", from inside the handler: the timeout is the error's context.
        return _error_number(exc) in _CLIENT_TIMEOUTS and _caused_by_timeout(exc)

    def is_disconnect(self, exc: BaseException, dbapi_connection: Any) -> bool:
        if _error_number(exc) in _GONE:
            return True
        # PyMySQL's error on a connection it had already closed has no number (0).
        return dbapi_connection is not None and not dbapi_connection.open


def _spare(conn: PooledConnection) -> BatchDeferral:
    """The lock blocks' deferral kept on ``conn`` (it holds nothing between blocks)."""
    spare = conn.spare
    if not isinstance(spare, BatchDeferral):
        spare = conn.spare = BatchDeferral(conn, begin=False)
    return spare


def _error_number(exc: BaseException) -> int | None:
    """The MySQL error number PyMySQL puts first in its exception's args."""
    args: tuple[object, ...] = exc.args
    return args[0] if args and isinstance(args[0], int) else None


def _caused_by_timeout(exc: BaseException) -> bool:
    """Whether a socket timeout is among the exceptions ``exc`` was raised from."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            return False
        seen = seen.__cause__ or seen.__context__ or getattr(seen, "original_exception", None)
        if isinstance(seen, TimeoutError):
            return True
    return False
