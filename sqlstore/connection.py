"""A pooled DBAPI connection checked out by sqlstore, and the statements run on it.

Stores borrow a :class:`PooledConnection` for each call (or keep one for a lock block)
and give it back at once, so thousands of stores share an engine's few connections.
It is the lowest layer: it runs what it is given and knows nothing of retries or of
which errors mean what (that is :mod:`sqlstore.database`).

Statements whose answer nobody waits for — the writes and deletes of a lock block or
of a multi-statement transaction — are handed to :meth:`PooledConnection.defer`. Where
the dialect can send statements ahead (:class:`Deferral`: PostgreSQL's pipeline mode,
MySQL's multi-statement packets), they are queued and travel with the ``COMMIT`` (or
just before the next statement that needs an answer): one round trip for all of them. A
deferred statement that fails is reported then, as
:class:`~sqlstore.deferral.StatementFailed`.

Observed connections: where the engine has connection event listeners
(``before_cursor_execute``, ``after_cursor_execute``, ``handle_error``... as
OpenTelemetry's, Sentry's and Datadog's SQLAlchemy integrations add) or logs its
statements (``echo=True``, or the ``sqlalchemy.engine`` logger at INFO), every
statement fires them (:mod:`sqlstore.observing`), with a SQLAlchemy ``Connection``
wrapped around the same pooled connection (:attr:`PooledConnection.observer`), its SQL
and its parameters, in order. Nothing is then sent ahead: a deferred statement runs
when it is deferred. Without listeners or logging, statements go straight to the
driver's cursor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection
from sqlalchemy.pool import PoolProxiedConnection

from . import forking, observing, pooling
from .deferral import Deferral, Params, StatementFailed
from .statements import Statement

if TYPE_CHECKING:
    from .dialects import DialectStrategy

__all__ = ["Deferral", "Params", "PooledConnection", "StatementFailed"]


class PooledConnection:
    """One checked-out connection in autocommit mode. One thread uses it at a time.

    Attributes:
        raw: SQLAlchemy's proxy of the pooled DBAPI connection.
        in_block: Whether it carries a lock block's transaction (then
            :meth:`transaction` adds nothing: the block commits or rolls back whole).
        deferral: How deferred statements travel now; ``None``: one at a time.
        observer: The SQLAlchemy ``Connection`` statements run through while the
            engine has event listeners or logs statements; ``None``: straight to the
            driver.
        pool: The pool to park this connection on when a call ends (see
            :mod:`sqlstore.pooling`); ``None``: it is checked in.
        statements_left: Statements it may run before it is checked in rather than parked.
    """

    __slots__ = (
        "_dbapi",
        "_kept",
        "_restore",
        "_strategy",
        "_writer",
        "closed",
        "deferral",
        "in_block",
        "observer",
        "pool",
        "raw",
        "simple",
        "spare",
        "statements",
        "statements_left",
    )

    def __init__(self, raw: PoolProxiedConnection, strategy: DialectStrategy) -> None:
        self.raw = raw
        dbapi: Any = raw.dbapi_connection
        self._dbapi = dbapi
        # One cursor for the plain statements of this checkout and of the calls that
        # reuse it parked, where the driver makes cursors in Python (psycopg: a cursor
        # made and closed per statement cost more than the rest of the call).
        self._kept: Any = dbapi.cursor() if strategy.reuses_cursors else None
        #: The cursor for statements that return no rows: the kept one, or one of their
        #: own where only those reuse a cursor (DialectStrategy.reuses_write_cursor).
        self._writer: Any = (
            self._kept
            if self._kept is not None or not strategy.reuses_write_cursor
            else dbapi.cursor()
        )
        #: The driver connection's way to run statements without parameters and with
        #: no cursor (see DialectStrategy.simple_queries), where it has one; only for
        #: statements nobody observes.
        self.simple: Callable[[bytes], list[Any]] | None = (
            getattr(dbapi, "simple", None) if strategy.simple_queries else None
        )
        self._strategy = strategy
        self.closed = False
        self.in_block = False
        self.deferral: Deferral | None = None
        #: A dialect's deferral kept for the next block on this connection (it holds no
        #: state between blocks), so a block does not make one.
        self.spare: Deferral | None = None
        self.observer: Connection | None = None
        self.pool: pooling.BoundedQueuePool | None = None
        self.statements_left = 0
        #: Statements run so far (see :func:`sqlstore.pooling.count_statements`).
        self.statements = 0
        # Engines not created in autocommit mode get it for the duration of the
        # checkout, and their original mode back on return.
        self._restore = strategy.enter_autocommit(raw.dbapi_connection)

    @property
    def autocommit_native(self) -> bool:
        """Whether the connection was in autocommit mode already (nothing to restore)."""
        return self._restore is None

    @property
    def dbapi(self) -> Any:
        """The driver's connection object."""
        return self.raw.dbapi_connection

    def defer(self, statement: Statement, params: Params = None, label: str | None = None) -> None:
        """Run a write or delete whose answer the caller does not wait for.

        Without a :attr:`deferral` it runs at once. Either way a failure is raised as
        :class:`StatementFailed`, carrying ``label``.
        """
        self.statements += 1
        if self.deferral is not None:
            self.deferral.defer(statement, params, label)
            return
        kept = self._writer
        if kept is not None and self.observer is None:
            try:
                kept.execute(statement.sql, statement.driver_args(params))
            except Exception as exc:
                self._drop_kept()
                raise StatementFailed(exc, label) from exc
            except BaseException:
                self._drop_kept()
                raise
            return
        if self.observer is None and self._strategy.connection_executes:
            try:
                self._dbapi.execute(statement.sql, statement.driver_args(params))
            except Exception as exc:
                raise StatementFailed(exc, label) from exc
            return
        cursor = self._dbapi.cursor()  # not the proxy's: a call less
        try:
            args = statement.driver_args(params)
            if self.observer is not None:
                observing.execute(self.observer, cursor, statement.sql, args)
            else:
                cursor.execute(statement.sql, args)
        except Exception as exc:
            raise StatementFailed(exc, label) from exc
        finally:
            cursor.close()

    def execute(self, statement: Statement, params: Params = None) -> Any:
        """Run a compiled statement; returns the DBAPI cursor (closed by the caller)."""
        self.statements += 1
        if self.deferral is not None:
            self.deferral.before_read()
        cursor = self._dbapi.cursor()  # not the proxy's: a call less
        try:
            args = statement.driver_args(params)
            if self.observer is not None:
                observing.execute(self.observer, cursor, statement.sql, args)
            else:
                cursor.execute(statement.sql, args)
        except BaseException:
            cursor.close()
            raise
        return cursor

    def run_on(self, cursor: Any, sql: str, params: Any = None) -> None:
        """``cursor.execute(sql, params)`` on this connection's cursor, observed if need be.

        For statements a dialect runs on a cursor of its own (several results).
        """
        if self.observer is not None:
            observing.execute(self.observer, cursor, sql, params)
        elif params is None:
            cursor.execute(sql)
        else:
            cursor.execute(sql, params)

    def rowcount(self, statement: Statement, params: Params = None) -> int:
        """Run a DML statement and return the number of rows it changed."""
        cursor = self.execute(statement, params)
        try:
            count: int = cursor.rowcount
            return count
        finally:
            cursor.close()

    def execute_many(self, statement: Statement, rows: Sequence[Mapping[str, Any]]) -> None:
        """Run a DML statement once per parameter set (the driver's ``executemany``)."""
        self.statements += len(rows)
        if self.deferral is not None:
            self.deferral.settle()
        cursor = self._dbapi.cursor()  # not the proxy's: a call less
        try:
            args: list[Any] = [statement.args(row) for row in rows]
            if self.observer is not None:
                observing.execute(self.observer, cursor, statement.sql, args, many=True)
            else:
                cursor.executemany(statement.sql, args)
        finally:
            cursor.close()

    def first(self, statement: Statement, params: Params = None) -> Sequence[Any] | None:
        """Run a query and return its first row, converted, or ``None``."""
        kept = self._kept
        if kept is None and statement.single_row:
            # A query of one row at most is finished once that row is fetched: it keeps
            # no read snapshot open on the cursor for statements that return no rows.
            kept = self._writer
        if kept is not None and self.observer is None:
            # In a transaction with statements sent ahead too: they are answered before
            # the read (see Deferral.before_read).
            self.statements += 1
            if self.deferral is not None:
                self.deferral.before_read()
            try:
                kept.execute(statement.sql, statement.driver_args(params))
                found = kept.fetchone()
            except BaseException:
                self._drop_kept()
                raise
            if found is None or statement.plain:
                return found  # type: ignore[no-any-return]
            return statement.convert(found)
        cursor = self.execute(statement, params)
        try:
            row = cursor.fetchone()
        finally:
            cursor.close()
        if row is None or statement.plain:
            return row  # type: ignore[no-any-return]
        return statement.convert(row)

    def _drop_kept(self) -> None:
        """Make new cursors for the next statements: a kept one's state is unknown."""
        kept, writer = self._kept, self._writer
        self._kept = self._writer = None
        for cursor in (kept, writer):
            if cursor is not None:
                with contextlib.suppress(Exception):  # the statement's error is what counts
                    cursor.close()

    def all(self, statement: Statement, params: Params = None) -> list[Sequence[Any]]:
        """Run a query and return all rows, converted."""
        kept = self._kept
        if kept is not None and self.observer is None:
            # In a transaction with statements sent ahead too: they are answered before
            # the read (see Deferral.before_read).
            self.statements += 1
            if self.deferral is not None:
                self.deferral.before_read()
            try:
                kept.execute(statement.sql, statement.driver_args(params))
                found: list[Sequence[Any]] = kept.fetchall()
            except BaseException:
                self._drop_kept()
                raise
            return found if statement.plain else [statement.convert(row) for row in found]
        cursor = self.execute(statement, params)
        try:
            rows: list[Sequence[Any]] = cursor.fetchall()
        finally:
            cursor.close()
        return rows if statement.plain else [statement.convert(row) for row in rows]

    def sql(self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> Any:
        """Run literal SQL written in the driver's parameter style, waiting for its answer.

        Returns:
            The first column of the first row, if the statement returns rows.
        """
        if self.deferral is not None:
            self.deferral.settle()
        cursor = self._dbapi.cursor()  # not the proxy's: a call less
        try:
            if self.observer is not None:
                observing.execute(self.observer, cursor, sql, params)
            elif params is None:
                cursor.execute(sql)
            else:
                cursor.execute(sql, params)
            if cursor.description is None:
                return None
            row = cursor.fetchone()
            return None if row is None else row[0]
        finally:
            cursor.close()

    def command(self, sql: str) -> None:
        """Run literal SQL with no parameters and no result wanted (``COMMIT``, say).

        The cheapest way there is: the connection's kept cursor, else a cursor of the
        driver's own, observed if need be.
        """
        if self.deferral is not None:
            self.deferral.settle()
        if self.observer is None:
            simple = self.simple
            if simple is not None:
                simple(sql.encode())
                return
            kept = self._writer
            if kept is not None:
                try:
                    kept.execute(sql)
                except BaseException:
                    self._drop_kept()
                    raise
                return
            if self._strategy.connection_executes:
                self._dbapi.execute(sql)  # the driver makes and ends the cursor, in C
                return
        cursor = self._dbapi.cursor()
        try:
            if self.observer is not None:
                observing.execute(self.observer, cursor, sql, None)
            else:
                cursor.execute(sql)
        finally:
            cursor.close()

    def first_of_last(
        self, sql: str, statements: int, wire_column: int | None = None
    ) -> Sequence[Any]:
        """The first row of the last result of ``sql``: statements sent in one round trip.

        For literal SQL with no parameters (every value in it made by sqlstore).

        Args:
            sql: The statements.
            statements: How many statements ``sql`` holds.
            wire_column: Only this column, as the server sent it (bytes; psycopg's
                ``pgresult``): a one-tuple, without the cost of making the row, and
                with no cursor at all where the connection runs simple queries
                (:attr:`simple`) and nobody observes the statements.
        """
        if wire_column is not None and self.observer is None:
            simple = self.simple
            if simple is not None:  # no cursor: the server's results as they came
                return (simple(sql.encode())[statements - 1].get_value(0, wire_column),)
        kept = self._kept
        cursor = kept if kept is not None and self.observer is None else self._dbapi.cursor()
        try:
            self.run_on(cursor, sql)
            for _ in range(statements - 1):
                cursor.nextset()
            row: Sequence[Any]
            if wire_column is None:
                row = cursor.fetchone()
            else:
                result = cursor.pgresult
                row = (None if result is None else result.get_value(0, wire_column),)
        except BaseException:
            if cursor is kept:
                self._drop_kept()
            raise
        finally:
            if cursor is not kept:
                cursor.close()
        return row

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A transaction around multi-statement work; inside a lock block, nothing to add.

        Deferred statements inside it may travel with its ``COMMIT``. If the work
        raises, or a deferred statement fails, the transaction is rolled back and that
        error raised; a rollback that fails too (the connection died) discards the
        connection and never hides the first error.
        """
        if self.in_block:
            yield
            return
        self.deferral = self.new_deferral(begin=True)
        if self.deferral is None:
            self._strategy.begin(self)
        try:
            yield
            if self.deferral is not None:
                self.deferral.commit()
            else:
                self._strategy.end(self, commit=True)
        except BaseException:
            self.rollback_quietly()
            raise
        finally:
            self.deferral = None

    def new_deferral(self, *, begin: bool) -> Deferral | None:
        """The dialect's way of sending statements ahead, unless statements are observed."""
        if self.observer is not None or not self._strategy.sends_ahead:
            return None  # listeners see each statement as it runs, or the dialect can't
        return self._strategy.deferral(self, begin=begin)

    def rollback_quietly(self) -> None:
        """Roll back the open transaction; if even that fails, discard the connection."""
        try:
            if self.deferral is not None:
                self.deferral.discard()
                self.deferral = None
            self._strategy.end(self, commit=False)
        except Exception as exc:
            self.invalidate(exc)

    def close(self) -> None:
        """Give the connection back to the pool."""
        if self.closed:
            return
        if self.deferral is not None:  # never hand on a connection with a block open
            self.rollback_quietly()
            if self.closed:
                return
        self.closed = True
        pooling.count_statements(self.raw, self.statements)
        try:
            if self._restore is not None and self.raw.is_valid:
                self._strategy.leave_autocommit(self.raw.dbapi_connection, self._restore)
        finally:
            self.raw.close()

    def invalidate(self, exc: BaseException | None = None) -> None:
        """Discard the connection: it is broken, or its transaction state is unknown.

        The pool opens a new one in its place when next asked.
        """
        if self.closed:
            return
        self.closed = True
        deferral, self.deferral = self.deferral, None
        self.raw.invalidate(exc)
        if deferral is not None:
            # What it queued is dropped now, with no I/O: nothing of it is ever sent.
            deferral.discard()

    def abandon(self) -> None:
        """Let go of the connection without touching it (it belongs to another process).

        What it still refers to is kept for the life of the process, never finalised
        here: nothing this process's garbage collector runs may end anything on the
        other process's connection.
        """
        self.closed = True
        if self.deferral is not None:
            forking.keep(self.deferral)
