"""What sqlstore adds to an engine's connection pool.

* **Bounded waits.** A lock's timeout covers the whole acquisition: waiting for a free
  pooled connection and connecting as well as the lock wait itself. :func:`set_deadline`
  sets the moment by which a checkout must succeed; :class:`BoundedQueuePool` (the pool
  :func:`sqlstore.create_engine` makes) waits no longer than that, and new connections
  get a connect timeout no longer than that.
* **Timeouts on by default.** Every new connection gets a connect timeout and a read
  timeout (:class:`Timeouts`), so a server that accepts connections and never answers
  cannot hang a call.
* **Origin checks.** A pooled connection is used only in the process that opened it and
  only if sqlstore configured it. Any other (inherited across a fork, or opened before
  sqlstore first saw the engine) is replaced at checkout; one from another process is
  never closed here, since closing it would end the parent's session.
* **Per-connection settings** (SQLite's WAL, ``synchronous`` and ``busy_timeout``) are
  applied to every new connection, whichever engine sqlstore is given.
* **Plans made again as tables grow.** PostgreSQL plans a prepared statement once per
  connection and keeps the plan until the table's statistics change. A plan made while
  the tables held a page or two scans them, and where nothing refreshes the statistics
  (autovacuum off, or behind a fast load) it would stay: every write then reads the
  whole namespace or table (measured here on a new database: 0.55 ms a write at 2,000
  files, 2.1 ms at 12,000). So a connection that keeps plans is replaced, quietly, after
  its pool slot ran 1,000 statements, then 2,000, 4,000 and so on (:func:`count_statements`);
  the new one plans for the tables as they are then. Replacements stay rare (about
  twenty in a billion statements) and the wasted work bounded.
"""

from __future__ import annotations

import contextlib
import os
import time
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import QueuePool

from . import forking

if TYPE_CHECKING:
    from .dialects import DialectStrategy

#: ``connection_record.info`` key: the pid of the process that opened the connection.
_ORIGIN = "sqlstore.pid"
#: ``connection_record.record_info`` keys (kept across the slot's connections): how many
#: statements the slot ran, and after how many its connection is next replaced.
_STATEMENTS = "sqlstore.statements"
_REPLAN_AT = "sqlstore.replan_at"
#: Statements after which a pool slot's first connection is replaced (then twice as many).
FIRST_REPLAN = 1000

_deadline: ContextVar[float | None] = ContextVar("sqlstore_checkout_deadline", default=None)


@dataclass(frozen=True)
class Timeouts:
    """How long sqlstore waits for a server.

    Attributes:
        connect: Seconds to establish a connection (TCP, TLS, authentication).
        read: Seconds to wait for the answer to one statement, beyond any wait the
            statement itself asks the server for (a lock wait).
    """

    connect: float = 10.0
    read: float = 60.0

    def __post_init__(self) -> None:
        for name in ("connect", "read"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"{name}_timeout must be a positive number of seconds")


def set_deadline(at: float | None) -> Token[float | None]:
    """Bound pool waits and new connections by ``at`` (``time.monotonic``) until reset."""
    return _deadline.set(at)


def reset_deadline(token: Token[float | None]) -> None:
    """End what :func:`set_deadline` began."""
    _deadline.reset(token)


def remaining(limit: float) -> float:
    """``limit`` seconds, or less if the current :func:`set_deadline` comes sooner (never < 0)."""
    at = _deadline.get()
    if at is None:
        return limit
    return max(0.0, min(limit, at - time.monotonic()))


class BoundedQueuePool(QueuePool):
    """A ``QueuePool`` whose wait for a free connection also ends at the :func:`set_deadline`.

    ``QueuePool`` reads its ``_timeout`` each time it has to wait; here that value is
    the pool's own timeout or the time left until the caller's deadline, if sooner.
    """

    @property
    def _timeout(self) -> float:
        return remaining(self._pool_timeout)

    @_timeout.setter
    def _timeout(self, value: float) -> None:
        self._pool_timeout = value


def count_statements(raw: Any, count: int) -> None:
    """Add ``count`` statements to those run on the pool slot of ``raw`` (checked out).

    Called as a connection is given back; a lock block's statements all count.
    """
    info = raw.record_info
    if info is not None:
        info[_STATEMENTS] = info.get(_STATEMENTS, 0) + count


def install(engine: Engine, strategy: DialectStrategy, timeouts: Timeouts) -> None:
    """Attach sqlstore's connection hooks to ``engine`` (once per engine)."""

    @event.listens_for(engine, "do_connect")
    def do_connect(dialect: Any, record: Any, cargs: list[Any], cparams: dict[str, Any]) -> Any:
        # Connecting is part of a lock's wait too: never wait longer than its deadline.
        strategy.connect_params(cparams, remaining(timeouts.connect), timeouts.read)
        return strategy.connect(dialect, cargs, cparams, timeouts.read)

    @event.listens_for(engine, "connect")
    def connect(dbapi_connection: Any, record: Any) -> None:
        strategy.on_connect(dbapi_connection)
        record.info[_ORIGIN] = os.getpid()

    @event.listens_for(engine, "checkout")
    def checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        origin = record.info.get(_ORIGIN)
        if origin == os.getpid():
            return
        if origin is None and not strategy.replaceable(engine.url):
            # The only connection to an in-memory database *is* the database.
            strategy.on_connect(dbapi_connection)
            record.info[_ORIGIN] = os.getpid()
            return
        if origin is not None or forking.forked:
            # Possibly another process's: set it aside untouched, never close it.
            forking.keep(dbapi_connection)
            record.dbapi_connection = proxy.dbapi_connection = None
        # The pool discards this connection and connects anew (through the hooks above).
        raise DisconnectionError("sqlstore replaces a connection it did not open here")

    @event.listens_for(engine, "checkin")
    def checkin(dbapi_connection: Any, record: Any) -> None:
        if dbapi_connection is None or not strategy.keeps_plans(dbapi_connection):
            return
        info = record.record_info
        statements = info.get(_STATEMENTS, 0)
        if statements < info.setdefault(_REPLAN_AT, FIRST_REPLAN):
            return
        info[_REPLAN_AT] = 2 * statements
        # A slot without a connection connects anew at its next checkout, through the
        # hooks above; unlike an invalidation, this is not logged as a failure.
        record.dbapi_connection = None
        with contextlib.suppress(Exception):
            dbapi_connection.close()
