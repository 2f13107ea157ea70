"""Operations on a sqlstore database: the library beneath the ``sqlstore`` command.

Every function takes an engine (from :func:`sqlstore.create_engine`) and returns plain
values; the command line (:mod:`sqlstore.cli`) only parses arguments and prints.

* Schema: :func:`upgrade`, :func:`downgrade`, :func:`current_revision`,
  :func:`head_revision`, :func:`stamp`, :func:`require_schema`.
* Inspection and single files: :func:`namespaces`, :func:`ls`, :func:`du`,
  :func:`cat`, :func:`put`, :func:`rm`.
* Bulk: :func:`import_directory`, :func:`export_namespace` and :func:`copy`
  (:mod:`sqlstore.transfer`), :func:`purge` (:mod:`sqlstore.retention`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from . import migrations, paths
from .catalog import (
    FileRow,
    NamespaceStats,
    current_revision,
    file_rows,
    namespace_stats,
    require_schema,
)
from .errors import SchemaError
from .retention import PurgeReport, parse_age, purge
from .store import SQLFileStore
from .transfer import TransferReport, copy, export_namespace, import_directory

if TYPE_CHECKING:
    pass

__all__ = [
    "Entry",
    "NamespaceStats",
    "PurgeReport",
    "TransferReport",
    "Usage",
    "cat",
    "copy",
    "current_revision",
    "downgrade",
    "du",
    "export_namespace",
    "head_revision",
    "import_directory",
    "layout",
    "ls",
    "namespaces",
    "parse_age",
    "partitions",
    "purge",
    "put",
    "require_schema",
    "rm",
    "stamp",
    "upgrade",
]

# -- schema ----------------------------------------------------------------------------


def head_revision() -> str:
    """The newest revision of sqlstore's migrations (those shipped with this package)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(migrations.alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package ships its revisions
        raise SchemaError("sqlstore's migrations have no head revision")
    return head


def upgrade(engine: Engine, revision: str = "head", *, partitions: int | None = None) -> None:
    """Upgrade sqlstore's schema to ``revision`` (see :func:`sqlstore.migrate`).

    Args:
        engine: The database.
        revision: The target revision.
        partitions: Also make the tables this many hash partitions by namespace (0
            undoes it); ``None`` keeps the layout.
    """
    migrations.migrate(engine, revision, partitions=partitions)


def partitions(engine: Engine) -> int:
    """How many hash partitions by namespace sqlstore's tables have (0: none)."""
    return migrations.partitions(engine)


def layout(engine: Engine) -> str:
    """One line on the tables' layout: plain, hash partitions, or Citus shards on workers."""
    return migrations.layout(engine)


def downgrade(engine: Engine, revision: str) -> None:
    """Downgrade sqlstore's schema to ``revision``; ``"base"`` drops sqlstore's tables."""
    migrations.downgrade(engine, revision)


def stamp(engine: Engine, revision: str) -> None:
    """Record ``revision`` without running migrations (see :func:`sqlstore.migrations.stamp`)."""
    migrations.stamp(engine, revision)


# -- inspection ------------------------------------------------------------------------


def namespaces(engine: Engine, prefix: str | None = None) -> list[NamespaceStats]:
    """Every namespace with its file count, total size and newest write (UTC), by name.

    Args:
        engine: The database.
        prefix: Only namespaces starting with this.
    """
    require_schema(engine)
    return namespace_stats(engine, prefix=prefix)


@dataclass(frozen=True)
class Entry:
    """One line of :func:`ls`: a file, or a directory with the totals below it.

    Attributes:
        path: The path in the namespace; a directory's ends with ``/``.
        is_dir: Whether this is a directory.
        files: 1 for a file; the number of files below a directory.
        size: The file's size, or the total size below the directory, in bytes.
        updated_at: The newest write (aware, UTC).
    """

    path: str
    is_dir: bool
    files: int
    size: int
    updated_at: datetime


def ls(engine: Engine, namespace: str, path: str = "", *, recursive: bool = False) -> list[Entry]:
    """The files and directories at ``path``, like ``store.list`` with sizes and times.

    Args:
        engine: The database.
        namespace: The namespace.
        path: A directory (default: the root) or a file.
        recursive: List every file below ``path`` instead of its direct children.

    Returns:
        The entries sorted by path; just the file itself if ``path`` is a file.

    Raises:
        FileNotFoundError: nothing exists at ``path`` (or the namespace has no files).
    """
    path_n, rows = _rows_at(engine, namespace, path)
    if len(rows) == 1 and rows[0].path == path_n:
        row = rows[0]
        return [Entry(row.path, False, 1, row.size, row.updated_at)]
    base = "" if path_n == paths.ROOT else path_n + "/"
    if recursive:
        return sorted(
            (Entry(row.path, False, 1, row.size, row.updated_at) for row in rows),
            key=lambda entry: entry.path,
        )
    entries: dict[str, Entry] = {}
    for row in rows:
        rest = row.path[len(base) :]
        child, sep, _ = rest.partition("/")
        if not sep:
            entries[child] = Entry(base + child, False, 1, row.size, row.updated_at)
            continue
        seen = entries.get(child + "/")
        if seen is None:
            entries[child + "/"] = Entry(base + child + "/", True, 1, row.size, row.updated_at)
        else:
            entries[child + "/"] = Entry(
                seen.path,
                True,
                seen.files + 1,
                seen.size + row.size,
                max(seen.updated_at, row.updated_at),
            )
    return [entries[name] for name in sorted(entries)]


@dataclass(frozen=True)
class Usage:
    """What :func:`du` counts below one path.

    Attributes:
        namespace: The namespace.
        path: The path counted (``""``: the whole namespace).
        files: How many files lie at or below it.
        size: Their total size in bytes.
        updated_at: The newest write among them (aware, UTC), or ``None`` if none.
    """

    namespace: str
    path: str
    files: int
    size: int
    updated_at: datetime | None


def du(engine: Engine, namespace: str, path: str = "") -> Usage:
    """The number and total size of the files at or below ``path``.

    Raises:
        FileNotFoundError: nothing exists at ``path`` (or the namespace has no files).
    """
    path_n, rows = _rows_at(engine, namespace, path)
    return Usage(
        namespace,
        path_n,
        len(rows),
        sum(row.size for row in rows),
        max(row.updated_at for row in rows),
    )


def cat(engine: Engine, namespace: str, path: str) -> bytes:
    """The content of one file, exactly as stored.

    Raises:
        FileNotFoundError: no file at ``path``.
        IsADirectoryError: ``path`` is a directory.
    """
    require_schema(engine)
    try:
        return SQLFileStore(engine, namespace).read_bytes(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such file: {namespace}/{path}") from None


def put(engine: Engine, namespace: str, path: str, data: bytes) -> None:
    """Create or overwrite one file with ``data``.

    Raises:
        IsADirectoryError: ``path`` is a directory or the root.
        FileExistsError: a parent of ``path`` is a file.
    """
    require_schema(engine)
    SQLFileStore(engine, namespace).write(path, data)


def rm(engine: Engine, namespace: str, path: str, *, recursive: bool = False) -> int:
    """Delete a file, or with ``recursive`` a directory and everything below it.

    ``rm(engine, ns, "/", recursive=True)`` empties the namespace.

    Returns:
        The number of files deleted.

    Raises:
        FileNotFoundError: nothing exists at ``path``.
        IsADirectoryError: ``path`` is a directory and ``recursive`` is false.
    """
    require_schema(engine)
    path_n = paths.normalize(path)
    rows = file_rows(engine, namespace, path_n)
    if not rows:
        raise FileNotFoundError(_missing(namespace, path_n))
    is_file = len(rows) == 1 and rows[0].path == path_n
    if not is_file and not recursive:
        raise IsADirectoryError(f"{namespace}/{path_n} is a directory (use -r to delete it)")
    SQLFileStore(engine, namespace).delete(path_n)
    return len(rows)


def _rows_at(engine: Engine, namespace: str, path: str) -> tuple[str, list[FileRow]]:
    """The normalised ``path`` and the files at or below it; raises if there are none."""
    require_schema(engine)
    path_n = paths.normalize(path)
    rows = file_rows(engine, namespace, path_n)
    if not rows:
        raise FileNotFoundError(_missing(namespace, path_n))
    return path_n, rows


def _missing(namespace: str, path: str) -> str:
    if path == paths.ROOT:
        return f"no such namespace (it has no files): {namespace}"
    return f"no such file or directory: {namespace}/{path}"
