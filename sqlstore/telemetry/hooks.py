"""The one slot through which the database layer reports its rare events to telemetry.

:mod:`sqlstore.database` reads :data:`recorder` only where something unusual happens
(a retry, an error it translates), so a process without telemetry pays one module
attribute check on those paths and nothing on the normal path of a store call.
:func:`sqlstore.telemetry.instrument` sets it; :func:`sqlstore.telemetry.uninstrument`
sets it back to ``None``. This module imports nothing, so the database layer can
import it whether or not OpenTelemetry is installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..database import Database

__all__ = ["Recorder", "recorder"]


class Recorder(Protocol):
    """What the database layer tells telemetry."""

    def retried(self, database: Database, error: BaseException) -> None:
        """Work outside a lock block failed transiently with ``error`` and runs again."""

    def failed(self, database: Database, cause: BaseException, error: Exception) -> None:
        """The driver or pool error ``cause`` reaches the caller as ``error``."""


#: The active recorder, or ``None`` when telemetry is off (the default).
recorder: Recorder | None = None
