"""How much work each mode does: ``--quick`` (under 2 minutes) and full (under 10)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    """Sample counts and sizes for one run."""

    name: str
    #: Timed calls per variant for a per-call workload, and the batch size.
    calls: int
    batch: int
    #: Timed calls per variant when listing 10,000 children (each call is slow).
    list_10k_calls: int
    list_10k_batch: int
    #: Single-writer ``EventLog.append`` calls per variant.
    appends: int
    append_batch: int
    #: Events each of the 8 processes appends, and how many rounds per variant.
    procs: int
    proc_events: int
    proc_rounds: int
    #: Size of the resumed conversation and fresh processes per variant.
    resume_events: int
    resume_reps: int
    #: Namespace sizes (files in other directories) the P5 listing is timed at.
    namespace_sizes: tuple[int, ...]
    list_calls: int
    #: Stores created on one engine, and operations per thread using them.
    stores: int
    threads: int
    thread_ops: int
    #: Per-call samples per variant under each logging configuration (P7).
    logging_calls: int


QUICK = Plan(
    name="quick",
    calls=60,
    batch=10,
    list_10k_calls=6,
    list_10k_batch=3,
    appends=60,
    append_batch=10,
    procs=8,
    proc_events=10,
    proc_rounds=1,
    resume_events=1_000,
    resume_reps=1,
    namespace_sizes=(1_000, 10_000),
    list_calls=60,
    stores=10_000,
    threads=8,
    thread_ops=25,
    logging_calls=60,
)

FULL = Plan(
    name="full",
    calls=400,
    batch=25,
    list_10k_calls=30,
    list_10k_batch=5,
    appends=400,
    append_batch=25,
    procs=8,
    proc_events=50,
    proc_rounds=3,
    resume_events=10_000,
    resume_reps=3,
    namespace_sizes=(1_000, 10_000, 100_000),
    list_calls=300,
    stores=10_000,
    threads=8,
    thread_ops=200,
    logging_calls=500,
)
