"""The interface every database dialect implements.

The generic store (:mod:`sqlstore.store`) and the connection layer
(:mod:`sqlstore.database`) name no database. Whatever differs between databases — how
a connection is opened and bounded in time, how a lock is taken and waited for, how an
upsert is spelled, how large a value may be, which driver errors mean what, how
timestamps are stored — lives in one module per dialect, behind
:class:`DialectStrategy`.

Connections run in autocommit mode, so a single statement is its own transaction and
costs no ``BEGIN``/``COMMIT`` round trips. Multi-statement work (a lock block, a
chunked write) opens an explicit transaction with :meth:`DialectStrategy.begin` or
:meth:`DialectStrategy.begin_locked` and ends it with :meth:`DialectStrategy.end`.
Literal SQL here is written in the dialect's DBAPI parameter style.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar, Self

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Insert,
    Select,
    Table,
    TextClause,
    bindparam,
    func,
    literal_column,
    text,
)
from sqlalchemy.engine import URL

from ..pooling import Timeouts

if TYPE_CHECKING:
    from ..connection import PooledConnection
    from ..deferral import Deferral, Params
    from ..statements import Statement

    #: A query a lock block runs right after taking its lock: its first row is the
    #: block's value (see :meth:`DialectStrategy.begin_locked_reading`).
    Read = tuple[Statement, Params]


class DialectStrategy(ABC):
    """How sqlstore drives one kind of database.

    Attributes:
        timeouts: The connect and read timeouts of the engine this strategy serves.
    """

    #: ``engine.dialect.name`` values this strategy serves.
    names: ClassVar[tuple[str, ...]]
    #: Contents longer than this are split into ``sqlstore_chunks`` rows; ``None``: never.
    chunk_size: ClassVar[int | None] = None
    #: Largest content the dialect stores, in bytes; a larger write raises ``FileTooLargeError``.
    max_content_size: ClassVar[int]
    #: The dialect's ``insert()`` construct (with its upsert clauses).
    insert: ClassVar[Any]
    #: Whether sqlstore's tables can be hash-partitioned by namespace.
    partitionable: ClassVar[bool] = False

    timeouts: Timeouts = Timeouts()
    #: Whether a connection keeps one cursor for its plain statements (where the driver
    #: makes cursors in Python and a cursor holds no server state once fetched).
    reuses_cursors: ClassVar[bool] = False
    #: Whether a connection keeps one cursor for the statements that return no rows
    #: (writes, deletes, ``BEGIN``, ``COMMIT``) and the queries of one row at most
    #: (:attr:`~sqlstore.statements.Statement.single_row`), where other reads make their
    #: own. ``sqlite3``: a cursor is cheaper kept than made, but a read left before its
    #: last row keeps its statement, and so a read snapshot, open until the cursor runs
    #: the next one.
    reuses_write_cursor: ClassVar[bool] = False
    #: Whether statements can travel ahead of their answers (see :meth:`deferral`).
    sends_ahead: ClassVar[bool] = False
    #: Whether the driver's connection runs a statement itself (``execute``, making and
    #: ending its cursor in C, as ``sqlite3`` does).
    connection_executes: ClassVar[bool] = False
    #: Whether the driver's connection runs statements without parameters with no
    #: cursor at all (sqlstore's ``simple(query: bytes)`` on psycopg connections it
    #: made): the cheapest way to open and end a lock block.
    simple_queries: ClassVar[bool] = False

    # -- engines and connections ---------------------------------------------------

    @classmethod
    def from_options(cls, **options: Any) -> Self:
        """A strategy configured by :func:`sqlstore.create_engine`'s dialect options.

        Each dialect takes the options named for it (``sqlite_*``) and ignores the rest.
        """
        return cls()

    def engine_options(self, url: URL, given: Mapping[str, Any]) -> tuple[URL, dict[str, Any]]:
        """The URL to connect with, and ``create_engine`` defaults this dialect wants.

        A dialect may take sqlstore's own query parameters out of the URL here; the
        caller's explicit options (``given``) override the returned defaults.

        Raises:
            ValueError: ``given`` holds an option this database cannot work with.
        """
        return url, {}

    def check_engine(self, engine: Engine) -> None:  # noqa: B027 - optional hook
        """Raise if an engine made elsewhere cannot work with sqlstore (e.g. its pool)."""

    def replaceable(self, url: URL) -> bool:
        """Whether a pooled connection may be closed and replaced by a new one.

        False where the connection is the database (SQLite in memory).
        """
        return True

    def connect_params(self, cparams: dict[str, Any], connect: float, read: float) -> None:  # noqa: B027
        """Put the connect and read timeouts into the driver's connect arguments.

        Args:
            cparams: The keyword arguments the driver's ``connect`` will get; changed in place.
            connect: Seconds connecting may take (already shortened to a caller's deadline).
            read: Seconds to wait for the answer to one statement.
        """

    def connect(self, dialect: Any, cargs: list[Any], cparams: dict[str, Any], read: float) -> Any:
        """Open a DBAPI connection, or return ``None`` to let SQLAlchemy open it."""
        return None

    def on_connect(self, dbapi_connection: Any) -> None:  # noqa: B027 - optional hook
        """Prepare a new DBAPI connection (session settings); called once per connection."""

    def keeps_plans(self, dbapi_connection: Any) -> bool:
        """Whether the server keeps query plans for the life of this connection.

        Such a connection is replaced after ever longer use (see
        :mod:`sqlstore.pooling`), so that its plans are made again for the tables as
        they have grown.
        """
        return False

    @contextmanager
    def read_timeout(self, dbapi_connection: Any, seconds: float | None) -> Iterator[None]:
        """Within the block, wait up to ``seconds`` for each answer (``None``: forever).

        For statements that wait in the server on purpose (a lock wait) or run long (a
        migration). Dialects without a read timeout (SQLite) have nothing to change.
        """
        yield

    @abstractmethod
    def enter_autocommit(self, dbapi_connection: Any) -> object | None:
        """Put a DBAPI connection in autocommit mode.

        Returns:
            ``None`` if it already was; else a token for :meth:`leave_autocommit`.
        """

    @abstractmethod
    def leave_autocommit(self, dbapi_connection: Any, token: object) -> None:
        """Restore the mode :meth:`enter_autocommit` changed."""

    # -- statements and time -------------------------------------------------------

    def utc_now(self) -> ColumnElement[Any]:
        """The database's current time, for ``created_at``/``updated_at``, in UTC."""
        return func.now()

    def name_as_text(self, column: ColumnElement[Any]) -> ColumnElement[Any]:
        """A file name column as a query returns it: text the driver gives as ``str``.

        Where the column is text already (PostgreSQL, SQLite), the column itself.
        """
        return column

    def to_db_time(self, value: datetime) -> datetime:
        """An aware ``datetime`` as this database stores timestamps (a bind value)."""
        return value.astimezone(UTC)

    def from_db_time(self, value: datetime) -> datetime:
        """A stored timestamp as an aware UTC ``datetime``."""
        if value.tzinfo is not None:
            return value.astimezone(UTC)
        return value.replace(tzinfo=UTC)

    def delete_subtree(self, types: Mapping[str, Any]) -> TextClause | None:
        """One statement deleting a path's file and every file below it, if not the generic one.

        ``None`` (the default): ``namespace = :ns AND (file_id = :fid OR parent in
        [:low, :high))``. Bind parameters and ``types`` as for :meth:`delete_with_chunks`.
        """
        return None

    def delete_with_chunks(self, types: Mapping[str, Any], *, subtree: bool) -> TextClause:
        """One statement deleting files and the chunks that continue them.

        Only dialects with a :attr:`chunk_size` implement it. Bind parameters: ``ns``;
        with ``subtree``, also ``fid`` (the path's own file) and ``low``/``high`` (the
        range of the files below it), typed by ``types``.
        """
        raise NotImplementedError(f"{self.names[0]} stores no chunks")

    def upsert(
        self,
        table: Table,
        columns: Sequence[str],
        source: Select[Any],
        replace: Sequence[str],
        touch: str,
    ) -> Insert:
        """``INSERT INTO table (columns) SELECT ...`` that overwrites an existing row.

        This is ``INSERT ... ON CONFLICT (primary key) DO UPDATE`` with the dialect's own
        :attr:`insert` construct; MySQL/MariaDB spell it differently.

        Args:
            table: The target table.
            columns: The columns ``source`` supplies, in its order.
            source: The rows to insert.
            replace: Columns that take the new row's values when the key exists.
            touch: A timestamp column that takes the new row's value when the key exists.
        """
        stmt = type(self).insert(table).from_select(list(columns), source)
        values: dict[str, Any] = {name: stmt.excluded[name] for name in (*replace, touch)}
        result: Insert = stmt.on_conflict_do_update(
            index_elements=list(table.primary_key), set_=values
        )
        return result

    # -- transactions and locks ----------------------------------------------------

    def begin(self, conn: PooledConnection) -> None:
        """Open an explicit transaction on an autocommit connection."""
        conn.sql("BEGIN")

    @abstractmethod
    def begin_locked(self, conn: PooledConnection, key: bytes, timeout: float) -> object:
        """Open a transaction that holds the lock ``key`` until :meth:`end`.

        Returns:
            A witness for :meth:`commit_outcome` (taken in the same round trip), or
            ``None`` if the dialect cannot tell a commit's outcome afterwards.

        Raises:
            LockTimeoutError: the lock was not acquired within ``timeout`` seconds. The
                connection is then left with no transaction open.
        """

    @abstractmethod
    def acquire_nested(self, conn: PooledConnection, key: bytes, timeout: float) -> None:
        """Take another lock inside a transaction opened by :meth:`begin_locked`.

        The caller has set a savepoint and rolls back to it if this raises.

        Raises:
            LockTimeoutError: not acquired within ``timeout`` seconds.
        """

    def begin_locked_reading(
        self, conn: PooledConnection, key: bytes, timeout: float, read: Read
    ) -> tuple[object, Sequence[Any] | None]:
        """:meth:`begin_locked`, then ``read`` in the new transaction (its first row).

        A dialect that can send the query with the lock does (one round trip): a lock
        block whose first act is a read (a fencing check) pays nothing for it.

        Returns:
            The witness, and the query's first row (converted), or ``None``.

        Raises:
            LockTimeoutError: as :meth:`begin_locked`; no transaction is left open.
        """
        witness = self.begin_locked(conn, key, timeout)
        try:
            row = conn.first(*read)
        except BaseException:
            self.abandon_locked(conn, key)
            raise
        return witness, row

    def abandon_locked(self, conn: PooledConnection, key: bytes) -> None:
        """Roll back a transaction :meth:`begin_locked` opened, before any block used it."""
        try:
            self.end(conn, commit=False, keys=(key,))
        except Exception as exc:  # its state is unknown: nobody else may have it
            conn.invalidate(exc)

    def enter_nested(
        self,
        conn: PooledConnection,
        savepoint: str,
        key: bytes | None,
        timeout: float,
        read: Read | None = None,
    ) -> Sequence[Any] | None:
        """Open a nested lock block: take ``key`` (if given), set ``savepoint``, run ``read``.

        The lock is taken in a savepoint of its own, released at once: a failed wait
        leaves the transaction usable (PostgreSQL aborts it otherwise), and a taken
        lock belongs to the enclosing transaction, so rolling the nested block back
        does not release it before the outermost block ends. A dialect that can send
        all of it at once does (one round trip).

        The caller rolls back to ``savepoint`` if this raises (its lock's savepoint, or
        the block's, have the same name).

        Returns:
            ``read``'s first row (converted), or ``None``.

        Raises:
            LockTimeoutError: ``key`` was not acquired within ``timeout`` seconds.
        """
        if key is not None:
            conn.sql(f"SAVEPOINT {savepoint}")
            self.acquire_nested(conn, key, timeout)
            conn.sql(f"RELEASE SAVEPOINT {savepoint}")
        conn.sql(f"SAVEPOINT {savepoint}")
        return None if read is None else conn.first(*read)

    def end(self, conn: PooledConnection, *, commit: bool, keys: Iterable[bytes] = ()) -> None:
        """Commit or roll back the open transaction, then release session-level locks."""
        conn.sql("COMMIT" if commit else "ROLLBACK")

    def routes_writes(self, conn: PooledConnection) -> bool:
        """Whether writes must go as statements routed whole to one node (Citus).

        Asked once per engine, with the schema check (see ``Statements.writes``).
        """
        return False

    def deferral(self, conn: PooledConnection, *, begin: bool) -> Deferral | None:
        """How ``conn`` sends statements ahead in a transaction, or ``None``: one at a time.

        Only asked where :attr:`sends_ahead` is true.

        Args:
            conn: The connection.
            begin: Whether the transaction is still to be opened (outside lock blocks);
                the deferral then opens it with what it sends first.
        """
        return None

    def commit_outcome(
        self, witness: object, ask: Callable[[str, Sequence[Any]], Any]
    ) -> bool | None:
        """Whether a lock block whose ``COMMIT`` went unanswered committed.

        The block's connection has been discarded (and what it ran ended in the server
        as far as the dialect can: a cancel, a ``KILL``).

        Args:
            witness: What :meth:`begin_locked` returned.
            ask: Runs one query (literal SQL, the driver's parameter style) on another
                connection and returns the first column of its first row.

        Returns:
            ``True``: it committed; ``False``: it did not and never will; ``None``:
            this cannot be told.
        """
        return None

    def after_commit(self, keys: Iterable[bytes]) -> list[str]:
        """Statements to run right after a lock block's ``COMMIT`` (releasing ``keys``)."""
        return []

    # -- schema changes ------------------------------------------------------------

    @contextmanager
    def schema_lock(self, conn: Connection, timeout: float) -> Iterator[None]:
        """Hold the database's schema lock: migrations of one database run one at a time.

        Args:
            conn: The migration's connection (a SQLAlchemy ``Connection``).
            timeout: Seconds to wait for another process's migration to end.

        Raises:
            LockTimeoutError: the lock was not free within ``timeout``.
        """
        yield

    def check_node(self, conn: Connection) -> None:  # noqa: B027 - optional hook
        """Raise before migrating a server that sqlstore must not use (a Citus worker).

        Raises:
            SchemaError: the server is a Citus worker; the message names the coordinator.
        """

    def lay_out(self, conn: Connection) -> None:  # noqa: B027 - optional hook
        """Lay the tables out as this server needs, after migrations ran in ``conn``'s transaction.

        On a Citus coordinator: distribute both tables by namespace, co-located
        (idempotent, and only once their keys lead with the namespace).
        """

    def before_key_change(self, conn: Connection) -> None:  # noqa: B027 - optional hook
        """Undo a layout that the primary keys of an older revision cannot carry (a downgrade)."""

    def node_problem(self, conn: PooledConnection) -> str | None:
        """Why sqlstore must not use this server (a Citus worker), or ``None``."""
        return None

    def layout(self, conn: Connection) -> str | None:
        """A line on how a distributed database lays the tables out, or ``None``."""
        return None

    # -- layout --------------------------------------------------------------------

    def partitions(self, conn: Connection) -> int:
        """How many hash partitions by namespace sqlstore's tables have (0: none)."""
        return 0

    def analyze(self) -> list[str]:
        """Statements that refresh the planner's statistics of sqlstore's tables.

        Run after a bulk change (a migration, an import, a copy).

        PostgreSQL needs them: with none, or with statistics from before a bulk load,
        its planner may scan a namespace through the primary key instead of the
        listing index (measured here: 0.34 ms instead of 0.02 ms for 1,100 files).
        """
        return []

    def check_layout(self, count: int) -> None:
        """Raise unless this database can have ``count`` hash partitions (0: none)."""
        if check_partitions(count) and not self.partitionable:
            raise ValueError(f"sqlstore cannot partition tables on {self.names[0]}")

    def repartition(self, conn: Connection, count: int) -> None:
        """Rebuild sqlstore's tables as ``count`` hash partitions by namespace (0: none).

        Runs in ``conn``'s transaction, copying every row; the tables are locked until
        it commits.

        Raises:
            ValueError: the database cannot partition tables, or ``count`` is invalid.
        """
        self.check_layout(count)

    # -- errors --------------------------------------------------------------------

    @abstractmethod
    def is_transient(self, exc: BaseException) -> bool:
        """Whether a driver error (other than a disconnect) may pass on a fresh connection."""

    def is_busy(self, exc: BaseException) -> bool:
        """Whether a driver error means a lock wait ran out (raised as ``LockTimeoutError``)."""
        return False

    def is_timeout(self, exc: BaseException) -> bool:
        """Whether a driver error means the server did not answer within a timeout."""
        return False

    def directory_refusal(self) -> ColumnElement[Any]:
        """The ``chunk_count`` value that fails a write whose path is a directory.

        One past the largest ``INTEGER``: out of range, an error whose code differs
        from the NOT NULL violation that refuses a write below a file.
        """
        return literal_column("2147483648")

    @abstractmethod
    def refused_rule(self, exc: BaseException) -> str | None:
        """The tree rule that refused a write, if ``exc`` is such a refusal.

        :data:`BELOW_A_FILE` or :data:`A_DIRECTORY`, told apart by the error's code
        alone (see :meth:`sqlstore.statements.Statements.write`).
        """

    @abstractmethod
    def is_missing_table(self, exc: BaseException) -> bool:
        """Whether a driver error means the table a statement names does not exist."""

    def is_disconnect(self, exc: BaseException, dbapi_connection: Any) -> bool:
        """Whether ``exc`` means the connection is gone (``dbapi_connection``: ``None`` if unknown).

        By the error's code and the connection's state, never by the message.
        """
        return False


#: The tree rules a write may break (see :meth:`DialectStrategy.refused_rule`).
BELOW_A_FILE = "below a file"
A_DIRECTORY = "a directory"

#: sqlstore's tables, in the order a layout change rebuilds them.
TABLES = ("sqlstore_files", "sqlstore_chunks")
#: The most hash partitions a layout may have.
MAX_PARTITIONS = 1024


def typed_text(sql: str, types: Mapping[str, Any], names: Iterable[str]) -> TextClause:
    """A ``text()`` statement whose bind parameters ``names`` get their ``types``."""
    return text(sql).bindparams(*(bindparam(name, type_=types[name]) for name in names))


def schema_lock_key(conn: Connection) -> bytes:
    """An 8-byte digest naming the schema lock of ``conn``'s database."""
    database = (conn.engine.url.database or "").encode("utf-8")
    return hashlib.blake2b(database, digest_size=8, person=b"sqlstore-ddl").digest()


def check_partitions(count: int) -> int:
    """``count`` if it is a valid number of partitions (0 meaning none), else raise."""
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_PARTITIONS:
        raise ValueError(f"partitions must be a whole number from 0 to {MAX_PARTITIONS}")
    return count


#: The longest wait any dialect accepts (PostgreSQL's lock_timeout is an int of ms).
MAX_WAIT_MS = 2**31 - 1


def timeout_seconds(timeout: float) -> float:
    """A lock timeout as a finite number of seconds; negative or infinite: the longest wait."""
    if timeout < 0 or math.isinf(timeout):
        return MAX_WAIT_MS / 1000
    return float(timeout)


def timeout_ms(timeout: float) -> int:
    """A lock timeout in whole milliseconds, at least 1 (0 means 'forever' to PostgreSQL)."""
    return min(MAX_WAIT_MS, max(1, round(timeout_seconds(timeout) * 1000)))
