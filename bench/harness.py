"""The measuring machinery: plans, interleaved timing, results, child processes.

Nothing here knows a store or a database; :mod:`bench.subjects` and
:mod:`bench.workloads` do.
"""

from __future__ import annotations

import gc
import math
import multiprocessing
import multiprocessing.forkserver
import os
import platform
import queue
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from multiprocessing.context import ForkServerContext
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
#: Ids of warm-up calls start here, so they never collide with timed ones.
WARMUP_BASE = 10_000_000
#: Seconds a child process may take before the run gives up on it.
CHILD_TIMEOUT = 600.0


@dataclass(frozen=True)
class Plan:
    """How much work a run does: sample counts and sizes."""

    name: str
    calls: int  # timed calls per subject on a per-call row (and one-writer appends)
    batch: int  # calls per interleaved batch
    big_dir: int  # children of the large directory listed per call
    big_dir_calls: int
    big_dir_batch: int
    procs: int  # processes appending to one conversation at once
    proc_events: int  # events each of them appends
    proc_rounds: int
    resume_events: int  # events in the conversation resumed in a new process
    resume_reps: int
    namespace_sizes: tuple[int, ...]  # files around the listed directory
    list_calls: int
    stores: int  # stores created on one engine
    threads: int
    thread_ops: int  # write+read pairs per thread on those stores
    logging_calls: int  # per subject and logging configuration


# fmt: off
PLANS = {
    "full": Plan("full", calls=400, batch=25, big_dir=10_000, big_dir_calls=30, big_dir_batch=5,
                 procs=8, proc_events=50, proc_rounds=3, resume_events=10_000, resume_reps=3,
                 namespace_sizes=(1_000, 10_000, 100_000), list_calls=300, stores=10_000,
                 threads=8, thread_ops=200, logging_calls=500),
    "quick": Plan("quick", calls=60, batch=10, big_dir=10_000, big_dir_calls=6, big_dir_batch=3,
                  procs=8, proc_events=10, proc_rounds=1, resume_events=1_000, resume_reps=1,
                  namespace_sizes=(1_000, 10_000), list_calls=60, stores=10_000, threads=8,
                  thread_ops=25, logging_calls=60),
    # Proves the machinery end to end in seconds (tests/test_bench.py); its figures mean nothing.
    "smoke": Plan("smoke", calls=6, batch=3, big_dir=300, big_dir_calls=2, big_dir_batch=1,
                  procs=3, proc_events=3, proc_rounds=1, resume_events=30, resume_reps=1,
                  namespace_sizes=(100, 300), list_calls=4, stores=200, threads=3, thread_ops=3,
                  logging_calls=4),
}
# fmt: on


@dataclass(frozen=True)
class Stats:
    """One subject's samples on one row, summarised."""

    n: int
    median: float
    p10: float
    p90: float


def _quantile(ordered: Sequence[float], q: float) -> float:
    pos = (len(ordered) - 1) * q
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summarize(samples: Sequence[float]) -> Stats:
    """Median, p10 and p90 (linear interpolation) of a non-empty sample."""
    ordered = sorted(samples)
    if not ordered:
        raise ValueError("no samples")
    return Stats(len(ordered), *(_quantile(ordered, q) for q in (0.5, 0.1, 0.9)))


@dataclass
class Variant:
    """One subject on one row: the timed call and its untimed preparations.

    Attributes:
        call: The timed call; gets an id unique within the row.
        prepare: Before each batch, with the batch's ids (e.g. create the files a
            delete batch removes).
        before_each: Before each call (e.g. clear a read cache).
    """

    call: Callable[[int], object]
    prepare: Callable[[range], None] | None = None
    before_each: Callable[[int], None] | None = None


def _batch(variant: Variant, ids: range, out: list[float] | None) -> None:
    if variant.prepare is not None:
        variant.prepare(ids)
    call, before, clock = variant.call, variant.before_each, time.perf_counter_ns
    # A full collection of the SDK's object graph takes ~0.3 s: move what is alive out
    # of the collector's way, and keep it off while timing.
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


def interleave(variants: dict[str, Variant], calls: int, batch: int) -> dict[str, list[float]]:
    """Time ``calls`` calls of every variant, round-robin in batches of ``batch``.

    One untimed warm-up batch per variant comes first; each round then starts with
    another variant, so a slow moment on the machine hits them all alike.

    Returns:
        Per variant, every call's duration in microseconds.
    """
    names = list(variants)
    for name in names:
        _batch(variants[name], range(WARMUP_BASE, WARMUP_BASE + batch), None)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(math.ceil(calls / batch)):
        ids = range(r * batch, min((r + 1) * batch, calls))
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            _batch(variants[name], ids, samples[name])
    return samples


@dataclass
class Row:
    """One measured thing: a statistic per subject, in one unit."""

    name: str
    group: str
    unit: str
    higher_is_better: bool = False
    cells: dict[str, Stats] = field(default_factory=dict)

    def median(self, key: str) -> float | None:
        """The median of subject ``key``, if it ran on this row."""
        stats = self.cells.get(key)
        return None if stats is None else stats.median


@dataclass
class Results:
    """Every row of a run in order, facts that are not timings, and what failed."""

    rows: dict[str, Row] = field(default_factory=dict)
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def record(
        self,
        group: str,
        name: str,
        unit: str,
        samples: dict[str, list[float]],
        higher_is_better: bool = False,
    ) -> None:
        """Summarise each subject's samples into row ``name`` (created on first use)."""
        row = self.rows.setdefault(name, Row(name, group, unit, higher_is_better))
        for key, values in samples.items():
            row.cells[key] = summarize(values)
        log(f"  {name}: " + ", ".join(f"{k} {row.cells[k].median:,.1f}" for k in samples))

    def check(self, what: str, key: str, facts: dict[str, Any]) -> None:
        """Record facts about subject ``key`` (lost events, pool use...) under ``what``."""
        self.checks.setdefault(what, {})[key] = facts


def log(message: str) -> None:
    """Progress goes to stderr; the report goes to stdout."""
    print(message, file=sys.stderr, flush=True)


# -- child processes ------------------------------------------------------------------

_context: ForkServerContext | None = None


def context() -> ForkServerContext:
    """Children fork from a server that imported the SDK, sqlstore and the drivers once.

    Importing the SDK costs seconds of CPU; ``spawn`` would pay it in every child. A
    child still starts with no store, engine, connection or cache.
    """
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(["bench.workloads"])
    return _context


def start_children_server() -> None:
    """Start the fork server now, so it imports while the parent does the same."""
    context()
    multiprocessing.forkserver.ensure_running()


def _child(target: Callable[..., dict[str, Any]], args: tuple[Any, ...], out: Any) -> None:
    try:
        out.put(target(*args))
    except BaseException as exc:  # reported to the parent, which must never hang
        out.put({"error": f"{type(exc).__name__}: {exc}"})


def in_children(target: Callable[..., dict[str, Any]], argses: list[tuple[Any, ...]]) -> list[Any]:
    """Run ``target(*args)`` in one child per ``args`` at once; their reports, in any order.

    Raises:
        RuntimeError: a child failed or did not report in time.
    """
    ctx = context()
    out = ctx.Queue()
    procs = [ctx.Process(target=_child, args=(target, args, out)) for args in argses]
    for p in procs:
        p.start()
    try:
        reports = [out.get(timeout=CHILD_TIMEOUT) for _ in procs]
    except queue.Empty as exc:
        raise RuntimeError(f"a {target.__name__} child did not report in time") from exc
    finally:
        for p in procs:
            p.join(CHILD_TIMEOUT)
    for report in reports:
        if "error" in report:
            raise RuntimeError(f"{target.__name__} failed in a child: {report['error']}")
    return reports


# -- where a run happened -------------------------------------------------------------


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def _proc_value(path: str, prefix: str) -> str:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return ""
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(prefix)), "")


def load_average() -> list[float]:
    """The 1, 5 and 15-minute load averages: other work on the machine moves medians."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def describe_machine(databases: dict[str, str]) -> dict[str, Any]:
    """Machine, Python, packages, database versions and the sqlstore commit."""
    packages = {}
    for name in ("sqlalchemy", "psycopg", "pymysql", "openhands-sdk", "alembic"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    memory = _proc_value("/proc/meminfo", "MemTotal").split(" ")[0]
    return {
        "platform": platform.platform(),
        "cpu": _proc_value("/proc/cpuinfo", "model name") or platform.processor(),
        "cores": os.cpu_count(),
        "memory_gib": round(int(memory) / 1024**2, 1) if memory.isdigit() else None,
        "python": platform.python_version(),
        "packages": packages,
        "databases": databases,
        "sqlstore_commit": _git("rev-parse", "--short", "HEAD"),
        "sqlstore_dirty": bool(_git("status", "--porcelain", "--", "sqlstore", "migrations")),
    }
