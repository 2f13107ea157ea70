"""PostgreSQL: a lock block's deferred statements, queued, then sent in one pipeline.

A deferred statement costs no I/O when it is deferred: its parameters are encoded and
queued. The queue goes to the server with the ``COMMIT`` (or with the next statement
that needs its answer) in libpq's pipeline mode, driven here directly: each statement
a prepared ``Bind``/``Execute``, one ``Sync`` at the end, one round trip for all. The
server runs them in order and skips everything after the first that fails, which is
reported as that statement's :class:`~sqlstore.deferral.StatementFailed`.

Why not psycopg's own pipeline and a cursor per statement: there each pipelined
``execute`` runs psycopg's Python adaptation, its command queue and a non-blocking
flush. A write in a lock block took 198k client instructions that way (the raw driver's
own prepared ``execute``, waiting for its answer: 109k), and takes 71k queued here (see
``bench/results/instructions.md`` for the whole SDK append).

Statements are prepared on the connection the first time one of its shapes (its SQL
and its parameters' types) is sent on it, by name (``sqlstore_<n>``), in the same
pipeline; where the connection prepares nothing (``prepare_threshold=None``, for
PgBouncer before 1.21) they go unnamed. Every send and every wait runs inside the
connection's ``wait``, behind its read timeout and its fork guard.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cache
from typing import TYPE_CHECKING, Any, NoReturn

from ..deferral import Deferral, Params, StatementFailed

if TYPE_CHECKING:
    from ..connection import PooledConnection
    from ..statements import Statement

#: Bytes of parameters queued at most before the queue is sent ahead of the ``COMMIT``.
_QUEUE_BYTES = 4 << 20
#: Names a connection gives at most (sqlstore's statements take a few dozen shapes).
_PREPARED_MAX = 256
#: SQLSTATE invalid_sql_statement_name: a prepared statement the server no longer has.
_NOT_PREPARED = "26000"
# Parameter type OIDs: bytea (sent as is, binary), int8 (text); a str is sent as text
# of unknown type, as psycopg sends it, so the server types it by its context.
_BYTEA, _INT8, _UNKNOWN = 17, 20, 0
_PARAM = re.compile(r"%\((\w+)\)s|%%")

#: A statement as libpq takes it: its SQL with ``$n`` placeholders, and the names of
#: its parameters in ``$n`` order.
Shape = tuple[bytes, tuple[str, ...]]
#: One queued statement: (shape's SQL, values, formats, types, label).
Queued = tuple[bytes, list[Any], list[int], tuple[int, ...], str | None]

_shapes: dict[str, Shape] = {}


def shape(sql: str) -> Shape:
    """``sql`` in psycopg's ``%(name)s`` style, as libpq's ``$n`` style (cached)."""
    found = _shapes.get(sql)
    if found is not None:
        return found
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name is None:
            return "%"  # "%%" is a literal percent sign
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    found = _PARAM.sub(number, sql).encode(), tuple(names)
    _shapes[sql] = found
    return found


@cache
def _libpq() -> tuple[Any, ...]:
    """What is used of psycopg: its generators, its errors and its row loader."""
    from psycopg import errors
    from psycopg.adapt import Transformer
    from psycopg.generators import fetch_many, send

    return send, fetch_many, errors.error_from_result, Transformer


@cache
def statuses() -> tuple[tuple[Any, ...], Any]:
    """Libpq's result statuses of a statement that succeeded, and of one that failed."""
    from psycopg.pq import ExecStatus

    return (ExecStatus.COMMAND_OK, ExecStatus.TUPLES_OK), ExecStatus.FATAL_ERROR


class QueueDeferral(Deferral):
    """Deferred statements of a lock block, queued here and sent in one pipeline.

    Kept on its connection for the next block (it holds nothing between blocks).
    """

    def __init__(self, conn: PooledConnection, *, begin: bool = False) -> None:
        self._conn = conn
        self._queued: list[Queued] = [(b"BEGIN", [], [], (), None)] if begin else []
        self._size = 0
        dbapi = conn.dbapi
        #: Names of the shapes prepared on this connection (kept by the driver
        #: connection: a pooled connection outlives this checkout); ``None``: unnamed.
        self._prepared: dict[tuple[bytes, tuple[int, ...]], bytes] | None = (
            getattr(dbapi, "prepared_names", None) if dbapi.prepare_threshold is not None else None
        )
        self._utf8 = dbapi.info.encoding == "utf-8"

    @property
    def sending(self) -> bool:
        """Whether statements are queued, to be sent with the next that needs its answer."""
        return bool(self._queued)

    def defer(self, statement: Statement, params: Params, label: str | None) -> None:
        self._queue(*self._encode(statement, params, label))

    def _encode(
        self, statement: Statement, params: Params, label: str | None
    ) -> tuple[Queued, int]:
        """``statement`` as it is queued, and the bytes of its binary parameters."""
        sql, names = shape(statement.sql)
        args = statement.args(params)
        values: list[Any] = []
        formats: list[int] = []
        types: list[int] = []
        size = 0
        if self._utf8:
            for name in names:
                value = args[name]
                kind = type(value)
                if kind is bytes:
                    values.append(value)
                    formats.append(1)
                    types.append(_BYTEA)
                    size += len(value)
                elif kind is str:
                    values.append(value.encode())
                    formats.append(0)
                    types.append(_UNKNOWN)
                elif kind is int:
                    values.append(str(value).encode())
                    formats.append(0)
                    types.append(_INT8)
                elif value is None:
                    values.append(None)
                    formats.append(0)
                    types.append(_UNKNOWN)
                else:
                    break
            else:
                return (sql, values, formats, tuple(types), label), size
        return self._adapted(sql, [args[name] for name in names], label), 0

    def _adapted(self, sql: bytes, values: list[Any], label: str | None) -> Queued:
        """A statement whose values only psycopg's adapters know how to send."""
        from psycopg.adapt import PyFormat

        transformer = _libpq()[3](self._conn.dbapi)
        dumped = transformer.dump_sequence(values, [PyFormat.AUTO] * len(values))
        formats = [int(f) for f in transformer.formats or ()]
        return sql, list(dumped), formats, tuple(transformer.types or ()), label

    def _queue(self, queued: Queued, size: int) -> None:
        self._queued.append(queued)
        self._size += size
        if self._size > _QUEUE_BYTES:
            self._send()  # bounded memory for a block that writes a lot

    def before_read(self) -> None:
        """Send what is queued and wait for it: the read then sees it."""
        if self._queued:
            self._send()

    def settle(self) -> None:
        if self._queued:
            self._send()

    def ask(self, tail: Sequence[tuple[str | Statement, Params]]) -> list[Any]:
        """Send what is queued, then ``tail``, in one round trip; the first row of each of ``tail``.

        Each of ``tail`` is literal SQL with ``None``, or a statement and its
        parameters. ``None`` for one that returns no rows.

        Raises:
            StatementFailed: a queued statement failed (with its label).
            psycopg.Error: one of ``tail`` failed (the caller tells a lock wait's
                timeout by it).
        """
        start = len(self._queued)
        for what, params in tail:
            if isinstance(what, str):
                self._queued.append((what.encode(), [], [], (), None))
            else:
                # Queued as they are: never sent before the rest of ``tail`` is queued.
                self._queued.append(self._encode(what, params, None)[0])
        results = self._send(first_unlabelled=start)
        transformer = _libpq()[3](self._conn.dbapi)
        rows: list[Any] = []
        for result in results[start:]:
            if result.ntuples:
                transformer.set_pgresult(result)
                rows.append(transformer.load_row(0, tuple))
            else:
                rows.append(None)
        return rows

    def commit(self, then: Sequence[str] = ()) -> None:
        conn = self._conn
        if not self._queued:
            # Nothing queued: a plain COMMIT (every block that only reads or locks).
            if conn.deferral is self:
                conn.deferral = None
            conn.command("COMMIT")
            for sql in then:
                conn.command(sql)
            return
        for sql in ("COMMIT", *then):
            self._queued.append((sql.encode(), [], [], (), None))
        try:
            self._send()
        finally:
            if conn.deferral is self:
                conn.deferral = None

    def discard(self) -> None:
        self._queued.clear()
        self._size = 0
        if self._conn.deferral is self:
            self._conn.deferral = None

    def _send(self, first_unlabelled: int | None = None) -> list[Any]:
        """Send the queue in one pipeline and wait for every answer; their results.

        Raises:
            StatementFailed: the first statement that failed, with its label.
            psycopg.Error: the first that failed is at ``first_unlabelled`` or later.
        """
        queued, self._queued, self._size = self._queued, [], 0
        dbapi = self._conn.dbapi
        prepared = self._prepared
        if prepared is not None and dbapi.names_given >= _PREPARED_MAX:
            prepared = None  # not one more name on this connection: unnamed from now
        pending: dict[tuple[bytes, tuple[int, ...]], bytes] = {}
        results: list[Any] = dbapi.wait(_pipeline(dbapi, queued, prepared, pending))
        ok, failed_status = statuses()
        # A result per statement, and one first per statement prepared with it.
        statements: list[Any] = []
        index = 0
        for position, item in enumerate(queued):
            key = (item[0], item[3])
            if prepared is not None and key in pending:
                result = results[index]
                index += 1
                name = pending.pop(key)
                if result.status == failed_status:
                    self._fail(result, item[4], wrapped=self._wraps(position, first_unlabelled))
                if result.status in ok:
                    prepared[key] = name
            statements.append(results[index])
            index += 1
        for position, (item, result) in enumerate(zip(queued, statements, strict=True)):
            if result.status == failed_status:
                self._fail(result, item[4], wrapped=self._wraps(position, first_unlabelled))
        return statements

    @staticmethod
    def _wraps(position: int, first_unlabelled: int | None) -> bool:
        return first_unlabelled is None or position < first_unlabelled

    def _fail(self, result: Any, label: str | None, *, wrapped: bool) -> NoReturn:
        dbapi = self._conn.dbapi
        error = _libpq()[2](result, encoding=dbapi.info.encoding)
        if getattr(error, "sqlstate", None) == _NOT_PREPARED and self._prepared is not None:
            self._prepared.clear()  # the server lost them (DISCARD ALL): prepare again
        if not wrapped:
            raise error
        raise StatementFailed(error, label) from error


def _pipeline(
    dbapi: Any,
    queued: list[Queued],
    prepared: dict[tuple[bytes, tuple[int, ...]], bytes] | None,
    pending: dict[tuple[bytes, tuple[int, ...]], bytes],
) -> Any:
    """The generator ``wait`` drives: send ``queued`` in pipeline mode, then fetch.

    Returns every result in order (one per ``Parse`` sent, one per statement). The
    sends are made here, so inside ``wait``: behind its fork guard and read timeout.
    ``pending`` gets the names of the shapes prepared here (not yet known to succeed).
    """
    send, fetch_many = _libpq()[:2]
    pgconn = dbapi.pgconn
    pgconn.enter_pipeline_mode()
    expected = 0
    for sql, values, formats, types, _ in queued:
        if not values and not types:
            pgconn.send_query_params(sql, None)
        elif prepared is None:
            pgconn.send_query_params(sql, values, types, formats)
        else:
            key = (sql, types)
            name = prepared.get(key) or pending.get(key)
            if name is None:
                # Never a name given before on this connection: one the server may still
                # hold (a DEALLOCATE not yet sent, a failed one) is never asked for again.
                name = pending[key] = f"sqlstore_{dbapi.names_given}".encode()
                dbapi.names_given += 1
                pgconn.send_prepare(name, sql, types)
                expected += 1
            pgconn.send_query_prepared(name, values, formats)
        expected += 1
    pgconn.pipeline_sync()
    yield from send(pgconn)
    results: list[Any] = []
    for _ in range(expected):
        got = yield from fetch_many(pgconn)
        # One result per query (a failure, or PIPELINE_ABORTED after one).
        results.append(got[-1] if got else None)
    yield from fetch_many(pgconn)  # the Sync's
    pgconn.exit_pipeline_mode()
    return results
