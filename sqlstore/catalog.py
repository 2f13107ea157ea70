r"""Read-only queries over ``sqlstore_files`` for administration, in SQLAlchemy Core.

The store answers questions about one path; the operations tools need whole
namespaces: every file with its size and times, and per-namespace totals. This module
asks those questions without reading content, and turns what the database returns
into plain values:

* a path, rebuilt from the ``parent`` and ``name`` columns (:func:`path_of`);
* a timestamp, as an aware UTC ``datetime`` whatever the dialect returns (each
  dialect strategy knows how its database stores them).

Every query runs through the engine's :class:`~sqlstore.database.Database`, with the
store's retries and error conversion.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, func, or_, select
from sqlalchemy.sql import ClauseElement

from . import paths
from .database import Database, database_for
from .errors import SchemaError
from .paths import path_of
from .schema import SCHEMA_REVISION, files
from .statements import Statement

_f = files.c
_FILE_COLUMNS = (_f.file_id, _f.parent, _f.name, _f.size, _f.created_at, _f.updated_at)


def query(db: Database, statement: ClauseElement) -> list[Sequence[Any]]:
    """The rows of an ad hoc statement (compiled on the spot), with the store's retries."""
    compiled = Statement.of(statement, db.engine.dialect)
    return db.run(lambda conn: conn.all(compiled))


def current_revision(engine: Engine) -> str | None:
    """The database's sqlstore revision, or ``None`` if it has no sqlstore schema.

    Reads sqlstore's Alembic version table directly (Alembic is not imported).

    Raises:
        SchemaError: the version table holds several revisions.
    """
    return database_for(engine).revision()


def require_schema(engine: Engine) -> None:
    """Raise unless the database's schema is the one this sqlstore reads and writes.

    Raises:
        SchemaError: the schema is missing or at another revision; the message names
            the command that fixes it.
    """
    db = database_for(engine)
    found = db.revision()
    if found != SCHEMA_REVISION:
        raise SchemaError(db.schema_message(found))


def prefix_range(prefix: str) -> tuple[str, str | None]:
    """The namespace range ``[low, high)`` holding exactly the names that start with ``prefix``.

    Namespaces compare bytewise in UTF-8 on every dialect, which is code point order,
    so the upper bound is ``prefix`` with its last character incremented (``None``:
    no upper bound).
    """
    chars = list(prefix)
    while chars:
        code = ord(chars[-1]) + 1
        if 0xD800 <= code <= 0xDFFF:  # surrogates are not encodable: skip past them
            code = 0xE000
        if code <= 0x10FFFF:
            chars[-1] = chr(code)
            return prefix, "".join(chars)
        chars.pop()
    return prefix, None


def _prefix_filter(prefix: str | None) -> list[Any]:
    if not prefix:
        return []
    low, high = prefix_range(prefix)
    conditions: list[Any] = [_f.namespace >= low]
    if high is not None:
        conditions.append(_f.namespace < high)
    return conditions


@dataclass(frozen=True)
class FileRow:
    """One stored file, without its content."""

    file_id: bytes
    path: str
    size: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class NamespaceStats:
    """Totals of one namespace."""

    namespace: str
    files: int
    size: int
    updated_at: datetime


def _file_row(db: Database, row: Sequence[Any]) -> FileRow:
    file_id, parent, name, size, created, updated = row
    return FileRow(
        bytes(file_id),
        path_of(bytes(parent), name),
        int(size),
        db.strategy.from_db_time(created),
        db.strategy.from_db_time(updated),
    )


def iter_files(
    engine: Engine, namespace: str, directory: str = "", *, batch: int = 500
) -> Iterator[list[FileRow]]:
    """Every file of ``namespace`` at or below ``directory``, in batches, in key order.

    Each batch is its own query (keyset pagination on the ``(namespace, parent, name)``
    index), so no cursor stays open between batches and writes may happen in between.

    Args:
        engine: The database.
        namespace: The namespace to list.
        directory: A path; the file at that path and every file below it are listed.
        batch: Rows per query.
    """
    db = database_for(engine)
    directory = paths.normalize(directory)
    where: list[Any] = [_f.namespace == namespace]
    if directory != paths.ROOT:
        low, high = paths.subtree_range(directory)
        where.append(
            or_(
                _f.file_id == paths.file_id(namespace, directory),
                and_(_f.parent >= low, _f.parent < high),
            )
        )
    page = select(*_FILE_COLUMNS).where(*where).order_by(_f.parent, _f.name).limit(batch)
    last: tuple[bytes, str] | None = None
    while True:
        statement = page
        if last is not None:
            parent, name = last
            statement = page.where(
                or_(_f.parent > parent, and_(_f.parent == parent, _f.name > name))
            )
        rows = query(db, statement)
        if not rows:
            return
        yield [_file_row(db, row) for row in rows]
        if len(rows) < batch:
            return
        last = (bytes(rows[-1][1]), rows[-1][2])


def file_rows(engine: Engine, namespace: str, directory: str = "") -> list[FileRow]:
    """Every file of ``namespace`` at or below ``directory`` (see :func:`iter_files`)."""
    return [row for batch in iter_files(engine, namespace, directory) for row in batch]


def rows_by_id(engine: Engine, namespace: str, file_ids: list[bytes]) -> dict[bytes, FileRow]:
    """The rows of ``namespace`` among ``file_ids`` that exist, keyed by file id."""
    if not file_ids:
        return {}
    db = database_for(engine)
    statement = select(*_FILE_COLUMNS).where(_f.namespace == namespace, _f.file_id.in_(file_ids))
    found = [_file_row(db, row) for row in query(db, statement)]
    return {row.file_id: row for row in found}


def namespace_stats(
    engine: Engine,
    *,
    prefix: str | None = None,
    namespaces: list[str] | None = None,
) -> list[NamespaceStats]:
    """File count, total size and newest write of each namespace, sorted by name.

    Args:
        engine: The database.
        prefix: Only namespaces starting with this.
        namespaces: Only these namespaces.
    """
    db = database_for(engine)
    statement = (
        select(_f.namespace, func.count(), func.sum(_f.size), func.max(_f.updated_at))
        .where(*_prefix_filter(prefix))
        .group_by(_f.namespace)
        .order_by(_f.namespace)
    )
    if namespaces is not None:
        statement = statement.where(_f.namespace.in_(namespaces))
    return [_stats(db, row) for row in query(db, statement)]


def _stats(db: Database, row: Sequence[Any]) -> NamespaceStats:
    ns, count, size, updated = row
    return NamespaceStats(ns, int(count), int(size or 0), db.strategy.from_db_time(updated))


@dataclass(frozen=True)
class StaleScan:
    """The result of :func:`stale_namespaces`.

    Attributes:
        cutoff: The cutoff, aware, in UTC (by the database's clock).
        namespaces: The namespaces whose newest write was older than the cutoff.
    """

    cutoff: datetime
    namespaces: list[NamespaceStats]


def stale_namespaces(
    engine: Engine,
    age: timedelta,
    *,
    prefix: str | None = None,
    batch: int = 500,
) -> StaleScan:
    """Namespaces whose newest write is older than ``age``, by the database's clock.

    The cutoff is the database's ``now()`` minus ``age``, so client clocks and time
    zones play no part. The namespaces are found ``batch`` at a time (keyset pagination
    on the namespace).

    Args:
        engine: The database.
        age: How old the newest write of a namespace must be.
        prefix: Only namespaces starting with this.
        batch: Namespaces per query.
    """
    db = database_for(engine)
    cutoff = db.now() - age
    newest = func.max(_f.updated_at)
    statement = (
        select(_f.namespace, func.count(), func.sum(_f.size), newest)
        .where(*_prefix_filter(prefix))
        .group_by(_f.namespace)
        .having(newest < db.strategy.to_db_time(cutoff))
        .order_by(_f.namespace)
        .limit(batch)
    )
    found: list[NamespaceStats] = []
    last: str | None = None
    while True:
        page = statement if last is None else statement.where(_f.namespace > last)
        rows = query(db, page)
        found.extend(_stats(db, row) for row in rows)
        if len(rows) < batch:
            return StaleScan(cutoff, found)
        last = rows[-1][0]
