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
* **Parked connections.** A checkout and check-in through SQLAlchemy's pool cost about
  75,000 instructions, more than a whole read on the raw driver. So a store call that
  ends gives its connection back by *parking* it on :class:`BoundedQueuePool` (a list
  append), and the next call takes it from there (a list pop), checked out still. The
  pool counts a parked connection as checked in (``checkedin()``, ``checkedout()``,
  ``status()``), and whoever asks the pool itself for a connection (a call that found
  none parked, a lock block, ``engine.connect()``) first checks every parked one in
  properly; while anyone waits that way, nothing is parked. A connection is parked only
  where no pool event but sqlstore's own listens (``checkout``, ``checkin``, ``reset``),
  without ``pool_pre_ping`` and ``pool_recycle``, and never more of them than
  ``pool_size``. ``engine.dispose()`` checks them in before it closes the pool, and a
  forked child never sees its parent's (its pool is new).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

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
#: Pool event listeners sqlstore adds (``checkout`` and ``checkin``).
OWN_POOL_LISTENERS = 2

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


class Parkable(Protocol):
    """A checked-out connection that can be parked on the pool."""

    def close(self) -> None:
        """Check the connection in to the pool properly."""


class BoundedQueuePool(QueuePool):
    """A ``QueuePool`` whose wait for a free connection also ends at the :func:`set_deadline`.

    ``QueuePool`` reads its ``_timeout`` each time it has to wait; here that value is
    the pool's own timeout or the time left until the caller's deadline, if sooner.

    It also keeps sqlstore's parked connections (see the module's docstring):
    :attr:`parked` is popped by sqlstore without a lock (``list.pop`` is atomic);
    :meth:`park` adds to it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Checked-out connections no caller uses, the most recently used last.
        self.parked: list[Parkable] = []
        self._park_lock = threading.Lock()
        self._wanting = 0  # callers inside _do_get: nothing may be parked meanwhile
        #: The most connections parked at once (the pool's size).
        self.park_max: int = self._pool.maxsize

    def park(self, conn: Parkable) -> None:
        """Keep ``conn`` for the next caller (or check it in, if one waits for the pool)."""
        parked = self.parked
        parked.append(conn)
        # Looked at after the append: a caller that entered _do_get before it is seen
        # here (and gets the connection checked in); one that enters after it finds the
        # connection parked and checks it in itself. No lock is needed for either.
        if self._wanting or len(parked) > self.park_max:
            self.unpark()

    def unpark(self) -> None:
        """Check every parked connection in."""
        while True:
            try:
                conn = self.parked.pop()
            except IndexError:
                return
            conn.close()

    def _do_get(self) -> Any:
        # A caller of the pool proper: the parked connections go back into the queue
        # first, and none is parked until it has one, so it never waits for a
        # connection that sits parked.
        with self._park_lock:
            self._wanting += 1
        try:
            self.unpark()
            return super()._do_get()
        finally:
            with self._park_lock:
                self._wanting -= 1

    def dispose(self) -> None:
        """Check the parked connections in, then close every checked-in one."""
        self.unpark()
        super().dispose()

    def checkedin(self) -> int:
        """Connections in the pool, parked ones included."""
        return super().checkedin() + len(self.parked)

    def checkedout(self) -> int:
        """Connections callers hold (parked ones are nobody's)."""
        return super().checkedout() - len(self.parked)

    def sqlstore_events_only(self, own: int) -> bool:
        """Whether no pool event listener but sqlstore's ``own`` (count) listens."""
        d = self.dispatch
        return len(d.checkout) + len(d.checkin) + len(d.reset) <= own

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


def statements_left(raw: Any, strategy: DialectStrategy) -> int:
    """How many more statements ``raw`` (just checked out) may run before it is replaced.

    A parked connection is not checked in, so the check-in hook that replaces it does
    not run: it is checked in properly once it ran this many.
    """
    if not strategy.keeps_plans(raw.dbapi_connection):
        return 1 << 62
    info = raw.record_info
    if info is None:
        return 0
    return int(info.get(_REPLAN_AT, FIRST_REPLAN)) - int(info.get(_STATEMENTS, 0))


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
