"""PostgreSQL (psycopg 3): transaction-scoped advisory locks that wait in the server."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from functools import cache
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, TextClause
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import URL

from .. import forking
from ..deferral import Deferral, Params
from ..errors import LockTimeoutError, SchemaError
from . import citus
from .base import (
    A_DIRECTORY,
    BELOW_A_FILE,
    TABLES,
    DialectStrategy,
    check_partitions,
    schema_lock_key,
    timeout_ms,
    timeout_seconds,
    typed_text,
)
from .pgqueue import QueueDeferral, statuses

if TYPE_CHECKING:
    from ..connection import PooledConnection
    from ..statements import Statement
    from .base import Read

# SQLSTATE classes and codes worth one more try on a fresh connection.
_TRANSIENT_CLASSES = ("08", "57P")  # connection exceptions, operator intervention
_TRANSIENT_CODES = frozenset({"40001", "40P01"})  # serialization failure, deadlock
_LOCK_NOT_AVAILABLE = "55P03"
#: Plans cached per connection, except on Citus (see ``on_connect``): one round trip.
_PLAN_MODE = (
    "SELECT set_config('plan_cache_mode', CASE WHEN EXISTS"
    " (SELECT FROM pg_extension WHERE extname = 'citus')"
    " THEN 'auto' ELSE 'force_generic_plan' END, false)"
)
_UNDEFINED_TABLE = "42P01"
#: The tree rules' refusals (see Statements.write): not_null_violation, numeric_value_out_of_range.
_REFUSALS = {"23502": BELOW_A_FILE, "22003": A_DIRECTORY}
#: The server ended the session: admin_shutdown, crash_shutdown, cannot_connect_now.
_SERVER_GONE = frozenset({"57P01", "57P02", "57P03"})
#: libpq's (and psycopg's) shortest connect timeout.
_MIN_CONNECT_TIMEOUT = 2
#: Longest wait for a cancel request to be delivered, after a read timeout; also the
#: longest wait for a block whose COMMIT went unanswered to be seen ended.
_CANCEL_TIMEOUT = 5.0
#: Seconds between two looks at such a block's transaction status.
_STATUS_POLL = 0.05
#: The statements that open a lock block, by lock key and timeout (most blocks lock a
#: path locked before: the SDK's event log); emptied when it holds this many.
_BEGIN_SQL_MAX = 4096
_begin_sql: dict[tuple[bytes, float], str] = {}


def advisory_key(key: bytes) -> int:
    """The signed 64-bit advisory lock key for a lock digest (big-endian, explicit)."""
    return int.from_bytes(key[:8], "big", signed=True)


@cache
def _timed_connection() -> Any:
    """The psycopg ``Connection`` class with a read timeout on every wait for the server.

    psycopg waits for the server in ``Connection.wait``, which takes a timeout that its
    cursors never pass; libpq itself has no read timeout. A server that accepted the
    connection and then stopped answering would hang a call forever.
    """
    import psycopg
    from psycopg import capabilities, errors
    from psycopg.generators import execute

    wait_timeout: type[Exception] = errors._WaitTimeout
    failed = statuses()[1]

    def send_and_fetch(pgconn: Any, query: bytes) -> Any:
        """Send ``query`` and fetch its results, as one generator.

        So the send is made inside ``wait`` too, behind its fork guard, as a cursor's is.
        """
        pgconn.send_query(query)
        return (yield from execute(pgconn))

    class TimedConnection(psycopg.Connection[Any]):
        #: Seconds to wait for the server in any one wait; set by sqlstore.
        read_timeout: float | None = None

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            #: The fork generation of the process that opened it (see sqlstore.forking).
            self.generation = forking.generation
            #: Statements sqlstore prepared on it by name (see sqlstore.dialects.pgqueue).
            self.prepared_names: dict[tuple[bytes, tuple[int, ...]], bytes] = {}
            #: Names given so far: a name is never given twice on a connection.
            self.names_given = 0
            # When psycopg forgets its own prepared statements, sqlstore forgets its own
            # too: psycopg saw them dropped (DISCARD ALL, DEALLOCATE ALL), or will drop
            # them all itself (see _deallocate). As names are never reused, a statement
            # prepared in between is only prepared once more later.
            manager: Any = getattr(self, "_prepared", None)
            clear = getattr(manager, "clear", None)
            if callable(clear):
                names = self.prepared_names

                def clear_too() -> bool:
                    names.clear()
                    return bool(clear())

                manager.clear = clear_too

        def _deallocate(self, name: bytes | None) -> Any:
            # psycopg deallocates every prepared statement (after a ROLLBACK TO
            # SAVEPOINT, a DROP, a DISCARD ALL it ran): sqlstore's are gone then too.
            if name is None:
                self.prepared_names.clear()
            return (yield from super()._deallocate(name))

        def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
            if self.generation != forking.generation:
                # A forked child never talks on its parent's connection, whatever asks:
                # a pipeline the child's garbage collector finalises would otherwise
                # end the parent's pipeline on the parent's socket.
                raise psycopg.OperationalError("the connection belongs to another process")
            try:
                limit = self.read_timeout if timeout is None else timeout
                return super().wait(gen, interval, limit)
            except wait_timeout:
                # Ask the server to cancel what it runs: a statement still waiting there
                # (on a row lock, say) then fails, and its transaction rolls back with all
                # that was sent after it. Else a lock block's writes and COMMIT, sent
                # together, could commit after the caller was told the block failed. Only
                # where libpq bounds the cancel's own wait (17 and later).
                bound = min(limit or _CANCEL_TIMEOUT, _CANCEL_TIMEOUT)
                if capabilities.has_cancel_safe():
                    try:
                        self.cancel_safe(timeout=bound)
                    except Exception:
                        pass
                    else:
                        # The cancel only reached the server's postmaster. Wait (bounded)
                        # for the server's answer to what it was cancelling: once it came,
                        # the statement has ended there, and on Citus the coordinator has
                        # also cancelled its part on a worker (it does so while aborting,
                        # before it answers). Without this wait a worker's write could
                        # still land after the caller was told it timed out.
                        with contextlib.suppress(Exception):
                            super().wait(gen, interval, bound)
                # The protocol is mid-exchange: this connection can never be used again.
                self.pgconn.finish()
                raise ServerTimeout(
                    f"the server did not answer within {self.read_timeout} s (read_timeout)"
                ) from None

        def simple(self, query: bytes) -> list[Any]:
            """Run ``query``, statements without parameters, by the simple query protocol.

            What psycopg's own ``commit()`` does underneath, without a cursor: one round
            trip, with the results as libpq gives them (``PGresult``), waited for here,
            so under the read timeout. A cursor's ``execute`` costs about 60k client
            instructions, this about 15k: every lock block opens and ends this way. The
            first failed statement's error is raised as a cursor raises it. Not in
            pipeline mode (a pipeline orders every statement itself).
            """
            pgconn = self.pgconn
            if pgconn.pipeline_status:
                raise psycopg.ProgrammingError("simple() is not for pipeline mode")
            results: list[Any] = self.wait(send_and_fetch(pgconn, query))
            for result in results:
                if result.status == failed:
                    raise errors.error_from_result(result, encoding=self.info.encoding)
            return results

    class ServerTimeout(psycopg.OperationalError):
        """The server did not answer within the read timeout."""

    TimedConnection.ServerTimeout = ServerTimeout  # type: ignore[attr-defined]
    return TimedConnection


def _literal(conn: PooledConnection, statement: Statement, params: Params) -> str:
    """``statement`` with its parameters written in as literals, escaped by psycopg.

    For a query that travels with others in one simple query (which takes no
    parameters).
    """
    from psycopg import ClientCursor

    with ClientCursor(conn.dbapi) as cursor:
        return cursor.mogrify(statement.sql, statement.args(params))


class PostgreSQLStrategy(DialectStrategy):
    """Locks are ``pg_advisory_xact_lock`` keys, released by ``COMMIT``/``ROLLBACK``.

    Transaction-scoped locks cannot leak to the next user of a pooled connection and
    keep working behind PgBouncer in transaction-pooling mode. The wait happens in the
    server under ``SET LOCAL lock_timeout``, which also bounds row-lock waits for the
    rest of the lock block.
    """

    names = ("postgresql",)
    reuses_cursors = True
    sends_ahead = True
    simple_queries = True
    max_content_size = (1 << 30) - 1  # bytea's limit
    insert = staticmethod(insert)
    partitionable = True

    def engine_options(self, url: URL, given: Mapping[str, Any]) -> tuple[URL, dict[str, Any]]:
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

    def connect_params(self, cparams: dict[str, Any], connect: float, read: float) -> None:
        given = cparams.get("connect_timeout")
        limit = connect if given is None else min(connect, float(given))
        cparams["connect_timeout"] = max(_MIN_CONNECT_TIMEOUT, math.ceil(limit))

    def connect(self, dialect: Any, cargs: list[Any], cparams: dict[str, Any], read: float) -> Any:
        connection = _timed_connection().connect(*cargs, **cparams)
        connection.read_timeout = read
        return connection

    def on_connect(self, dbapi_connection: Any) -> None:
        # psycopg prepares a statement once it ran 5 times on a connection. By default
        # PostgreSQL then still plans each execution for its values while it judges a
        # generic plan no cheaper; for sqlstore's statements (index lookups and ranges
        # on the namespace) the generic plan is the same, and planning the listing
        # union each time cost more than running it (measured here: a listing of 100
        # children took 640 us with per-call plans, 190 us with the cached plan).
        #
        # Citus cannot make a distributed plan of a generic plan whose statement has a
        # subquery or a modifying CTE (the write, the listing, the subtree delete). On a
        # Citus coordinator PostgreSQL chooses (`auto`): Citus prices the generic plans
        # it cannot run out of reach, so those are planned per call for their values,
        # and the simple lookups keep a generic plan that Citus routes at run time.
        # Measured there (bench.citus), per-call plans for everything did no better
        # (0.5x-1.1x of this, within the test machine's noise).
        with dbapi_connection.cursor() as cursor:
            cursor.execute(_PLAN_MODE)
        if not dbapi_connection.autocommit:  # an engine not in autocommit mode
            dbapi_connection.commit()

    def delete_subtree(self, types: Mapping[str, Any]) -> TextClause:
        # Two deletes, each on one index: the file by its key, the files below it by the
        # listing index. With the two conditions OR-ed in one, a plan made without
        # statistics read the whole namespace through the primary key on every delete.
        return typed_text(
            "WITH own AS (DELETE FROM sqlstore_files WHERE namespace = :ns AND file_id = :fid)"
            " DELETE FROM sqlstore_files"
            " WHERE namespace = :ns AND parent >= :low AND parent < :high",
            types,
            ("ns", "fid", "low", "high"),
        )

    def keeps_plans(self, dbapi_connection: Any) -> bool:
        # psycopg prepares statements unless told not to (PgBouncer before 1.21);
        # unprepared ones are planned on every run.
        return dbapi_connection.prepare_threshold is not None

    def enter_autocommit(self, dbapi_connection: Any) -> object | None:
        if dbapi_connection.autocommit:
            return None
        dbapi_connection.autocommit = True
        return False

    def leave_autocommit(self, dbapi_connection: Any, token: object) -> None:
        dbapi_connection.autocommit = token

    def begin_locked(self, conn: PooledConnection, key: bytes, timeout: float) -> object:
        # BEGIN, the lock and the transaction's id in one round trip: with no parameters
        # the driver sends the statements at once (every value is one we made). The id
        # tells later whether a COMMIT that went unanswered landed (commit_outcome).
        try:
            if timeout == 0:
                got, xid = conn.first_of_last(self._begin_locked_sql(key, timeout), 2)
                if not got:
                    raise LockTimeoutError("lock is held by another session (timeout=0)")
                return xid
            # The lock wait may take the whole timeout in the server (inlined
            # _patient: this runs on every lock).
            dbapi = conn.dbapi
            base = getattr(dbapi, "read_timeout", None)
            dbapi.read_timeout = self.timeouts.read + timeout_seconds(timeout)
            try:
                (xid,) = conn.first_of_last(self._begin_locked_sql(key, timeout), 2, 2)
                if xid is not None:
                    xid = bytes(xid).decode()
            finally:
                dbapi.read_timeout = base
            return xid
        except BaseException as exc:
            conn.rollback_quietly()
            if isinstance(exc, Exception) and self.is_busy(exc):
                raise LockTimeoutError(f"lock not acquired within {timeout}s") from exc
            raise

    def begin_locked_reading(
        self, conn: PooledConnection, key: bytes, timeout: float, read: Read
    ) -> tuple[object, Sequence[Any] | None]:
        # BEGIN, the lock with the transaction's id, and the read in one simple query:
        # one round trip, and less work here than a pipeline of three. The server runs
        # them in order; a failed lock wait skips the read.
        statement, params = read
        try:
            with self._patient(conn, timeout):
                _, locked, found = self._results(
                    conn,
                    f"{self._begin_locked_sql(key, timeout)}; {_literal(conn, statement, params)}",
                )
            if locked is None or (timeout == 0 and not locked[0]):
                raise LockTimeoutError("lock is held by another session (timeout=0)")
        except BaseException as exc:
            conn.rollback_quietly()
            if isinstance(exc, Exception) and self.is_busy(exc):
                raise LockTimeoutError(f"lock not acquired within {timeout}s") from exc
            raise
        return locked[-1], None if found is None else statement.convert(found)

    def enter_nested(
        self,
        conn: PooledConnection,
        savepoint: str,
        key: bytes | None,
        timeout: float,
        read: Read | None = None,
    ) -> Sequence[Any] | None:
        # The savepoints, the lock and the read in one round trip: one simple query, or
        # where statements were sent ahead and their answers are still to come, in the
        # block's pipeline after them. A failed wait aborts the transaction and skips
        # the rest; the caller's ROLLBACK TO the lock's savepoint repairs it.
        head = [f"SAVEPOINT {savepoint}"]
        if key is not None:
            if timeout == 0:
                head.append(f"SELECT pg_try_advisory_xact_lock({advisory_key(key)})")
            else:
                head.append(self._lock_sql(key, timeout))
            head += [f"RELEASE SAVEPOINT {savepoint}", f"SAVEPOINT {savepoint}"]
        deferral = conn.deferral
        try:
            with self._patient(conn, 0 if key is None else timeout):
                if isinstance(deferral, QueueDeferral) and deferral.sending:
                    tail: list[tuple[str | Statement, Params]] = [(sql, None) for sql in head]
                    if read is not None:
                        tail.append(read)
                    rows = deferral.ask(tail)
                else:
                    if deferral is not None:
                        deferral.settle()  # nothing is waiting for an answer: no I/O
                    if read is not None:
                        head.append(_literal(conn, *read))
                    rows = self._results(conn, "; ".join(head))
        except Exception as exc:
            if self.is_busy(exc):
                raise LockTimeoutError(f"lock not acquired within {timeout}s") from exc
            raise
        if key is not None and timeout == 0 and not (rows[1] or (False,))[0]:
            raise LockTimeoutError("lock is held by another session (timeout=0)")
        found = rows[-1] if read is not None else None
        return None if found is None or read is None else read[0].convert(found)

    @staticmethod
    def _results(conn: PooledConnection, sql: str) -> list[Any]:
        """The first row of each result of ``sql`` (``None`` where it has none): one round trip."""
        cursor = conn.dbapi.cursor()
        try:
            conn.run_on(cursor, sql)
            rows = []
            while True:
                rows.append(None if cursor.description is None else cursor.fetchone())
                if not cursor.nextset():
                    return rows
        finally:
            cursor.close()

    def deferral(self, conn: PooledConnection, *, begin: bool) -> Deferral | None:
        if begin:
            # A transaction outside lock blocks (a routed write, a transfer): its BEGIN
            # goes with what it sends first.
            return QueueDeferral(conn, begin=True)
        spare = conn.spare
        if spare is None:
            spare = conn.spare = QueueDeferral(conn)
        return spare

    def commit_outcome(
        self, witness: object, ask: Callable[[str, Sequence[Any]], Any]
    ) -> bool | None:
        # The timed-out connection asked the server to cancel what it ran, then closed:
        # the transaction ends as soon as the server sees either. Until then its status
        # is 'in progress'; it may also stay so while the cancel never arrived (libpq
        # before 17 sends none) and a row lock holds the statement: then nobody knows.
        if witness is None:
            return None
        deadline = time.monotonic() + min(self.timeouts.read, _CANCEL_TIMEOUT)
        while True:
            status = ask("SELECT pg_xact_status(%s::xid8)", (witness,))
            if status == "committed":
                return True
            if status == "aborted":
                return False
            if status is None or time.monotonic() >= deadline:
                return None  # still in progress, or too old to be known
            time.sleep(_STATUS_POLL)

    def acquire_nested(self, conn: PooledConnection, key: bytes, timeout: float) -> None:
        if timeout == 0:
            self._try(conn, key)
            return
        try:
            with self._patient(conn, timeout):
                conn.sql(self._lock_sql(key, timeout))
        except Exception as exc:
            if self.is_busy(exc):
                raise LockTimeoutError(f"lock not acquired within {timeout}s") from exc
            raise

    @contextmanager
    def read_timeout(self, dbapi_connection: Any, seconds: float | None) -> Iterator[None]:
        base = getattr(dbapi_connection, "read_timeout", None)
        dbapi_connection.read_timeout = seconds
        try:
            yield
        finally:
            dbapi_connection.read_timeout = base

    def _patient(self, conn: PooledConnection, wait: float) -> AbstractContextManager[None]:
        """Let one statement that waits ``wait`` seconds in the server take that much longer."""
        return self.read_timeout(conn.dbapi, self.timeouts.read + timeout_seconds(wait))

    def _begin_locked_sql(self, key: bytes, timeout: float) -> str:
        """``BEGIN``, then the lock and the transaction's id in one row (two statements).

        The lock is tried once where ``timeout`` is 0. Made once per key and timeout.
        """
        made = _begin_sql.get((key, timeout))
        if made is None:
            if len(_begin_sql) >= _BEGIN_SQL_MAX:
                _begin_sql.clear()
            if timeout == 0:
                lock = f"SELECT pg_try_advisory_xact_lock({advisory_key(key)})"
            else:
                lock = self._lock_sql(key, timeout)
            made = f"BEGIN; {lock}, pg_current_xact_id()::text"
            _begin_sql[key, timeout] = made
        return made

    @classmethod
    def _lock_sql(cls, key: bytes, timeout: float) -> str:
        return cls._lock_sql_key(advisory_key(key), timeout)

    @staticmethod
    def _lock_sql_key(key: int, timeout: float) -> str:
        # The target list is evaluated left to right, so the timeout is in force when
        # the lock wait starts; SET LOCAL semantics end it with the transaction.
        return (
            f"SELECT set_config('lock_timeout', '{timeout_ms(timeout)}ms', true),"
            f" pg_advisory_xact_lock({key})"
        )

    @staticmethod
    def _try(conn: PooledConnection, key: bytes) -> None:
        """Take ``key`` if it is free at once (in a transaction already open)."""
        if not conn.sql(f"SELECT pg_try_advisory_xact_lock({advisory_key(key)})"):
            raise LockTimeoutError("lock is held by another session (timeout=0)")

    @contextmanager
    def schema_lock(self, conn: Connection, timeout: float) -> Iterator[None]:
        # Transaction-scoped (safe behind PgBouncer): the migrations then run inside
        # this transaction, and its commit releases the lock.
        key = int.from_bytes(schema_lock_key(conn), "big", signed=True)
        try:
            conn.exec_driver_sql(self._lock_sql_key(key, timeout))
        except Exception as exc:
            if self.is_busy(getattr(exc, "orig", exc)):
                raise LockTimeoutError(
                    f"another process kept migrating this database for {timeout}s"
                ) from exc
            raise
        yield

    def node_problem(self, conn: PooledConnection) -> str | None:
        rows = _pooled_rows(conn)
        return citus.worker_problem(rows) if citus.installed(rows) else None

    def routes_writes(self, conn: PooledConnection) -> bool:
        # On a Citus coordinator: its INSERT ... SELECT goes through the coordinator and
        # commits in two phases (see Statements.writes).
        return citus.installed(_pooled_rows(conn))

    def check_node(self, conn: Connection) -> None:
        rows = _rows(conn)
        problem = citus.worker_problem(rows) if citus.installed(rows) else None
        if problem is not None:
            raise SchemaError(f"{conn.engine.url.render_as_string(hide_password=True)}: {problem}")

    def lay_out(self, conn: Connection) -> None:
        rows = _rows(conn)
        if citus.installed(rows):
            citus.distribute(rows)

    def before_key_change(self, conn: Connection) -> None:
        rows = _rows(conn)
        if citus.installed(rows):
            citus.undistribute(rows)

    def layout(self, conn: Connection) -> str | None:
        rows = _rows(conn)
        if not citus.installed(rows):
            return None
        return citus.layout(rows).describe()

    def partitions(self, conn: Connection) -> int:
        found = conn.exec_driver_sql(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = to_regclass('sqlstore_files')"
        ).scalar_one()
        return int(found)

    def repartition(self, conn: Connection, count: int) -> None:
        # A table cannot become partitioned in place: each is renamed aside, recreated
        # with the same columns (collations, defaults, compression), keys and indexes,
        # refilled and dropped. PARTITION OF copies the parent's column settings.
        if check_partitions(count) == self.partitions(conn):
            return
        if count and citus.installed(_rows(conn)):
            raise ValueError(
                "sqlstore does not hash-partition tables on Citus: they are distributed "
                "by namespace over the workers' shards instead"
            )
        version = conn.dialect.server_version_info or (0,)
        compression = " INCLUDING COMPRESSION" if version >= (14,) else ""
        partitioned = " PARTITION BY HASH (namespace)" if count else ""
        for table in TABLES:
            old = f"_old_{table}"
            primary_key = conn.exec_driver_sql(
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint"
                f" WHERE conrelid = to_regclass('{table}') AND contype = 'p'"
            ).one()
            indexes = conn.exec_driver_sql(
                "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i"
                " JOIN pg_class c ON c.oid = i.indexrelid"
                f" WHERE i.indrelid = to_regclass('{table}') AND NOT i.indisprimary"
            ).all()
            parts = conn.exec_driver_sql(
                "SELECT inhrelid::regclass::text FROM pg_inherits"
                f" WHERE inhparent = to_regclass('{table}')"
            ).scalars()
            conn.exec_driver_sql(f"ALTER TABLE {table} RENAME TO {old}")
            conn.exec_driver_sql(
                f"ALTER TABLE {old} RENAME CONSTRAINT {primary_key[0]} TO _old_{primary_key[0]}"
            )
            for name, _ in indexes:
                conn.exec_driver_sql(f"ALTER INDEX {name} RENAME TO _old_{name}")
            for part in list(parts):
                conn.exec_driver_sql(f"ALTER TABLE {part} RENAME TO _old_{part}")
            conn.exec_driver_sql(
                f"CREATE TABLE {table} (LIKE {old} INCLUDING DEFAULTS INCLUDING STORAGE"
                f"{compression}){partitioned}"
            )
            conn.exec_driver_sql(
                f"ALTER TABLE {table} ADD CONSTRAINT {primary_key[0]} {primary_key[1]}"
            )
            for _, definition in indexes:
                # The definition names the table as it was; ON ONLY is a partitioned parent's.
                conn.exec_driver_sql(definition.replace(" ON ONLY ", " ON "))
            for i in range(count):
                conn.exec_driver_sql(
                    f"CREATE TABLE {table}_p{i} PARTITION OF {table}"
                    f" FOR VALUES WITH (MODULUS {count}, REMAINDER {i})"
                )
            conn.exec_driver_sql(f"INSERT INTO {table} SELECT * FROM {old}")
            conn.exec_driver_sql(f"DROP TABLE {old}")
        for statement in self.analyze():
            conn.exec_driver_sql(statement)

    def analyze(self) -> list[str]:
        return [f"ANALYZE {table}" for table in TABLES]

    def is_transient(self, exc: BaseException) -> bool:
        code = getattr(exc, "sqlstate", None)
        if code is None:
            # psycopg raises OperationalError without a SQLSTATE when no server answers.
            import psycopg

            return isinstance(exc, psycopg.OperationalError)
        return code in _TRANSIENT_CODES or code.startswith(_TRANSIENT_CLASSES)

    def is_busy(self, exc: BaseException) -> bool:
        return getattr(exc, "sqlstate", None) == _LOCK_NOT_AVAILABLE

    def refused_rule(self, exc: BaseException) -> str | None:
        # The SQLSTATE alone: Citus reports a shard's error with its SQLSTATE but
        # without the column and table fields.
        return _REFUSALS.get(getattr(exc, "sqlstate", None) or "")

    def is_missing_table(self, exc: BaseException) -> bool:
        return getattr(exc, "sqlstate", None) == _UNDEFINED_TABLE

    def is_timeout(self, exc: BaseException) -> bool:
        from psycopg.errors import ConnectionTimeout

        server_timeout: type[Exception] = _timed_connection().ServerTimeout
        return isinstance(exc, ConnectionTimeout | server_timeout)

    def is_disconnect(self, exc: BaseException, dbapi_connection: Any) -> bool:
        if dbapi_connection is not None and (dbapi_connection.closed or dbapi_connection.broken):
            return True
        code = getattr(exc, "sqlstate", None)
        return code is not None and (code.startswith("08") or code in _SERVER_GONE)


def _pooled_rows(conn: PooledConnection) -> citus.Rows:
    """``rows(sql)`` on a pooled connection (see :mod:`sqlstore.dialects.citus`)."""

    def rows(sql: str) -> Any:
        with conn.dbapi.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchall()

    return rows


def _rows(conn: Connection) -> citus.Rows:
    """Literal SQL on a migration's connection, returning its rows."""
    return lambda sql: conn.exec_driver_sql(sql).all()
