"""A pooled DBAPI connection, in autocommit mode, with the statements run on it.

Stores borrow a :class:`Session` for each call (or keep one for a lock block) and give
it back at once, so thousands of stores share the engine's few pooled connections.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.pool import PoolProxiedConnection

from .prepared import Prepared

if TYPE_CHECKING:
    from .engine import EngineState


class Session:
    """One checked-out connection. Not thread-safe: one thread uses it at a time."""

    __slots__ = ("_restore", "_state", "closed", "connection")

    def __init__(self, state: EngineState, connection: PoolProxiedConnection) -> None:
        self._state = state
        self.connection = connection
        self.closed = False
        # Engines not created in autocommit mode get it for the duration of the
        # checkout, and their original mode back on return.
        self._restore = state.strategy.enter_autocommit(connection.dbapi_connection)

    def execute(self, prepared: Prepared, params: Mapping[str, Any]) -> Any:
        """Run a prepared statement; returns the DBAPI cursor (closed by the caller)."""
        cursor = self.connection.cursor()
        try:
            cursor.execute(prepared.sql, prepared.args(params))
        except BaseException:
            cursor.close()
            raise
        return cursor

    def rowcount(self, prepared: Prepared, params: Mapping[str, Any]) -> int:
        """Run a prepared DML statement and return the number of rows it changed."""
        cursor = self.execute(prepared, params)
        try:
            count: int = cursor.rowcount
            return count
        finally:
            cursor.close()

    def first(self, prepared: Prepared, params: Mapping[str, Any]) -> Sequence[Any] | None:
        """Run a prepared query and return its first row, converted, or ``None``."""
        cursor = self.execute(prepared, params)
        try:
            row = cursor.fetchone()
        finally:
            cursor.close()
        return None if row is None else prepared.convert(row)

    def all(self, prepared: Prepared, params: Mapping[str, Any]) -> list[Sequence[Any]]:
        """Run a prepared query and return all rows, converted."""
        cursor = self.execute(prepared, params)
        try:
            rows: list[Sequence[Any]] = cursor.fetchall()
        finally:
            cursor.close()
        return rows if prepared.plain else [prepared.convert(row) for row in rows]

    def sql(self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None) -> Any:
        """Run literal SQL written in the driver's parameter style.

        Returns:
            The first column of the first row, if the statement returns rows.
        """
        cursor = self.connection.cursor()
        try:
            if params is None:
                cursor.execute(sql)
            else:
                cursor.execute(sql, params)
            if cursor.description is None:
                return None
            row = cursor.fetchone()
            return None if row is None else row[0]
        finally:
            cursor.close()

    def close(self) -> None:
        """Give the connection back to the pool."""
        if self.closed:
            return
        self.closed = True
        try:
            if self._restore is not None and self.connection.is_valid:
                self._state.strategy.leave_autocommit(
                    self.connection.dbapi_connection, self._restore
                )
        finally:
            self.connection.close()

    def invalidate(self, exc: BaseException | None = None) -> None:
        """Discard the connection: it is broken, or its transaction state is unknown."""
        self._state.invalidate(self.connection, exc)
        self.closed = True
