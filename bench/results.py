"""What a run measured: rows of per-variant statistics plus named checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.timing import Stats


@dataclass
class Row:
    """One workload: a statistic per variant.

    Attributes:
        name: What was measured, e.g. ``read 1 KiB``.
        unit: ``us``, ``ms``, ``events/s``, ``ops/s`` or ``count``.
        better: ``lower`` or ``higher``.
        group: The section it belongs to (``per-call``, ``P2``...).
        cells: Variant key to statistics.
    """

    name: str
    unit: str
    better: str
    group: str
    cells: dict[str, Stats] = field(default_factory=dict)

    def median(self, variant: str) -> float | None:
        """The median of ``variant``, if it ran."""
        stats = self.cells.get(variant)
        return None if stats is None else stats.median


@dataclass
class Results:
    """Every row of a run, in order, and facts that are not timings."""

    rows: dict[str, Row] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def row(self, name: str, unit: str, group: str, better: str = "lower") -> Row:
        """The row called ``name``, created on first use."""
        row = self.rows.get(name)
        if row is None:
            row = self.rows[name] = Row(name, unit, better, group)
        return row

    def add(self, name: str, variant: str, stats: Stats, group: str, better: str = "lower") -> None:
        """Record ``stats`` for ``variant`` on row ``name``."""
        self.row(name, stats.unit, group, better).cells[variant] = stats

    def median(self, name: str, variant: str) -> float | None:
        """The median of ``variant`` on row ``name``, if both exist."""
        row = self.rows.get(name)
        return None if row is None else row.median(variant)
