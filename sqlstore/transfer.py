"""Moving conversations in bulk: import from disk, export to disk, copy between databases.

All three are idempotent and resumable: a file whose bytes are already identical at the
destination is left alone (compared by size, then byte for byte), so running a command
again after an interruption finishes the job and a second run changes nothing. Writes
go through :class:`~sqlstore.store.SQLFileStore`, a batch at a time in one lock block,
so each batch is one transaction: an interrupted batch leaves nothing half-written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import batched
from pathlib import Path

from sqlalchemy import Engine, bindparam, update

from . import paths
from .catalog import FileRow, iter_files, namespace_stats, require_schema, rows_by_id
from .connection import PooledConnection
from .database import database_for
from .progress import QUIET, Progress
from .schema import files
from .statements import Statement
from .store import SQLFileStore

#: Files per batch: one metadata query and one transaction each.
BATCH_FILES = 200
#: A batch is written early once its contents reach this many bytes.
BATCH_BYTES = 64 << 20
#: The lock path each batch of writes holds; the lock block makes the batch atomic.
BATCH_LOCK = ".sqlstore/transfer.lock"
#: How close two timestamps must be to count as the same (MySQL keeps whole seconds).
TIME_TOLERANCE = timedelta(seconds=1)


@dataclass
class TransferReport:
    """What an import, export or copy did.

    Attributes:
        namespaces: The namespaces transferred, in order.
        written: Files written (new or changed).
        unchanged: Files already identical at the destination.
        skipped: Files not transferred (see ``skipped_paths``).
        bytes_written: Total size of the files written.
        skipped_paths: What was skipped and why, e.g. ``"conv/events/.eventlog.lock (lock file)"``.
    """

    namespaces: list[str] = field(default_factory=list)
    written: int = 0
    unchanged: int = 0
    skipped: int = 0
    bytes_written: int = 0
    skipped_paths: list[str] = field(default_factory=list)

    def skip(self, where: str, why: str) -> None:
        """Record a skipped file."""
        self.skipped += 1
        self.skipped_paths.append(f"{where} ({why})")


class _Writer:
    """Buffers writes to one store and writes each batch in one lock block (a transaction)."""

    def __init__(self, store: SQLFileStore, report: TransferReport) -> None:
        self.store = store
        self.report = report
        self.pending: list[tuple[str, bytes]] = []
        self.size = 0

    def add(self, path: str, data: bytes) -> None:
        self.pending.append((path, data))
        self.size += len(data)
        if len(self.pending) >= BATCH_FILES or self.size >= BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        with self.store.lock(BATCH_LOCK):
            for path, data in self.pending:
                self.store.write(path, data)
        self.report.written += len(self.pending)
        self.report.bytes_written += self.size
        self.pending, self.size = [], 0


# -- import ----------------------------------------------------------------------------


#: The stock agent server's ownership lease (``owner_lease.json``, written through
#: ``owner_lease.tmp``): on sqlstore, ownership is kept in the database instead.
_LEASE_FILES = frozenset({"owner_lease.json", "owner_lease.tmp"})


def _skip_reason(name: str) -> str | None:
    """Why a file of this name is not conversation state, or ``None``."""
    if name.endswith(".lock"):
        return "lock file"  # filelock's, e.g. events/.eventlog.lock; empty, never read
    if name in _LEASE_FILES:
        return "lease file"
    if name.startswith(".") and name.endswith(".tmp"):
        return "temporary file"  # an interrupted atomic write of the SDK
    return None


def _local_tree(root: Path, label: str, report: TransferReport) -> list[tuple[str, Path]]:
    """The files below ``root`` to import, as (path, file); records what is skipped."""
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for name in list(dirnames):
            if (here / name).is_symlink():
                dirnames.remove(name)
                report.skip(f"{label}{(here / name).relative_to(root).as_posix()}", "symlink")
        dirnames.sort()
        for name in sorted(filenames):
            full = here / name
            rel = full.relative_to(root).as_posix()
            reason = _skip_reason(name)
            if reason is None and full.is_symlink():
                reason = "symlink"
            elif reason is None and not full.is_file():
                reason = "not a regular file"
            if reason is None:
                found.append((rel, full))
            else:
                report.skip(label + rel, reason)
    return found


def import_directory(
    engine: Engine,
    directory: str | os.PathLike[str],
    namespace: str | None = None,
    *,
    progress: Progress = QUIET,
) -> TransferReport:
    """Import conversations persisted on disk by the SDK's ``LocalFileStore``.

    Without ``namespace``, ``directory`` is a persistence directory: each immediate
    subdirectory is one conversation, imported into the namespace of the same name
    (the SDK names them by the conversation id in hex, as
    :func:`sqlstore.sdk.namespace_for` does). With ``namespace``, ``directory`` is
    one tree imported into that namespace.

    Bytes are copied exactly. Lock files (``*.lock``, left by the SDK's file locks),
    interrupted atomic writes (``.*.tmp``) and the agent server's lease files
    (``owner_lease.json``) are skipped, as are symlinks; the server's ``meta.json`` is
    imported like the SDK's files. A file already
    identical in the database is not written again, so importing twice changes nothing.
    Written files take their modification time on disk as ``created_at``/``updated_at``,
    so :func:`sqlstore.retention.purge` judges imported conversations by their real age.
    Files in the database that are not on disk are left alone.

    Args:
        engine: The database (migrated).
        directory: The directory to import.
        namespace: Import ``directory`` as one tree into this namespace.
        progress: Reports files processed.

    Raises:
        NotADirectoryError: ``directory`` is not a directory.
        ValueError: a persistence directory holds no subdirectory, or a name is invalid.
    """
    root = Path(directory)
    if not root.is_dir():
        raise NotADirectoryError(f"not a directory: {root}")
    require_schema(engine)
    report = TransferReport()
    trees: list[tuple[str, list[tuple[str, Path]]]] = []
    if namespace is not None:
        paths.check_namespace(namespace)
        trees.append((namespace, _local_tree(root, "", report)))
    else:
        for child in sorted(root.iterdir()):
            if child.is_dir() and not child.is_symlink():
                paths.check_namespace(child.name)
                trees.append((child.name, _local_tree(child, child.name + "/", report)))
            else:
                report.skip(child.name, "not a conversation directory")
        if not trees:
            raise ValueError(
                f"{root} has no conversation directories (one per conversation); "
                f"give a namespace to import it as one tree"
            )
    progress.start(sum(len(found) for _, found in trees), "import")
    try:
        for ns, found in trees:
            report.namespaces.append(ns)
            store = SQLFileStore(engine, ns)
            writer = _Writer(store, report)
            for batch in batched(found, BATCH_FILES):
                keyed = [(paths.normalize(rel), full) for rel, full in batch]
                ids = [paths.file_id(ns, path) for path, _ in keyed]
                existing = rows_by_id(engine, ns, ids)
                stamps: list[FileRow] = []
                for (path, full), fid in zip(keyed, ids, strict=True):
                    data = full.read_bytes()
                    row = existing.get(fid)
                    if row is not None and row.size == len(data) and store.read_bytes(path) == data:
                        report.unchanged += 1
                    else:
                        writer.add(path, data)
                        mtime = datetime.fromtimestamp(full.stat().st_mtime, UTC)
                        stamps.append(FileRow(fid, path, len(data), mtime, mtime))
                writer.flush()
                # The file's own modification time, so purge sees its real age.
                _set_times(engine, ns, stamps)
                progress.advance(len(batch))
    finally:
        progress.finish()
    _analyze(engine)
    return report


# -- export ----------------------------------------------------------------------------


def _target(root: Path, path: str) -> Path:
    target = root.joinpath(*path.split("/"))
    if not target.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"{path!r} would be written outside {root}")
    return target


def _write_file(target: Path, data: bytes, mtime: datetime) -> None:
    """Write ``data`` to ``target`` atomically (a temporary file renamed into place)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        stamp = mtime.timestamp()
        os.utime(temporary, (stamp, stamp))
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def export_namespace(
    engine: Engine,
    namespace: str,
    directory: str | os.PathLike[str],
    *,
    progress: Progress = QUIET,
) -> TransferReport:
    """Write every file of ``namespace`` to ``directory/<path>``, bytes exact.

    The result is a tree the SDK's ``LocalFileStore(directory)`` opens and resumes. Each
    file is written atomically and gets its last database write as its modification
    time; a file already identical on disk is left alone. Other files in ``directory``
    are left alone too.

    Args:
        engine: The database.
        namespace: The namespace to export.
        directory: Where to write (created if missing).
        progress: Reports files processed.

    Raises:
        FileNotFoundError: the namespace has no files.
    """
    require_schema(engine)
    stats = namespace_stats(engine, namespaces=[namespace])
    if not stats:
        raise FileNotFoundError(f"no such namespace (it has no files): {namespace}")
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    store = SQLFileStore(engine, namespace)
    report = TransferReport(namespaces=[namespace])
    progress.start(stats[0].files, "export")
    try:
        for batch in iter_files(engine, namespace, batch=BATCH_FILES):
            for row in batch:
                try:
                    data = store.read_bytes(row.path)
                except FileNotFoundError:
                    report.skip(row.path, "deleted during the export")
                    continue
                target = _target(root, row.path)
                if (
                    target.is_file()
                    and target.stat().st_size == len(data)
                    and target.read_bytes() == data
                ):
                    report.unchanged += 1
                    continue
                _write_file(target, data, row.updated_at)
                report.written += 1
                report.bytes_written += len(data)
            progress.advance(len(batch))
    finally:
        progress.finish()
    return report


# -- copy ------------------------------------------------------------------------------


def _same_times(a: FileRow, b: FileRow) -> bool:
    return (
        abs(a.updated_at - b.updated_at) < TIME_TOLERANCE
        and abs(a.created_at - b.created_at) < TIME_TOLERANCE
    )


def _analyze(engine: Engine) -> None:
    """Fresh planner statistics after a bulk load (see ``DialectStrategy.analyze``)."""
    db = database_for(engine)
    statements = db.strategy.analyze()
    if statements:
        db.run(lambda conn: [conn.sql(statement) for statement in statements])


def _set_times(engine: Engine, namespace: str, rows: Sequence[FileRow]) -> None:
    """Give ``rows``' files at the destination their source timestamps, in one transaction."""
    if not rows:
        return
    db = database_for(engine)
    stamp_type = files.c.updated_at.type
    statement = Statement.of(
        update(files)
        .where(files.c.namespace == namespace, files.c.file_id == bindparam("fid_"))
        .values(
            created_at=bindparam("created_", type_=stamp_type),
            updated_at=bindparam("updated_", type_=stamp_type),
        ),
        db.engine.dialect,
    )
    to_db = db.strategy.to_db_time
    params = [
        {"fid_": row.file_id, "created_": to_db(row.created_at), "updated_": to_db(row.updated_at)}
        for row in rows
    ]

    def work(conn: PooledConnection) -> None:
        with conn.transaction():  # one transaction, not one commit per row
            conn.execute_many(statement, params)

    db.run(work)


def copy(
    source: Engine,
    destination: Engine,
    namespaces: Sequence[str] | None = None,
    *,
    progress: Progress = QUIET,
) -> TransferReport:
    """Copy namespaces from one database to another, of any dialects, byte for byte.

    Files are copied :data:`BATCH_FILES` at a time, each batch one transaction at the
    destination; each file keeps its ``created_at``/``updated_at``, so retention
    (:func:`sqlstore.retention.purge`) sees the same ages on both sides. A file already
    identical at the destination is not copied again, so re-running an interrupted
    copy completes it. Files that exist only at the destination are left alone.

    Args:
        source: The database to read.
        destination: The database to write (migrated).
        namespaces: The namespaces to copy (default: all of them).
        progress: Reports files processed.

    Raises:
        SchemaError: either database is not migrated.
        FileNotFoundError: a requested namespace has no files in the source.
    """
    require_schema(source)
    require_schema(destination)
    wanted = None if namespaces is None else list(dict.fromkeys(namespaces))
    stats = namespace_stats(source, namespaces=wanted)
    if wanted is not None:
        missing = sorted(set(wanted) - {s.namespace for s in stats})
        if missing:
            raise FileNotFoundError(f"not in the source database: {', '.join(missing)}")
    report = TransferReport()
    progress.start(sum(s.files for s in stats), "copy")
    try:
        for info in stats:
            ns = info.namespace
            report.namespaces.append(ns)
            reader, target = SQLFileStore(source, ns), SQLFileStore(destination, ns)
            writer = _Writer(target, report)
            for batch in iter_files(source, ns, batch=BATCH_FILES):
                existing = rows_by_id(destination, ns, [row.file_id for row in batch])
                stamps: list[FileRow] = []
                for row in batch:
                    try:
                        data = reader.read_bytes(row.path)
                    except FileNotFoundError:
                        report.skip(f"{ns}/{row.path}", "deleted during the copy")
                        continue
                    found = existing.get(row.file_id)
                    if (
                        found is not None
                        and found.size == len(data)
                        and target.read_bytes(row.path) == data
                    ):
                        report.unchanged += 1
                        if not _same_times(found, row):
                            stamps.append(row)
                    else:
                        writer.add(row.path, data)
                        stamps.append(row)
                writer.flush()
                _set_times(destination, ns, stamps)
                progress.advance(len(batch))
    finally:
        progress.finish()
    _analyze(destination)
    return report
