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
"""

from __future__ import annotations

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
