"""Statements sent ahead of their answers: the interface a dialect implements.

See :meth:`sqlstore.connection.PooledConnection.defer`. This module imports nothing of
sqlstore, so that dialect modules can implement it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .statements import Statement

Params = Mapping[str, Any] | None


class StatementFailed(Exception):
    """A statement handed to :meth:`PooledConnection.defer` failed.

    Attributes:
        error: The driver's exception.
        label: What the statement was for (the path it wrote), for the error message.
    """

    def __init__(self, error: Exception, label: str | None) -> None:
        super().__init__(error)
        self.error = error
        self.label = label


class Deferral(ABC):
    """How one connection sends statements ahead of the answers it waits for."""

    @abstractmethod
    def defer(self, statement: Statement, params: Params, label: str | None) -> None:
        """Send (or queue) a statement whose answer is not needed now."""

    @abstractmethod
    def before_read(self) -> None:
        """Make what was deferred run before the statement that reads next.

        Raises:
            StatementFailed: a deferred statement failed.
        """

    @abstractmethod
    def settle(self) -> None:
        """Wait for every deferred statement (a statement that needs its answer follows).

        Later deferred statements are sent ahead again.

        Raises:
            StatementFailed: a deferred statement failed.
        """

    @abstractmethod
    def commit(self, then: Sequence[str] = ()) -> None:
        """Send what is pending, ``COMMIT``, and the ``then`` statements, in one round trip.

        Raises:
            StatementFailed: a deferred statement failed; nothing was committed, and
                the transaction is still open (the caller rolls it back).
        """

    @abstractmethod
    def discard(self) -> None:
        """Drop what is pending and leave the connection ready for a ``ROLLBACK``."""
