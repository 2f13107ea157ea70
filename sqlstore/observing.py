"""SQLAlchemy's cursor events and statement logging for the statements sqlstore runs.

sqlstore runs its statements on a pooled DBAPI cursor, not through SQLAlchemy's
``Connection.execute`` (that would cost more than the statement). So that the tools
people attach to an engine still see every statement — ``before_cursor_execute``,
``after_cursor_execute`` and ``handle_error`` listeners (OpenTelemetry's, Sentry's and
Datadog's SQLAlchemy integrations are such listeners) and ``echo=True`` logging —
:func:`execute` fires them around the cursor's ``execute`` exactly as a ``Connection``
does: with a ``Connection`` wrapped around the same pooled connection, the SQL and the
driver's parameters, an execution context per statement (listeners keep their state on
it), the parameters a ``retval=True`` listener returns, and an ``ExceptionContext`` for
``handle_error``.

Whether to observe is decided once per call, when a connection is taken
(:func:`wanted`): an engine with no connection event listener (``Engine._has_events``,
which SQLAlchemy sets when one is added) and no statement logging costs one attribute
test and one ``isEnabledFor``. Logging is wanted only where it was asked for (see
:func:`wanted`), not where INFO is merely inherited.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.engine.base import ExceptionContextImpl
from sqlalchemy.sql.util import _repr_params

#: The loggers whose own level asks for statement logging (SQLAlchemy's documented way).
_ENGINE_LOGGER = logging.getLogger("sqlalchemy.engine")
_ENGINE_CLASS_LOGGER = logging.getLogger("sqlalchemy.engine.Engine")
_Logger = logging.Logger


def wanted(engine: Engine) -> bool:
    """Whether ``engine``'s statements are listened to or logged right now.

    Logged means asked for: ``echo=True`` on the engine, or a level of INFO or lower set
    on the ``sqlalchemy.engine`` logger (or ``sqlalchemy.engine.Engine``) itself. A level
    only inherited from ``sqlalchemy`` or the root logger is not enough: the OpenHands
    SDK's logging set-up raises every logger that was at the root's level, ``sqlalchemy``
    included, to INFO, which would otherwise log every statement of every call.
    """
    if engine._has_events:
        return True
    # Most engines: no level set on either logger (NOTSET is 0) and SQLAlchemy's plain
    # Logger, which it gives an engine with echo off (with echo on, its InstanceLogger).
    # Three attribute reads say no; anything else is looked at closely.
    if _ENGINE_LOGGER.level or _ENGINE_CLASS_LOGGER.level or type(engine.logger) is not _Logger:
        return _asked(engine)
    return False


def _asked(engine: Engine) -> bool:
    """:func:`wanted` where a level is set or the engine's logger is not a plain one."""
    # Asked for first: isEnabledFor is a Python call, and under the SDK's set-up it
    # answers yes for every engine; so is the echo property, read only where the logger
    # is not a plain Logger (an application's logger class may stand in either).
    own = _ENGINE_LOGGER.level
    own_class = _ENGINE_CLASS_LOGGER.level
    logger = engine.logger
    asked = (
        logging.NOTSET < own <= logging.INFO
        or logging.NOTSET < own_class <= logging.INFO
        or (type(logger) is not logging.Logger and bool(engine.echo))
    )
    return asked and logger.isEnabledFor(logging.INFO)


class StatementContext:
    """What a cursor event listener gets as ``context``: the statement being run.

    Listeners keep their own state on it (OpenTelemetry its span), as they do on
    SQLAlchemy's execution context; :class:`~sqlalchemy.engine.ExceptionContext`'s
    ``execution_context`` is this object.
    """

    def __init__(
        self, connection: Connection, cursor: Any, statement: str, parameters: Any
    ) -> None:
        self.root_connection = self.connection = connection
        self.engine = connection.engine
        self.dialect = connection.dialect
        self.cursor = cursor
        self.statement = statement
        self.parameters = parameters
        self.execution_options = connection._execution_options
        self.executemany = False
        self.compiled = None
        self.isinsert = self.isupdate = self.isdelete = False
        self.is_text = True


def execute(
    connection: Connection, cursor: Any, statement: str, parameters: Any = None, many: bool = False
) -> None:
    """``cursor.execute(statement, parameters)`` with the engine's events and logging around it.

    ``many``: ``executemany`` with a list of parameter sets.

    Raises:
        Exception: the driver's own error, after the ``handle_error`` listeners saw it.
    """
    engine = connection.engine
    dispatch = engine.dispatch
    context = StatementContext(connection, cursor, statement, parameters)
    context.executemany = many
    if engine._has_events:
        for listener in dispatch.before_cursor_execute:
            statement, parameters = listener(
                connection, cursor, statement, parameters, context, many
            )
    logger = engine.logger
    if logger.isEnabledFor(logging.INFO):
        logger.info(statement)
        shown = _repr_params(parameters, 10, ismulti=many) if parameters else "()"
        logger.info("[sqlstore] %r", shown)
    try:
        if many:
            cursor.executemany(statement, parameters)
        elif parameters is None:
            cursor.execute(statement)
        else:
            cursor.execute(statement, parameters)
    except Exception as exc:
        # handle_error is a dialect event (its listeners live on the engine's dialect).
        handlers = engine.dialect.dispatch.handle_error
        if handlers:
            failure = ExceptionContextImpl(
                exc,
                None,
                engine,
                engine.dialect,
                connection,
                cursor,
                statement,
                parameters,
                context,  # type: ignore[arg-type]  # what listeners read of it, it has
                False,
                False,
                False,
            )
            for listener in handlers:
                listener(failure)
        raise
    if engine._has_events:
        dispatch.after_cursor_execute(connection, cursor, statement, parameters, context, many)


__all__ = ["StatementContext", "execute", "wanted"]
