"""The interface every database dialect implements.

The generic store (:mod:`sqlstore.store`) names no database. Whatever differs between
databases — how a lock is taken and waited for, how an upsert is spelled, how large a
value may be, which driver errors are transient — lives in one module per dialect,
behind :class:`DialectStrategy`.

Connections run in autocommit mode, so a single statement is its own transaction and
costs no ``BEGIN``/``COMMIT`` round trips. Multi-statement work (a lock block, a
chunked write) opens an explicit transaction with :meth:`DialectStrategy.begin` or
:meth:`DialectStrategy.begin_locked` and ends it with :meth:`DialectStrategy.end`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

from sqlalchemy import Connection, Insert, Select, Table, func
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError


class DialectStrategy(ABC):
    """How sqlstore drives one kind of database."""

    #: ``engine.dialect.name`` values this strategy serves.
    names: ClassVar[tuple[str, ...]]
    #: Contents longer than this are split into ``sqlstore_chunks`` rows; ``None``: never.
    chunk_size: ClassVar[int | None] = None
    #: Largest content the dialect stores, in bytes; a larger write raises ``FileTooLargeError``.
    max_content_size: ClassVar[int]
    #: One sentence for the README and ``LockTimeoutError`` messages: what a lock excludes.
    lock_scope: ClassVar[str]

    def engine_options(self, url: URL) -> dict[str, Any]:
        """Defaults for ``create_engine`` that this dialect wants; callers may override them."""
        return {}

    def on_connect(self, dbapi_connection: Any) -> None:  # noqa: B027 - optional hook
        """Prepare a new DBAPI connection (session settings); called once per connection."""

    @abstractmethod
    def upsert(
        self,
        table: Table,
        columns: Sequence[str],
        source: Select[Any],
        replace: Sequence[str],
        touch: str,
    ) -> Insert:
        """``INSERT INTO table (columns) SELECT ...`` that overwrites an existing row.

        Args:
            table: The target table.
            columns: The columns ``source`` supplies, in its order.
            source: The rows to insert.
            replace: Columns that take the new row's values when the key exists.
            touch: A timestamp column set to the current time when the key exists.
        """

    def begin(self, conn: Connection, *, snapshot: bool = False) -> None:
        """Open an explicit transaction on an autocommit connection.

        Args:
            conn: The connection.
            snapshot: Whether every statement in the transaction must see one snapshot
                (needed to read a chunked file consistently).
        """
        conn.exec_driver_sql("BEGIN")

    @abstractmethod
    def begin_locked(self, conn: Connection, key: bytes, timeout: float) -> None:
        """Open a transaction that holds the lock ``key`` until :meth:`end`.

        Raises:
            LockTimeoutError: the lock was not acquired within ``timeout`` seconds. The
                connection is then left with no transaction open.
        """

    @abstractmethod
    def acquire_nested(self, conn: Connection, key: bytes, timeout: float) -> None:
        """Take another lock inside a transaction opened by :meth:`begin_locked`.

        The caller has set a savepoint and rolls back to it if this raises.

        Raises:
            LockTimeoutError: not acquired within ``timeout`` seconds.
        """

    def end(self, conn: Connection, *, commit: bool, keys: Iterable[bytes] = ()) -> None:
        """Commit or roll back the open transaction, then release session-level locks."""
        conn.exec_driver_sql("COMMIT" if commit else "ROLLBACK")

    @abstractmethod
    def is_transient(self, exc: DBAPIError) -> bool:
        """Whether retrying the same single statement on a fresh connection may succeed."""

    def is_busy(self, exc: DBAPIError) -> bool:
        """Whether ``exc`` means a lock wait ran out (to be raised as ``LockTimeoutError``)."""
        return False

    def describe_limit(self) -> str:
        """Human-readable content size limit, for error messages."""
        return f"{self.max_content_size} bytes"


def on_conflict_upsert(
    insert: Callable[[Table], Any],
    table: Table,
    columns: Sequence[str],
    source: Select[Any],
    replace: Sequence[str],
    touch: str,
) -> Insert:
    """``INSERT ... ON CONFLICT (primary key) DO UPDATE``, as PostgreSQL and SQLite spell it."""
    stmt = insert(table).from_select(list(columns), source)
    values: dict[str, Any] = {name: stmt.excluded[name] for name in replace}
    values[touch] = func.now()
    result: Insert = stmt.on_conflict_do_update(index_elements=list(table.primary_key), set_=values)
    return result


def timeout_ms(timeout: float) -> int:
    """A lock timeout in whole milliseconds, at least 1 (0 means 'forever' to PostgreSQL)."""
    return max(1, round(timeout * 1000))
