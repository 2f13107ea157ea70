"""The few queries the store API cannot ask: across namespaces, and the database's clock.

The agent server lists every conversation at once (one query for the whole catalog,
not two reads per conversation) and judges how recent a write is by the database's
own clock. Everything else goes through :class:`sqlstore.SQLFileStore`. These are
plain SQLAlchemy Core on ``engine.connect()``, reading ``sqlstore_files`` only; a
file whose content continues in ``sqlstore_chunks`` (over 1 MiB on MySQL/MariaDB) is
reported as such and read through the store instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, func, select

from .. import paths
from ..schema import files

_f = files.c
_MYSQL = ("mysql", "mariadb")
#: Rows per ``IN (...)`` list when fetching contents by key.
_BATCH = 500


@dataclass(frozen=True)
class RootFile:
    """A file at the top level of a namespace, without its content.

    Attributes:
        namespace: Its namespace.
        name: Its name (a top-level path).
        size: Its size in bytes.
        age: Seconds since it was last written, by the database's clock.
        written: When it was last written, in microseconds (a change token).
    """

    namespace: str
    name: str
    size: int
    age: float
    written: int


def root_files(
    engine: Engine, names: Sequence[str], namespace: str | None = None
) -> list[RootFile]:
    """The top-level files called one of ``names`` in every namespace (or in one).

    One query, which never reads content; the database's clock is read in the same
    round trip, so ages need no trust in this host's clock.
    """
    now = func.utc_timestamp() if engine.dialect.name in _MYSQL else func.now()
    query = select(_f.namespace, _f.name, _f.size, _f.updated_at, now).where(
        _f.parent == paths.dir_key(paths.ROOT), _f.name.in_(list(names))
    )
    if namespace is not None:
        query = query.where(_f.namespace == namespace)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    found = []
    for ns, name, size, updated, clock in rows:
        written, current = _utc(updated), _utc(clock)
        found.append(
            RootFile(
                ns,
                name,
                int(size),
                (current - written).total_seconds(),
                int(written.timestamp() * 1_000_000),
            )
        )
    return found


def contents(
    engine: Engine, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], bytes | None]:
    """The content of each existing ``(namespace, path)``, keyed alike.

    ``None`` for a file whose content continues in ``sqlstore_chunks``: read it
    through the store. Missing files are left out.
    """
    wanted = {paths.file_id(ns, path): (ns, path) for ns, path in keys}
    found: dict[tuple[str, str], bytes | None] = {}
    ids = list(wanted)
    with engine.connect() as conn:
        for start in range(0, len(ids), _BATCH):
            batch = ids[start : start + _BATCH]
            query = select(_f.file_id, _f.content, _f.chunk_count).where(_f.file_id.in_(batch))
            for file_id, content, chunk_count in conn.execute(query):
                key = wanted[bytes(file_id)]
                found[key] = None if chunk_count else bytes(content)
    return found


def directory_contents(engine: Engine, namespace: str, directory: str) -> dict[str, bytes | None]:
    """The files directly inside ``directory`` of ``namespace``, by name, in one query.

    ``None`` as for :func:`contents`.
    """
    query = select(_f.name, _f.content, _f.chunk_count).where(
        _f.namespace == namespace, _f.parent == paths.dir_key(paths.normalize(directory))
    )
    with engine.connect() as conn:
        return {
            name: None if chunk_count else bytes(content)
            for name, content, chunk_count in conn.execute(query)
        }


def _utc(value: Any) -> datetime:
    """A timestamp as the database returns it, as an aware UTC ``datetime``.

    PostgreSQL returns aware values; SQLite and MySQL/MariaDB store naive UTC.
    """
    if not isinstance(value, datetime):
        value = datetime.fromisoformat(str(value))
    aware: datetime = value
    return aware.astimezone(UTC) if aware.tzinfo is not None else aware.replace(tzinfo=UTC)
