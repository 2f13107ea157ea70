"""The few queries the store API cannot ask: across namespaces, and the database's clock.

The agent server lists every conversation at once (one query for the whole catalog,
not two reads per conversation) and judges how recent a write is by the database's
own clock. Everything else goes through :class:`sqlstore.SQLFileStore`. These run
through the engine's :class:`~sqlstore.database.Database` (its retries and error
conversion) and read ``sqlstore_files`` only; a file whose content continues in
``sqlstore_chunks`` (over 1 MiB on MySQL/MariaDB) is reported as such and read through
the store instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, select, tuple_

from .. import paths
from ..catalog import query
from ..database import database_for
from ..schema import files

_f = files.c
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
    db = database_for(engine)
    statement = select(_f.namespace, _f.name, _f.size, _f.updated_at, db.strategy.utc_now()).where(
        _f.parent == paths.dir_key(paths.ROOT), _f.name.in_(list(names))
    )
    if namespace is not None:
        statement = statement.where(_f.namespace == namespace)
    found = []
    for ns, name, size, updated, clock in query(db, statement):
        written, current = db.strategy.from_db_time(updated), db.strategy.from_db_time(clock)
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
    db = database_for(engine)
    wanted = {(ns, paths.file_id(ns, path)): (ns, path) for ns, path in keys}
    found: dict[tuple[str, str], bytes | None] = {}
    ids = list(wanted)
    for start in range(0, len(ids), _BATCH):
        # By (namespace, file id): the primary key, each pair in one partition.
        batch = ids[start : start + _BATCH]
        statement = select(_f.namespace, _f.file_id, _f.content, _f.chunk_count).where(
            tuple_(_f.namespace, _f.file_id).in_(batch)
        )
        for ns, file_id, content, chunk_count in query(db, statement):
            key = wanted[(ns, bytes(file_id))]
            found[key] = None if chunk_count else bytes(content)
    return found


def directory_contents(engine: Engine, namespace: str, directory: str) -> dict[str, bytes | None]:
    """The files directly inside ``directory`` of ``namespace``, by name, in one query.

    ``None`` as for :func:`contents`.
    """
    statement = select(_f.name, _f.content, _f.chunk_count).where(
        _f.namespace == namespace, _f.parent == paths.dir_key(paths.normalize(directory))
    )
    return {
        name: None if chunk_count else bytes(content)
        for name, content, chunk_count in query(database_for(engine), statement)
    }
