"""Retention: remove whole namespaces (conversations) nobody has written to for a while."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Engine

from .catalog import NamespaceStats, require_schema, stale_namespaces, written_since
from .progress import QUIET, Progress
from .store import SQLFileStore

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

    A namespace goes as a whole (``store.delete("")``) or not at all: one recent write
    keeps it. Age is measured by the database's clock against ``updated_at``. The
    candidates are found ``batch`` namespaces per query; just before each deletion the
    namespace is checked again, and kept if it was written to since the scan.

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
    report = PurgeReport(scan.cutoff_utc, dry_run)
    if dry_run:
        report.removed = scan.namespaces
        return report
    progress.start(len(scan.namespaces), "purge")
    try:
        for info in scan.namespaces:
            if written_since(engine, info.namespace, scan.cutoff):
                report.kept.append(info.namespace)
            else:
                SQLFileStore(engine, info.namespace).delete("")
                report.removed.append(info)
            progress.advance()
    finally:
        progress.finish()
    return report
