"""Engines, and the per-engine state every store on that engine shares.

Thousands of stores (one per conversation) share one engine and its pool. What they
share beyond the pool lives in one :class:`EngineState` per pool: the dialect
strategy, the compiled statements, whether the schema was found at the right
revision, and each thread's open lock-block transaction, which every store on the
engine joins.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field
from typing import Any, cast

import sqlalchemy
from sqlalchemy import Engine, event
from sqlalchemy.engine import URL
from sqlalchemy.pool import Pool, PoolProxiedConnection
from sqlalchemy.sql import ClauseElement

from .dialects import DialectStrategy, strategy_for
from .errors import SchemaError
from .prepared import Prepared
from .schema import SCHEMA_REVISION, VERSION_TABLE
from .session import Session
from .statements import Statements
from .urls import check_url

_AUTOCOMMIT = "AUTOCOMMIT"


def create_engine(
    url: str | URL,
    *,
    sqlite_synchronous: str = "FULL",
    sqlite_busy_timeout: float = 30.0,
    **engine_options: Any,
) -> Engine:
    """Create an engine configured the way sqlstore works best.

    Connections run in autocommit mode (a single statement needs no ``BEGIN`` and
    ``COMMIT`` round trips; lock blocks open their own transactions) and SQLite
    connections get WAL, ``synchronous`` and ``busy_timeout`` set.

    Args:
        url: A SQLAlchemy URL, e.g. ``postgresql+psycopg://user@host/db``,
            ``sqlite:///conversations.db`` or ``mysql+pymysql://root@host/db``. Behind
            PgBouncer (transaction pooling, before 1.21) add ``?prepare_threshold=none``.
        sqlite_synchronous: SQLite's ``PRAGMA synchronous`` (``FULL`` or ``NORMAL``).
        sqlite_busy_timeout: Seconds a SQLite write waits for another writer.
        **engine_options: Passed to :func:`sqlalchemy.create_engine`, overriding
            sqlstore's defaults (``pool_size``, ``max_overflow``, ``pool_recycle``...).

    Raises:
        UnsupportedDialectError: the URL names a database or driver sqlstore does not
            work with (see :func:`sqlstore.urls.check_url`); the message names the fix.
        DriverNotInstalledError: the driver is missing; the message names the extra.
    """
    url = check_url(url)
    if url.get_backend_name() == "sqlite":
        strategy: DialectStrategy = strategy_for(
            "sqlite", synchronous=sqlite_synchronous, busy_timeout=sqlite_busy_timeout
        )
    else:
        strategy = strategy_for(url.get_backend_name())
    url, dialect_options = strategy.engine_options(url)
    options: dict[str, Any] = {
        "isolation_level": _AUTOCOMMIT,
        # Every transaction sqlstore opens, it ends itself; a rollback on each pool
        # check-in would only add a round trip.
        "skip_autocommit_rollback": True,
        **dialect_options,
        **engine_options,
    }
    if "poolclass" not in engine_options and not _in_memory(url):
        # The most recently used connection first: its server process and prepared
        # statements are warm, and spare connections can time out when idle.
        options.setdefault("pool_use_lifo", True)
    engine = sqlalchemy.create_engine(url, **options)
    event.listen(engine, "connect", lambda dbapi_conn, _record: strategy.on_connect(dbapi_conn))
    _register(engine, strategy)
    return engine


def _in_memory(url: URL) -> bool:
    """An in-memory SQLite database (SQLAlchemy pools it one connection per thread)."""
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


@dataclass
class LockBlock:
    """A thread's open lock-block transaction on one engine."""

    session: Session
    held: set[bytes] = field(default_factory=set)
    depth: int = 0


class EngineState:
    """What every store on one engine (one pool) shares."""

    def __init__(self, engine: Engine, strategy: DialectStrategy) -> None:
        self.engine = engine
        self.strategy = strategy
        self.statements = Statements(strategy)
        self.dbapi_error: type[Exception] = engine.dialect.loaded_dbapi.Error
        self._prepared: dict[int, Prepared] = {}
        self._local = threading.local()
        self._schema_ok = False
        self._schema_lock = threading.Lock()

    def prepared(self, statement: ClauseElement) -> Prepared:
        """``statement`` compiled for this engine's dialect (compiled once)."""
        found = self._prepared.get(id(statement))
        if found is None:
            # Statements live as long as self.statements, so their ids stay unique.
            found = self._prepared.setdefault(
                id(statement), Prepared(statement, self.engine.dialect)
            )
        return found

    def checkout(self) -> Session:
        """A pooled connection in autocommit mode; ``close()`` it when done."""
        return Session(self, self.engine.raw_connection())

    def is_disconnect(self, exc: BaseException, session: Session | None) -> bool:
        """Whether ``exc`` means the connection is gone (SQLAlchemy's own test)."""
        dbapi_connection = None if session is None else session.connection.dbapi_connection
        return bool(self.engine.dialect.is_disconnect(cast(Any, exc), dbapi_connection, None))

    def invalidate(self, connection: PoolProxiedConnection, exc: BaseException | None) -> None:
        """Discard ``connection`` and every pooled connection as old as it.

        This is what SQLAlchemy's ``Connection`` does on a disconnect: when the server
        restarted, every idle connection in the pool is dead too.
        """
        self.engine.pool._invalidate(connection, exc)

    @property
    def lock_block(self) -> LockBlock | None:
        """The calling thread's open lock block on this engine, if any."""
        block: LockBlock | None = getattr(self._local, "block", None)
        return block

    @lock_block.setter
    def lock_block(self, block: LockBlock | None) -> None:
        self._local.block = block

    def check_schema(self, session: Session) -> None:
        """Raise :class:`SchemaError` unless the schema is at this code's revision.

        Checked once per engine; a failure is not remembered, so migrating and then
        retrying works without a new store.
        """
        if self._schema_ok:
            return
        with self._schema_lock:
            if self._schema_ok:
                return
            try:
                found = session.sql(f"SELECT version_num FROM {VERSION_TABLE}")
            except self.dbapi_error as exc:
                if self.is_disconnect(exc, session) or self.strategy.is_transient(exc):
                    raise
                raise SchemaError(_schema_message(self.engine.url, None)) from exc
            if found != SCHEMA_REVISION:
                raise SchemaError(_schema_message(self.engine.url, found))
            self._schema_ok = True


_states: weakref.WeakKeyDictionary[Pool, EngineState] = weakref.WeakKeyDictionary()
_states_lock = threading.Lock()


def state_for(engine: Engine) -> EngineState:
    """The shared state of ``engine``'s pool, created on first use (no I/O)."""
    state = _states.get(engine.pool)
    if state is None:
        with _states_lock:
            state = _states.get(engine.pool)
            if state is None:
                state = _register(engine, strategy_for(engine.dialect.name))
    return state


def _register(engine: Engine, strategy: DialectStrategy) -> EngineState:
    state = EngineState(engine, strategy)
    _states[engine.pool] = state
    return state


def safe_url(url: URL) -> str:
    """``url`` as a string with any password masked."""
    return url.render_as_string(hide_password=True)


def _schema_message(url: URL, found: str | None) -> str:
    where = "no sqlstore schema" if found is None else f"schema revision {found!r}"
    return (
        f"{safe_url(url)} has {where}; this sqlstore needs revision {SCHEMA_REVISION}. "
        f"Bring it to head with `sqlstore.migrate(url)` or, in a checkout, "
        f"`alembic -x url=<url> upgrade head`."
    )
