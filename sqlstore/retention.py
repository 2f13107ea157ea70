"""Retention: remove whole namespaces (conversations) nobody has written to for a while."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, select

from .catalog import NamespaceStats, require_schema, stale_namespaces
from .connection import PooledConnection
from .database import Database, database_for
from .progress import QUIET, Progress
from .schema import chunks, files
from .statements import Statement

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_AGE = re.compile(r"(?:\d+[smhdw])+")
_PART = re.compile(r"(\d+)([smhdw])")


def parse_age(text: str) -> timedelta:
    """Parse an age such as ``30d``, ``12h``, ``90m``, ``2w`` or ``1d12h``.

    Units: ``s`` seconds, ``m`` minutes, ``h`` hours, ``d`` days, ``w`` weeks.

    Raises:
        ValueError: ``text`` is not such an age, or is zero.
    """
    value = text.strip().lower()
    if not _AGE.fullmatch(value):
        raise ValueError(f"invalid age {text!r}: use a number and a unit, e.g. 30d, 12h, 2w")
    seconds = sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(value))
    if seconds <= 0:
        raise ValueError(f"invalid age {text!r}: it must be more than zero")
    return timedelta(seconds=seconds)


@dataclass
class PurgeReport:
    """What :func:`purge` removed, or would remove.

    Attributes:
        cutoff: Namespaces whose newest write is older than this (aware, UTC) qualify.
        dry_run: Whether nothing was deleted.
        removed: The namespaces removed (or, in a dry run, that would be), with their
            totals before removal.
        kept: Namespaces that qualified but were written to before their turn came.
    """

    cutoff: datetime
    dry_run: bool
    removed: list[NamespaceStats] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    @property
    def files(self) -> int:
        """Files in the removed namespaces."""
        return sum(info.files for info in self.removed)

    @property
    def size(self) -> int:
        """Bytes in the removed namespaces."""
        return sum(info.size for info in self.removed)


def purge(
    engine: Engine,
    older_than: timedelta,
    *,
    prefix: str | None = None,
    dry_run: bool = False,
    batch: int = 500,
    progress: Progress = QUIET,
) -> PurgeReport:
    """Delete every namespace whose newest write is older than ``older_than``.

    A namespace goes as a whole or not at all: one recent write keeps it. Age is
    measured by the database's clock against ``updated_at``. The candidates are found
    ``batch`` namespaces per query; then each is checked again and deleted in one
    transaction that locks its files first, so a write that committed before that check
    keeps the namespace, and a write that commits after it is never deleted (it lands
    in an emptied namespace, as a write after ``store.delete("")`` would).

    Args:
        engine: The database.
        older_than: How long a namespace must have gone unwritten.
        prefix: Only namespaces starting with this.
        dry_run: Report what would be removed; delete nothing.
        batch: Namespaces per query.
        progress: Reports namespaces processed.

    Raises:
        ValueError: ``older_than`` is not positive.
    """
    if older_than <= timedelta(0):
        raise ValueError("older_than must be positive")
    require_schema(engine)
    scan = stale_namespaces(engine, older_than, prefix=prefix, batch=batch)
    report = PurgeReport(scan.cutoff, dry_run)
    if dry_run:
        report.removed = scan.namespaces
        return report
    db = database_for(engine)
    progress.start(len(scan.namespaces), "purge")
    try:
        for info in scan.namespaces:
            if _purge_namespace(db, info.namespace, scan.cutoff):
                report.removed.append(info)
            else:
                report.kept.append(info.namespace)
            progress.advance()
    finally:
        progress.finish()
    return report


def _purge_namespace(db: Database, namespace: str, cutoff: datetime) -> bool:
    """Delete ``namespace`` unless a file of it was written at or after ``cutoff``.

    Returns:
        Whether it was deleted.
    """
    strategy = db.strategy
    at = strategy.to_db_time(cutoff)
    mine = files.c.namespace == namespace
    old = (mine, files.c.updated_at < at)
    dialect = db.engine.dialect
    # FOR UPDATE: a concurrent overwrite of one of these files waits for the decision.
    lock_all = Statement.of(select(files.c.updated_at).where(mine).with_for_update(), dialect)
    delete_old = Statement.of(delete(files).where(*old), dialect)
    delete_old_chunks = Statement.of(
        delete(chunks).where(
            chunks.c.namespace == namespace,
            chunks.c.file_id.in_(select(files.c.file_id).where(*old)),
        ),
        dialect,
    )
    newest_allowed = strategy.from_db_time(at)

    def work(conn: PooledConnection) -> bool:
        with conn.transaction():
            stamps = [strategy.from_db_time(stamp) for (stamp,) in conn.all(lock_all)]
            if not stamps:
                return True  # emptied meanwhile: nothing left to purge
            if max(stamps) >= newest_allowed:
                return False
            # Only what the check saw as old: a file written since is not touched.
            if strategy.chunk_size is not None:
                conn.rowcount(delete_old_chunks)
            conn.rowcount(delete_old)
            return True

    return db.run(work)
