"""Interleaved timing: every variant of a workload runs in turn, in small batches.

Machine noise (another process, a checkpoint, a slow fsync) then hits every variant
alike instead of whichever happened to run at the time.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

#: Offset of the ids used by warm-up calls, so they never collide with timed ones.
WARMUP_BASE = 10_000_000


@dataclass(frozen=True)
class Stats:
    """Summary of one variant's samples on one workload."""

    n: int
    median: float
    p10: float
    p90: float
    unit: str

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "n": self.n,
            "median": self.median,
            "p10": self.p10,
            "p90": self.p90,
            "unit": self.unit,
        }


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, linearly interpolated."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q
    low = math.floor(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def summarize(samples: Sequence[float], unit: str) -> Stats:
    """Median, p10 and p90 of ``samples``."""
    ordered = sorted(samples)
    return Stats(
        n=len(ordered),
        median=percentile(ordered, 0.5),
        p10=percentile(ordered, 0.1),
        p90=percentile(ordered, 0.9),
        unit=unit,
    )


@dataclass
class Variant:
    """One contender on one per-call workload.

    Attributes:
        call: The timed call; receives a call id unique within the workload.
        prepare: Untimed, before each batch, with the batch's ids (e.g. create the
            files a delete batch removes).
        before_each: Untimed, before each call (e.g. clear a read cache).
    """

    call: Callable[[int], object]
    prepare: Callable[[range], None] | None = None
    before_each: Callable[[int], None] | None = None


def _run_batch(variant: Variant, ids: range, out: list[float] | None) -> None:
    if variant.prepare is not None:
        variant.prepare(ids)
    call, before = variant.call, variant.before_each
    clock = time.perf_counter_ns
    # A full collection of the SDK's object graph takes ~0.3 s: move everything
    # alive now out of the collector's way, then keep it off while timing.
    gc.freeze()
    gc.disable()
    try:
        for i in ids:
            if before is not None:
                before(i)
            start = clock()
            call(i)
            elapsed = clock() - start
            if out is not None:
                out.append(elapsed / 1000.0)
    finally:
        gc.enable()


def interleave(
    variants: dict[str, Variant], calls: int, batch: int, warmup: int | None = None
) -> dict[str, list[float]]:
    """Time ``calls`` calls of every variant, round-robin in batches of ``batch``.

    Each round starts with a different variant, so none is always first. One untimed
    warm-up batch per variant runs first.

    Returns:
        Per variant, every call's duration in microseconds.
    """
    names = list(variants)
    warm = batch if warmup is None else warmup
    for name in names:
        _run_batch(variants[name], range(WARMUP_BASE, WARMUP_BASE + warm), None)
    samples: dict[str, list[float]] = {name: [] for name in names}
    rounds = max(1, math.ceil(calls / batch))
    for r in range(rounds):
        start = r * batch
        ids = range(start, min(start + batch, calls) if calls > start else start + batch)
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            _run_batch(variants[name], ids, samples[name])
    return samples
