r"""Read-only queries over ``sqlstore_files`` for administration, in SQLAlchemy Core.

The store answers questions about one path; the operations tools need whole
namespaces: every file with its size and times, and per-namespace totals. This module
asks those questions without reading content, and turns what the database returns
into plain values:

* a path, rebuilt from the ``parent`` and ``name`` columns (:func:`path_of`);
* a timestamp, as an aware UTC ``datetime`` whatever the dialect returns
  (:class:`Clock`): PostgreSQL returns aware values; SQLite (``CURRENT_TIMESTAMP``)
  and MySQL/MariaDB (``UTC_TIMESTAMP()``, whatever the session's time zone) store
  naive UTC.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, column, func, inspect, or_, select, table

from . import paths
from .engine import safe_url
from .errors import SchemaError
from .paths import path_of
from .schema import SCHEMA_REVISION, VERSION_TABLE, files

_MYSQL = ("mysql", "mariadb")
_f = files.c


def current_revision(engine: Engine) -> str | None:
    """The database's sqlstore revision, or ``None`` if it has no sqlstore schema.

    Reads sqlstore's Alembic version table directly (Alembic is not imported).

    Raises:
        SchemaError: the version table holds several revisions.
    """
    version = table(VERSION_TABLE, column("version_num"))
    with engine.connect() as conn:
        if not inspect(conn).has_table(VERSION_TABLE):
            return None
        found = [str(v) for v in conn.execute(select(version.c.version_num)).scalars()]
    if len(found) > 1:
        raise SchemaError(f"{safe_url(engine.url)} records several sqlstore revisions: {found}")
    return found[0] if found else None


def require_schema(engine: Engine) -> None:
    """Raise unless the database's schema is the one this sqlstore reads and writes.

    Raises:
        SchemaError: the schema is missing or at another revision; the message names
            the command that fixes it.
    """
    found = current_revision(engine)
    if found != SCHEMA_REVISION:
        where = "no sqlstore schema" if found is None else f"schema revision {found}"
        raise SchemaError(
            f"{safe_url(engine.url)} has {where}, this sqlstore needs {SCHEMA_REVISION}; "
            f"run `sqlstore db upgrade`"
        )


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
class Clock:
    """The database's clock, and its timestamps as aware UTC values.

    Attributes:
        dialect: The engine's dialect name.
        now: The database's current time, as sqlstore stores timestamps there; use it
            to compute cutoffs that compare with stored values in the database's terms.
    """

    dialect: str
    now: datetime

    def to_utc(self, value: datetime) -> datetime:
        """A stored timestamp as an aware UTC ``datetime``."""
        if value.tzinfo is not None:
            return value.astimezone(UTC)
        return value.replace(tzinfo=UTC)

    def to_db(self, value: datetime) -> datetime:
        """An aware ``datetime`` as this database stores it (a bind parameter value)."""
        utc = value.astimezone(UTC)
        if self.dialect == "postgresql":
            return utc
        naive = utc.replace(tzinfo=None)
        if self.dialect in _MYSQL:
            naive = naive.replace(microsecond=0)  # DATETIME would round, not truncate
        return naive


def read_clock(conn: Connection) -> Clock:
    """The database's current time, read on ``conn``."""
    name = conn.dialect.name
    # sqlstore stores UTC_TIMESTAMP() on MySQL/MariaDB, whatever the session time zone.
    now_utc = func.utc_timestamp() if name in _MYSQL else func.now()
    return Clock(name, conn.execute(select(now_utc)).scalar_one())


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


def _file_row(row: Any, clock: Clock) -> FileRow:
    file_id, parent, name, size, created, updated = row
    return FileRow(
        bytes(file_id),
        path_of(bytes(parent), name),
        int(size),
        clock.to_utc(created),
        clock.to_utc(updated),
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
    directory = paths.normalize(directory)
    columns = (_f.file_id, _f.parent, _f.name, _f.size, _f.created_at, _f.updated_at)
    where: list[Any] = [_f.namespace == namespace]
    if directory != paths.ROOT:
        low, high = paths.subtree_range(directory)
        where.append(
            or_(
                _f.file_id == paths.file_id(namespace, directory),
                and_(_f.parent >= low, _f.parent < high),
            )
        )
    query = select(*columns).where(*where).order_by(_f.parent, _f.name).limit(batch)
    last: tuple[bytes, str] | None = None
    with engine.connect() as conn:
        clock = read_clock(conn)
    while True:
        page = query
        if last is not None:
            parent, name = last
            page = query.where(or_(_f.parent > parent, and_(_f.parent == parent, _f.name > name)))
        with engine.connect() as conn:
            rows = conn.execute(page).all()
        if not rows:
            return
        yield [_file_row(row, clock) for row in rows]
        if len(rows) < batch:
            return
        last = (bytes(rows[-1][1]), rows[-1][2])


def file_rows(engine: Engine, namespace: str, directory: str = "") -> list[FileRow]:
    """Every file of ``namespace`` at or below ``directory`` (see :func:`iter_files`)."""
    return [row for batch in iter_files(engine, namespace, directory) for row in batch]


def rows_by_id(conn: Connection, clock: Clock, file_ids: list[bytes]) -> dict[bytes, FileRow]:
    """The rows among ``file_ids`` that exist, keyed by file id."""
    if not file_ids:
        return {}
    columns = (_f.file_id, _f.parent, _f.name, _f.size, _f.created_at, _f.updated_at)
    rows = conn.execute(select(*columns).where(_f.file_id.in_(file_ids))).all()
    found = [_file_row(row, clock) for row in rows]
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
    query = (
        select(_f.namespace, func.count(), func.sum(_f.size), func.max(_f.updated_at))
        .where(*_prefix_filter(prefix))
        .group_by(_f.namespace)
        .order_by(_f.namespace)
    )
    if namespaces is not None:
        query = query.where(_f.namespace.in_(namespaces))
    with engine.connect() as conn:
        clock = read_clock(conn)
        rows = conn.execute(query).all()
    return [
        NamespaceStats(ns, int(count), int(size or 0), clock.to_utc(updated))
        for ns, count, size, updated in rows
    ]


@dataclass(frozen=True)
class StaleScan:
    """The result of :func:`stale_namespaces`.

    Attributes:
        cutoff: The cutoff in the database's own terms (a bind parameter value).
        cutoff_utc: The same instant, aware, in UTC.
        namespaces: The namespaces whose newest write is older than the cutoff.
    """

    cutoff: datetime
    cutoff_utc: datetime
    namespaces: list[NamespaceStats]


def stale_namespaces(
    engine: Engine,
    age: timedelta,
    *,
    prefix: str | None = None,
    batch: int = 500,
) -> StaleScan:
    """Namespaces whose newest write is older than ``age``, by the database's clock.

    The cutoff is the database's ``now()`` minus ``age``, compared with stored values
    in the database's own terms, so client clocks and time zones play no part. The
    namespaces are found ``batch`` at a time (keyset pagination on the namespace).

    Args:
        engine: The database.
        age: How old the newest write of a namespace must be.
        prefix: Only namespaces starting with this.
        batch: Namespaces per query.
    """
    newest = func.max(_f.updated_at)
    with engine.connect() as conn:
        clock = read_clock(conn)
    cutoff = clock.now - age
    query = (
        select(_f.namespace, func.count(), func.sum(_f.size), newest)
        .where(*_prefix_filter(prefix))
        .group_by(_f.namespace)
        .having(newest < cutoff)
        .order_by(_f.namespace)
        .limit(batch)
    )
    found: list[NamespaceStats] = []
    last: str | None = None
    while True:
        page = query if last is None else query.where(_f.namespace > last)
        with engine.connect() as conn:
            rows = conn.execute(page).all()
        found.extend(
            NamespaceStats(ns, int(count), int(size or 0), clock.to_utc(updated))
            for ns, count, size, updated in rows
        )
        if len(rows) < batch:
            return StaleScan(cutoff, clock.to_utc(cutoff), found)
        last = rows[-1][0]


def written_since(engine: Engine, namespace: str, cutoff: datetime) -> bool:
    """Whether any file of ``namespace`` was written at or after ``cutoff`` (database terms)."""
    query = select(func.count()).where(_f.namespace == namespace, _f.updated_at >= cutoff)
    with engine.connect() as conn:
        return bool(conn.execute(query).scalar_one())
