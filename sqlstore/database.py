"""The one way sqlstore reaches a database.

A :class:`Database` exists once per engine and is shared by every store, and by the
administration code, on that engine. It owns what lies between a statement and the
server: borrowing a connection, running work on it, multi-statement transactions and
lock blocks (savepoints included), retries, timeouts, the schema check, what a fork or
``engine.dispose()`` changes, and turning every driver or SQLAlchemy error into a
sqlstore error or a builtin. Callers hand it work — a function of a
:class:`~sqlstore.connection.PooledConnection` — and get a value or a sqlstore error.

Retries: outside a lock block, work that fails because the connection died or the
server asked for a retry (serialization failure, deadlock) runs again on a fresh
connection, up to :data:`RETRY_ATTEMPTS` times with exponential backoff. Every unit of
work sqlstore runs this way is idempotent. Inside a lock block nothing is retried: the
block's transaction is lost with its connection, so the error propagates and the block
rolls back. A timeout is never retried: the server was given its time.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy
from sqlalchemy import Engine, column, select, table
from sqlalchemy.engine import URL

from . import blocks, forking, observing, pooling
from .blocks import Block
from .connection import Params, PooledConnection, StatementFailed
from .dialects import DialectStrategy, strategy_for
from .dialects.base import timeout_seconds
from .errors import (
    CommitUnknownError,
    DatabaseError,
    DatabaseTimeoutError,
    LockTimeoutError,
    SchemaError,
    SQLStoreError,
)
from .pooling import Timeouts
from .schema import SCHEMA_REVISION, VERSION_TABLE
from .statements import REFUSALS, Statement, Statements
from .telemetry import hooks

if TYPE_CHECKING:
    from .dialects.base import Read

T = TypeVar("T")
#: Opens a lock block's transaction and takes its lock: (connection, key, timeout) -> witness.
_Opener = Callable[[PooledConnection, bytes, float], object]

#: Attempts for work outside a lock block that fails transiently.
RETRY_ATTEMPTS = 4
#: Seconds before the first retry; doubled for each further one.
RETRY_BACKOFF = 0.05

_VERSION = table(VERSION_TABLE, column("version_num"))


class Database:
    """One engine as sqlstore uses it. Get it with :func:`database_for`; thread-safe.

    Attributes:
        engine: The engine.
        strategy: Its dialect strategy.
        statements: The store's statements, compiled for the engine's dialect.
    """

    def __init__(self, engine: Engine, strategy: DialectStrategy, timeouts: Timeouts) -> None:
        self.engine = engine
        self.strategy = strategy
        strategy.timeouts = timeouts
        self.statements = Statements(engine.dialect, strategy)
        self._dbapi_error: type[Exception] = engine.dialect.loaded_dbapi.Error
        self._now = Statement.of(select(strategy.utc_now()), engine.dialect)
        self._revision = Statement.of(select(_VERSION.c.version_num), engine.dialect)
        self._schema_ok = False
        self._schema_lock = threading.Lock()
        #: The callers' open lock blocks on this engine.
        self.blocks = blocks.Blocks(f"sqlstore_lock_block_{id(self):x}")
        pooling.install(engine, strategy, timeouts)
        forking.register(self)

    @property
    def name(self) -> str:
        """The dialect's name, e.g. ``postgresql``."""
        return str(self.engine.dialect.name)

    @property
    def safe_url(self) -> str:
        """The engine's URL with any password masked."""
        return safe_url(self.engine.url)

    # -- running work ----------------------------------------------------------------

    def run(self, work: Callable[[PooledConnection], T], *, check_schema: bool = True) -> T:
        """Run ``work`` in the caller's lock block, or on a pooled autocommit connection.

        Args:
            work: Statements to run; it may open a transaction with
                ``conn.transaction()`` (which joins the lock block, if any).
            check_schema: Whether to check the schema revision first (once per engine).

        Raises:
            DatabaseError: the database failed (after retries, outside a lock block).
            DatabaseTimeoutError: the server did not answer in time.
            LockTimeoutError: a lock wait inside ``work`` ran out.
            SchemaError: the schema is missing or at another revision.
        """
        block = self.blocks.current()  # None at once where no block is open (most calls)
        if block is not None:
            return self.run_in_block(block, work)
        return self.run_outside(work, check_schema=check_schema)

    def run_outside(self, work: Callable[[PooledConnection], T], *, check_schema: bool = True) -> T:
        """:meth:`run` for a caller that found it has no lock block open (:meth:`block`)."""
        # The plain call, written out for speed (it is most calls): a connection an
        # earlier call parked, the work, the connection parked again. Anything else
        # (none parked, the schema unchecked, a failure) goes the general way.
        engine = self.engine
        parked = getattr(engine.pool, "parked", None)
        if not parked or not (self._schema_ok or not check_schema):
            return self._attempts(work, check_schema=check_schema)
        try:
            conn = parked.pop()
        except IndexError:
            return self._attempts(work, check_schema=check_schema)
        if engine._has_events or observing.wanted(engine):
            conn.observer = self._observer(conn)
        elif conn.observer is not None:
            conn.observer = None
        try:
            result = work(conn)
        except BaseException as exc:
            return self._attempts(work, check_schema=check_schema, failed=(conn, exc))
        pool = conn.pool
        current: Any = engine.pool  # a pool of its own after dispose() or a fork
        if (
            pool is not None
            and conn.statements < conn.statements_left
            and not conn.closed
            and conn.deferral is None
            and pool is current
        ):
            parked.append(conn)
            if pool._wanting or len(parked) > pool.park_max:
                pool.unpark()  # see BoundedQueuePool.park
        else:
            conn.close()
        return result

    def run_write(self, work: Callable[[PooledConnection], T], when_done: Callable[[], None]) -> T:
        """:meth:`run` for a change: ``when_done`` runs when the caller's lock block ends.

        Args:
            work: As for :meth:`run`.
            when_done: Called once the caller's lock block commits or rolls back (if the
                call is made in one; once per block however often it is given).
        """
        block = self.blocks.current()
        if block is None:
            return self.run(work)
        result = self.run_in_block(block, work)
        callbacks = block.when_done
        if when_done not in callbacks:
            callbacks.append(when_done)
        return result

    def block(self) -> Block | None:
        """The caller's open lock block on this engine, if any."""
        return self.blocks.current()

    def run_in_block(self, block: Block, work: Callable[[PooledConnection], T]) -> T:
        """Run ``work`` in ``block``, the caller's open lock block (:meth:`block`).

        For a caller that looked its block up already; :meth:`run` does both.
        """
        conn = block.conn
        if conn.closed:
            raise self._lost_in_block()
        try:
            return work(conn)
        except (self._dbapi_error, StatementFailed) as exc:
            error, translated = self._failed_in_block(block, exc)
            raise translated from error

    def first_in_block(
        self, block: Block, statement: Statement, params: Params
    ) -> Sequence[Any] | None:
        """A query's first row, converted, read in the caller's open ``block``.

        :meth:`run_in_block` for one query, written out: a store's reads and ``exists``
        inside a block (the SDK asks ``exists`` first in every append) take this way.
        """
        conn = block.conn
        if conn.closed:
            raise self._lost_in_block()
        try:
            return conn.first(statement, params)
        except (self._dbapi_error, StatementFailed) as exc:
            error, translated = self._failed_in_block(block, exc)
            raise translated from error

    def defer_in_block(
        self,
        block: Block,
        statements: Sequence[Statement],
        params: Params,
        label: str,
        when_done: Callable[[], None],
    ) -> None:
        """Defer a change's statements in the caller's open ``block`` (see :meth:`run_write`).

        The lock block's share of :meth:`run_write`, written out: a store's writes and
        deletes inside a block (most of an SDK append) take this way.
        """
        conn = block.conn
        if conn.closed:
            raise self._lost_in_block()
        try:
            for statement in statements:
                conn.defer(statement, params, label)
        except (self._dbapi_error, StatementFailed) as exc:
            error, translated = self._failed_in_block(block, exc)
            raise translated from error
        callbacks = block.when_done
        if when_done not in callbacks:
            callbacks.append(when_done)

    def _lost_in_block(self) -> DatabaseError:
        return DatabaseError(
            f"the lock block's connection to {self.safe_url} was lost; the block rolls back"
        )

    def _failed_in_block(self, block: Block, exc: Exception) -> tuple[Exception, Exception]:
        """The driver's error behind ``exc`` (raised in ``block``), and what to raise."""
        error, label = _unwrap(exc)
        conn = block.conn
        if self.strategy.is_timeout(error):
            conn.invalidate(error)  # this connection only: the server is alive
        elif self._is_disconnect(error, conn):
            self._discard(conn, error)
        # A failed statement spoils the block (PostgreSQL aborts its transaction):
        # even if the caller goes on, the block rolls back when it ends.
        translated = self.translate(error, label=label)
        block.failed = block.failed or translated
        return error, translated

    def _attempts(
        self,
        work: Callable[[PooledConnection], T],
        *,
        check_schema: bool = True,
        keep_open: bool = False,
        acquiring: bool = False,
        failed: tuple[PooledConnection, BaseException] | None = None,
    ) -> T:
        """Run ``work`` on a pooled connection, retrying transient failures.

        ``failed``: the first attempt was made (on a parked connection) and raised this.
        """
        delay = RETRY_BACKOFF
        first = 0
        if failed is not None:
            self._failed(*failed, last=False, acquiring=acquiring)
            time.sleep(delay)
            delay *= 2
            first = 1
        for attempt in range(first, RETRY_ATTEMPTS):
            conn: PooledConnection | None = None
            try:
                conn = self._acquire()
                if check_schema and not self._schema_ok:
                    self.check_schema(conn)
                result = work(conn)
            except BaseException as exc:
                self._failed(conn, exc, last=attempt + 1 == RETRY_ATTEMPTS, acquiring=acquiring)
            else:
                if not keep_open:
                    self.release(conn)
                return result
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def _failed(
        self, conn: PooledConnection | None, exc: BaseException, *, last: bool, acquiring: bool
    ) -> None:
        """Put ``conn`` right after ``exc``; raise unless another attempt may help."""
        if isinstance(exc, self._dbapi_error | StatementFailed):
            error, label = _unwrap(exc)
            retry = self._recover(conn, error)
            if not retry or last:
                raise self.translate(error, acquiring=acquiring, label=label) from error
            if hooks.recorder is not None:
                hooks.recorder.retried(self, error)
            return
        if isinstance(exc, sqlalchemy.exc.TimeoutError):  # no pooled connection became free
            raise self.translate(exc, acquiring=acquiring) from exc
        if conn is not None:
            if isinstance(exc, Exception):
                conn.close()
            else:  # interrupted mid-statement: its state is unknown
                conn.invalidate(exc)
        raise exc

    def _acquire(self) -> PooledConnection:
        """A connection parked by an earlier call if there is one, else one from the pool.

        A parked one needs no validation: a forked child or a disposed engine has a
        new pool, with nothing parked.
        """
        engine = self.engine
        parked = getattr(engine.pool, "parked", None)
        if not parked:
            return self._checkout()
        try:
            conn: PooledConnection = parked.pop()
        except IndexError:
            return self._checkout()
        if engine._has_events or observing.wanted(engine):
            conn.observer = self._observer(conn)
        elif conn.observer is not None:
            conn.observer = None
        return conn

    def _checkout(self) -> PooledConnection:
        """A connection from the pool proper (its checkout events and checks run)."""
        raw = self.engine.raw_connection()
        conn = PooledConnection(raw, self.strategy)
        pool = raw._pool
        if (
            isinstance(pool, pooling.BoundedQueuePool)
            and conn.autocommit_native
            and not pool._pre_ping
            and pool._recycle < 0
            and pool.sqlstore_events_only(pooling.OWN_POOL_LISTENERS)
        ):
            conn.pool = pool
            conn.statements_left = pooling.statements_left(raw, self.strategy)
        conn.observer = self._observer(conn)
        return conn

    def _observer(self, conn: PooledConnection) -> sqlalchemy.Connection | None:
        """The ``Connection`` ``conn``'s statements run through, if anyone listens or logs."""
        engine = self.engine
        if not observing.wanted(engine):
            return None
        if conn.observer is None:
            return sqlalchemy.Connection(engine, connection=conn.raw)
        return conn.observer

    def release(self, conn: PooledConnection) -> None:
        """Done with ``conn`` (no transaction open): park it for the next call, or check it in."""
        pool = conn.pool
        if (
            pool is not None
            and conn.statements < conn.statements_left
            and not conn.closed
            and conn.deferral is None
            and pool is self.engine.pool
        ):
            pool.park(conn)
            return
        conn.close()

    def _recover(self, conn: PooledConnection | None, exc: Exception) -> bool:
        """Give back or discard ``conn`` after ``exc``; whether another attempt may help."""
        if self.strategy.is_timeout(exc):
            if conn is not None:
                conn.invalidate(exc)
            return False
        disconnect = self._is_disconnect(exc, conn)
        if conn is not None:
            if disconnect:
                self._discard(conn, exc)
            else:
                conn.close()
        return disconnect or self.strategy.is_transient(exc)

    def _is_disconnect(self, exc: Exception, conn: PooledConnection | None) -> bool:
        """Whether ``exc`` means the connection is gone (by code and state, not message)."""
        dbapi = None if conn is None or conn.closed else conn.dbapi
        return self.strategy.is_disconnect(exc, dbapi)

    def _discard(self, conn: PooledConnection, exc: BaseException) -> None:
        """Discard ``conn`` and every pooled connection as old as it.

        What SQLAlchemy's ``Connection`` does on a disconnect: when the server
        restarted, every idle connection in the pool is dead too.
        """
        if conn.closed:
            return
        pool = self.engine.pool
        pool._invalidate(conn.raw, exc)
        conn.closed = True
        if isinstance(pool, pooling.BoundedQueuePool):
            pool.unpark()  # each as old as the one that failed

    # -- lock blocks -----------------------------------------------------------------

    def lock_block(
        self,
        key: bytes,
        timeout: float,
        label: object,
        *,
        read: Read | None = None,
        release_late: bool = False,
    ) -> AbstractContextManager[Sequence[Any] | None]:
        """Hold the lock ``key`` for the block, which is one transaction.

        The caller's calls inside join the transaction; a block inside another is a
        savepoint whose lock is held until the outermost block ends.

        Args:
            key: The lock's 16-byte digest.
            timeout: Seconds the whole acquisition may take (pool wait and connecting
                included); 0 tries once; negative or ``inf`` waits as long as the
                database allows.
            label: What names the lock in an error message (its ``repr`` is shown).
            read: A query run right after the lock is taken, in the same round trip
                where the dialect can; the block's value is its first row (converted),
                or ``None``. Without it the value is ``None``.
            release_late: For a nested block: its savepoint is released with what the
                enclosing block sends next rather than at once, so a write refused in
                it is reported when the enclosing block ends (which then rolls back
                whole), not as it leaves. No effect on an outermost block.

        Raises:
            LockTimeoutError: not acquired within ``timeout``, or already held by the caller.
            DatabaseError: the database failed; nothing of the block is committed.
        """
        block = self.blocks.current()  # None at once where no block is open
        if block is None:
            return (
                _OuterBlock(self, key, timeout)
                if read is None
                else _ReadingBlock(self, key, timeout, read)
            )
        if key in block.active:
            raise LockTimeoutError(f"{label!r} is already locked by this caller")
        return self._nested(block, key, timeout, read, release_late)

    def _begin_block(
        self, block: Block, key: bytes, timeout: float, opener: _Opener | None = None
    ) -> None:
        """Take a connection, open the block's transaction and its lock; open ``block``.

        ``opener``: opens it instead of the strategy's ``begin_locked``.
        """
        strategy = self.strategy
        begin_locked = strategy.begin_locked if opener is None else opener
        start = time.monotonic()
        # A connection an earlier call parked, the schema checked: no pool wait and no
        # connecting, so no deadline to set (the common case, written out for speed).
        engine = self.engine
        parked = getattr(engine.pool, "parked", None)
        conn: PooledConnection | None = None
        failed: tuple[PooledConnection, BaseException] | None = None
        if parked and self._schema_ok:
            try:
                conn = parked.pop()
            except IndexError:
                conn = None
        if conn is not None:
            if engine._has_events or observing.wanted(engine):
                conn.observer = self._observer(conn)
            elif conn.observer is not None:
                conn.observer = None
            try:
                witness = begin_locked(conn, key, timeout)
                # From here the block's writes travel ahead of the answers (if the
                # dialect can).
                if strategy.sends_ahead:
                    conn.deferral = conn.new_deferral(begin=False)
            except BaseException as exc:
                failed = (conn, exc)
        if conn is None or failed is not None:
            wait = timeout_seconds(timeout)
            at = None if wait != timeout else start + wait

            def begin(conn: PooledConnection) -> tuple[PooledConnection, object]:
                left = timeout if at is None else max(0.0, at - time.monotonic())
                witness = begin_locked(conn, key, left)
                conn.deferral = conn.new_deferral(begin=False)
                return conn, witness

            # Nothing has happened yet, so a connection that turns out dead (the server
            # restarted) is retried like any single statement.
            bounded = pooling.set_deadline(at)
            try:
                conn, witness = self._attempts(begin, keep_open=True, acquiring=True, failed=failed)
            finally:
                pooling.reset_deadline(bounded)
        conn.in_block = True
        block.open(conn, key, witness)

    def _close_block(self, block: Block) -> None:
        """Give the block's connection back (a forked child lets go of it untouched)."""
        block.done = True  # a context copied inside the block may outlive it
        conn = block.conn
        if block.generation != forking.generation:  # Block.inherited, written out
            forking.keep(conn.raw)
            conn.abandon()
        else:
            conn.in_block = False
            self.release(conn)

    def _end(self, block: Block, *, commit: bool) -> None:
        conn = block.conn
        if block.generation != forking.generation:  # Block.inherited, written out
            return  # a forked child never ends its parent's transaction
        try:
            if conn.closed:
                if commit:
                    raise DatabaseError(
                        f"the lock block's connection to {self.safe_url} was lost; "
                        "nothing of the block was committed"
                    )
                return
            spoiled = block.failed if commit else None
            committing = commit and spoiled is None
            try:
                self._finish(conn, commit=committing, keys=block.held)
            except (self._dbapi_error, StatementFailed) as exc:
                error = _unwrap(exc)[0]
                if committing and self.strategy.is_timeout(error):
                    # The COMMIT was sent and its answer never came: find out what
                    # happened before answering (returns if the block committed).
                    conn.invalidate(error)
                    self._after_commit_timeout(block, error)
                    return
                if not isinstance(exc, StatementFailed):
                    raise
                failed = exc
                # A write sent ahead failed: nothing was committed. Roll back where the
                # connection still can; report the failure.
                try:
                    self._finish(conn, commit=False, keys=block.held)
                except Exception as rollback_error:
                    conn.invalidate(rollback_error)
                raise self.translate(failed.error, label=failed.label) from failed.error
            if spoiled is not None:
                raise DatabaseError(
                    f"the lock block was rolled back: a statement in it failed ({spoiled})"
                ) from spoiled
        except (self._dbapi_error, StatementFailed) as exc:
            # The transaction's fate is unknown and session locks may still be held:
            # never hand this connection to anyone else.
            conn.invalidate(exc)
            raise self.translate(_unwrap(exc)[0]) from exc
        except BaseException as exc:
            if not isinstance(exc, SQLStoreError | OSError):
                conn.invalidate(exc)
            raise
        finally:
            for callback in block.when_done:
                callback()

    def _after_commit_timeout(self, block: Block, error: Exception) -> None:
        """Return if the block committed although its COMMIT went unanswered; else raise.

        Raises:
            DatabaseTimeoutError: the block did not commit (the server rolled it back).
            CommitUnknownError: whether it committed cannot be told.
        """

        def ask(sql: str, params: Sequence[Any]) -> Any:
            return self._attempts(lambda conn: conn.sql(sql, params), check_schema=False)

        try:
            committed = self.strategy.commit_outcome(block.witness, ask)
        except Exception as exc:  # the status query failed: the fate stays unknown
            error.__context__ = error.__context__ or exc
            committed = None
        if committed:
            return
        text = f"{self.name} error on {self.safe_url}: {type(error).__name__}: {error}"
        raised: DatabaseError
        if committed is False:
            raised = DatabaseTimeoutError(
                f"the lock block did not commit: its COMMIT went unanswered within "
                f"read_timeout and the server rolled it back ({text})"
            )
        else:
            raised = CommitUnknownError(
                f"the lock block's COMMIT went unanswered within read_timeout; whether it "
                f"committed cannot be told ({text})"
            )
        if hooks.recorder is not None:
            hooks.recorder.failed(self, error, raised)
        raise raised from error

    def _roll_back(self, block: Block, cause: BaseException) -> None:
        """End the block by rolling back; the body's own exception ``cause`` is what counts."""
        try:
            self._end(block, commit=False)
        except Exception as exc:  # the connection is discarded; `cause` is raised
            cause.__context__ = cause.__context__ or exc

    def _finish(self, conn: PooledConnection, *, commit: bool, keys: list[bytes]) -> None:
        """Commit (everything deferred with it) or roll back, then release session locks."""
        deferral, conn.deferral = conn.deferral, None
        if deferral is not None:
            if commit:
                conn.deferral = deferral  # it ends itself once it has sent the COMMIT
                deferral.commit(self.strategy.after_commit(keys))
                conn.deferral = None
                return
            deferral.discard()
        self.strategy.end(conn, commit=commit, keys=keys)

    @contextmanager
    def _nested(
        self,
        block: Block,
        key: bytes,
        timeout: float,
        read: Read | None = None,
        release_late: bool = False,
    ) -> Iterator[Sequence[Any] | None]:
        conn = block.conn
        block.depth += 1
        block.active.append(key)
        savepoint = f"sqlstore_{block.depth}"
        failed_before = block.failed

        def undo() -> None:
            if not conn.closed:
                self.run_in_block(block, lambda c: c.sql(f"ROLLBACK TO SAVEPOINT {savepoint}"))
                block.failed = failed_before  # what failed in it was undone with it

        try:
            # A key an earlier nested block took is still held: nothing to take (see
            # DialectStrategy.enter_nested for why the lock has a savepoint of its own).
            taking = None if key in block.held else key
            try:
                row = self.run_in_block(
                    block, lambda c: self.strategy.enter_nested(c, savepoint, taking, timeout, read)
                )
            except BaseException:
                undo()
                raise
            if taking is not None:
                block.held.append(key)
            try:
                yield row
                if release_late:
                    release = self.statements.release_savepoint(savepoint)
                    self.run_in_block(block, lambda c: c.defer(release))
                else:
                    # Writes sent ahead in the block are answered here at the latest: one
                    # refused leaves the block by its error, as if raised at its call.
                    self.run_in_block(block, lambda c: c.sql(f"RELEASE SAVEPOINT {savepoint}"))
            except BaseException:
                undo()
                raise
        finally:
            block.depth -= 1
            block.active.remove(key)

    # -- schema and clock ------------------------------------------------------------

    def revision(self) -> str | None:
        """The database's sqlstore revision, or ``None`` if it has no sqlstore schema.

        Raises:
            SchemaError: the version table records several revisions.
        """
        return self.run(self._read_revision, check_schema=False)

    def _read_revision(self, conn: PooledConnection) -> str | None:
        try:
            rows = conn.all(self._revision)
        except self._dbapi_error as exc:
            # No version table: no schema. Anything else (a lost connection, a
            # permission refused) is the caller's to handle.
            if self.strategy.is_missing_table(exc):
                return None
            raise
        found = [str(version) for (version,) in rows]
        if len(found) > 1:
            raise SchemaError(f"{self.safe_url} records several sqlstore revisions: {found}")
        return found[0] if found else None

    def check_schema(self, conn: PooledConnection) -> None:
        """Raise :class:`SchemaError` unless the schema is at this code's revision.

        Checked once per engine; a failure is not remembered, so migrating and then
        retrying works without a new store.
        """
        if self._schema_ok:
            return
        with self._schema_lock:
            if self._schema_ok:
                return
            # A Citus worker may even hold a copy of the tables: refuse it first.
            problem = self.strategy.node_problem(conn)
            if problem is not None:
                raise SchemaError(f"{self.safe_url}: {problem}")
            self.statements.routed_writes = self.strategy.routes_writes(conn)
            found = self._read_revision(conn)
            if found != SCHEMA_REVISION:
                raise SchemaError(self.schema_message(found))
            self._schema_ok = True

    def forget_schema(self) -> None:
        """Check the schema again on the next call (it was just migrated)."""
        self._schema_ok = False

    def schema_message(self, found: str | None) -> str:
        """Why the schema is not usable, and the command that fixes it."""
        where = "no sqlstore schema" if found is None else f"schema revision {found!r}"
        if not self.strategy.replaceable(self.engine.url):
            fix = (
                "an in-memory database lives as long as its engine: "
                "run `sqlstore.migrate(engine)` on this engine"
            )
        else:
            fix = (
                f"bring it to head with `sqlstore --url {self.safe_url} db upgrade`, "
                "`sqlstore.migrate(url)`, or in a checkout `alembic -x url=<url> upgrade head`"
            )
        needed = f"this sqlstore needs revision {SCHEMA_REVISION}"
        return f"{self.safe_url} has {where}; {needed}. {fix}."

    def now(self) -> datetime:
        """The database's current time, as it stamps ``updated_at``, aware and in UTC."""
        row = self.run(lambda conn: conn.first(self._now), check_schema=False)
        assert row is not None
        return self.strategy.from_db_time(row[0])

    # -- errors ----------------------------------------------------------------------

    def translate(
        self, exc: BaseException, *, acquiring: bool = False, label: str | None = None
    ) -> Exception:
        """The sqlstore exception for a driver error (the one place errors are converted).

        Args:
            exc: The driver's (or SQLAlchemy's) exception.
            acquiring: Whether a lock was being acquired (a timeout is then the lock's).
            label: The path the failed statement wrote, if it was a write.
        """
        error = self._translate(exc, acquiring, label)
        if hooks.recorder is not None:  # telemetry counts timeouts and refusals here
            hooks.recorder.failed(self, exc, error)
        return error

    def _translate(self, exc: BaseException, acquiring: bool, label: str | None) -> Exception:
        if isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.orig is not None:
            exc = exc.orig
        if isinstance(exc, sqlalchemy.exc.TimeoutError):
            return self._pool_timeout(exc, acquiring)
        refused = REFUSALS.get(self.strategy.refused_rule(exc) or "")
        if refused is not None:
            return refused(label or "the path")
        text = f"{self.name} error on {self.safe_url}: {type(exc).__name__}: {exc}"
        if self.strategy.is_busy(exc):
            return LockTimeoutError(f"lock wait timed out on {self.name}: {exc}")
        if self.strategy.is_timeout(exc):
            if acquiring:
                return LockTimeoutError(f"lock not acquired in time: {text}")
            return DatabaseTimeoutError(text)
        return DatabaseError(text)

    def _pool_timeout(self, exc: BaseException, acquiring: bool) -> Exception:
        if acquiring:
            return LockTimeoutError(
                f"lock not acquired in time: no pooled connection to {self.safe_url} became free"
            )
        return DatabaseTimeoutError(
            f"no pooled connection to {self.safe_url} became free in time: {exc}"
        )

    @contextmanager
    def converting(self) -> Iterator[None]:
        """Convert errors raised in the block by SQLAlchemy or the driver (e.g. Alembic's)."""
        try:
            yield
        except SQLStoreError:
            raise
        except (sqlalchemy.exc.SQLAlchemyError, self._dbapi_error) as exc:
            raise self.translate(exc) from exc

    # -- fork ------------------------------------------------------------------------

    def after_fork(self) -> None:
        """In a forked child: a pool of the child's own, and locks no thread holds."""
        self._schema_lock = threading.Lock()
        # The parent's pool and connections stay referenced, never closed, here.
        forking.keep(self.engine.pool)
        self.engine.dispose(close=False)


class _OuterBlock(Block):
    """An outermost lock block, as its context manager (one object per lock).

    Entered once: another block on the same path is another ``lock()``.
    """

    __slots__ = ("_db", "_entered", "_key", "_opener", "_row", "_timeout")

    def __init__(self, db: Database, key: bytes, timeout: float) -> None:
        self._db = db
        self._key = key
        self._timeout = timeout
        #: Where the block is kept while open, and what was kept there before it.
        self._entered: tuple[blocks.Slot, Block | None] | None = None
        #: Opens the block instead of the strategy's ``begin_locked`` (a reading block).
        self._opener: _Opener | None = None
        #: The block's value: the read's first row, for a reading block.
        self._row: Sequence[Any] | None = None

    def __enter__(self) -> Sequence[Any] | None:
        db = self._db
        if self._entered is not None:
            # A block object is the block: entered again, a copied context that still
            # holds it from its first time would take the second for its own.
            raise RuntimeError("a lock block is entered once; call lock() again for another")
        db._begin_block(self, self._key, self._timeout, self._opener)
        try:
            self._entered = db.blocks.enter(self)
        except BaseException:
            db._roll_back(self, RuntimeError("the lock block was not entered"))
            db._close_block(self)
            raise
        return self._row

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        db = self._db
        try:
            slot, before = self._entered  # type: ignore[misc]  # set by __enter__
            slot.block = before  # see Blocks.enter
            if exc is None:
                db._end(self, commit=True)
            else:
                db._roll_back(self, exc)
        finally:
            db._close_block(self)


class _ReadingBlock(_OuterBlock):
    """An outermost lock block whose value is a query's first row, read with its lock."""

    __slots__ = ("_read",)

    def __init__(self, db: Database, key: bytes, timeout: float, read: Read) -> None:
        super().__init__(db, key, timeout)
        self._read = read
        self._opener = self._open_reading

    def _open_reading(self, conn: PooledConnection, key: bytes, timeout: float) -> object:
        witness, self._row = self._db.strategy.begin_locked_reading(conn, key, timeout, self._read)
        return witness


def _unwrap(exc: Exception) -> tuple[Exception, str | None]:
    """The driver error behind ``exc``, and the label of the statement that raised it."""
    if isinstance(exc, StatementFailed):
        return exc.error, exc.label
    return exc, None


def safe_url(url: URL) -> str:
    """``url`` as a string with any password masked."""
    return url.render_as_string(hide_password=True)


_databases: weakref.WeakKeyDictionary[Engine, Database] = weakref.WeakKeyDictionary()
_databases_lock = threading.Lock()


def _new_lock_in_child() -> None:
    # Another thread of the parent may have held it at the fork.
    global _databases_lock
    _databases_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_in_child)


def _root(engine: Engine) -> Engine:
    # engine.execution_options(...) makes a proxy engine sharing the pool; every proxy
    # of one engine is one database to sqlstore (one set of lock blocks).
    while True:
        proxied = getattr(engine, "_proxied", None)
        if proxied is None:
            return engine
        engine = proxied


def database_for(engine: Engine) -> Database:
    """The :class:`Database` of ``engine``, created on first use (no I/O).

    Raises:
        UnsupportedDialectError: the engine's database is not supported.
        ValueError: the engine cannot work with sqlstore (an in-memory SQLite engine
            not made by :func:`sqlstore.create_engine`).
    """
    engine = _root(engine)
    found = _databases.get(engine)
    if found is not None:
        return found
    strategy = strategy_for(engine.dialect.name)
    strategy.check_engine(engine)
    return register(engine, strategy, Timeouts())


def register(engine: Engine, strategy: DialectStrategy, timeouts: Timeouts) -> Database:
    """Make ``engine`` known to sqlstore with this strategy and these timeouts."""
    engine = _root(engine)
    with _databases_lock:
        found = _databases.get(engine)
        if found is None:
            found = _databases[engine] = Database(engine, strategy, timeouts)
        return found


__all__ = ["RETRY_ATTEMPTS", "RETRY_BACKOFF", "Database", "database_for", "safe_url"]
