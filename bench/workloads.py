"""Per-call workloads: one store call at a time, every subject interleaved.

Every workload times each subject's calls in batches, round-robin (see
:mod:`bench.timing`). Files a workload needs (the 100 files read, the 10,000 listed)
are loaded beforehand, untimed; files a delete batch removes are created before the
batch, untimed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bench.plan import Plan
from bench.results import Results
from bench.subjects import Subject, load_all
from bench.timing import Variant, interleave, summarize

KIB = 1024
SIZES = {"1 KiB": KIB, "64 KiB": 64 * KIB}
#: Distinct files that overwrite/read/exists cycle through.
HOT_FILES = 100


@dataclass
class Workload:
    """One per-call workload."""

    name: str
    op: str
    make: Callable[[Subject], Variant]
    calls: int
    batch: int


def _files(prefix: str, count: int, contents: str) -> list[tuple[str, str]]:
    return [(f"{prefix}/f{k:08d}", contents) for k in range(count)]


def setup(subject: Subject, contents: dict[str, str], list_sizes: Sequence[int]) -> None:
    """Load every file the per-call workloads read, overwrite, test or list (untimed)."""
    items: list[tuple[str, str]] = []
    for tag, text in contents.items():
        tag_ = tag.replace(" ", "")
        items += _files(f"w/rd{tag_}", HOT_FILES, text)
        items += _files(f"w/ow{tag_}", HOT_FILES, text)
    small = contents["1 KiB"]
    for n in list_sizes:
        items += _files(f"w/list-{n}-children", n, small)
    if subject.supports == frozenset({"read"}):
        items = [(p, c) for p, c in items if "/rd" in p]
    subject.bulk_write(items)


def build(contents: dict[str, str], plan: Plan) -> list[Workload]:
    """The per-call workloads, in table order."""
    work: list[Workload] = []
    c, b = plan.calls, plan.batch
    for tag, text in contents.items():
        t = tag.replace(" ", "")

        def write_new(s: Subject, t: str = t, text: str = text) -> Variant:
            return Variant(lambda i: s.write_new(f"w/wn{t}/f{i:08d}", text))

        def overwrite(s: Subject, t: str = t, text: str = text) -> Variant:
            return Variant(lambda i: s.write(f"w/ow{t}/f{i % HOT_FILES:08d}", text))

        def read(s: Subject, t: str = t) -> Variant:
            return Variant(lambda i: s.read(f"w/rd{t}/f{i % HOT_FILES:08d}"), None, s.before_each)

        def read_bytes(s: Subject, t: str = t) -> Variant:
            fn = s.read_bytes
            assert fn is not None
            return Variant(lambda i: fn(f"w/rd{t}/f{i % HOT_FILES:08d}"))

        work += [
            Workload(f"write new {tag}", "write_new", write_new, c, b),
            Workload(f"overwrite {tag}", "write", overwrite, c, b),
            Workload(f"read {tag}", "read", read, c, b),
            Workload(f"read_bytes {tag}", "read_bytes", read_bytes, c, b),
        ]

    def exists_hit(s: Subject) -> Variant:
        return Variant(lambda i: s.exists(f"w/rd1KiB/f{i % HOT_FILES:08d}"))

    def exists_miss(s: Subject) -> Variant:
        return Variant(lambda i: s.exists(f"w/missing/f{i:08d}"))

    def lister(n: int) -> Callable[[Subject], Variant]:
        return lambda s: Variant(lambda i: s.list_dir(f"w/list-{n}-children"))

    work += [
        Workload("exists hit", "exists", exists_hit, c, b),
        Workload("exists miss", "exists", exists_miss, c, b),
        Workload("list 100 children", "list", lister(100), c, b),
        Workload(
            "list 10,000 children", "list", lister(10_000), plan.list_10k_calls, plan.list_10k_batch
        ),
    ]
    for tag, text in contents.items():
        t = tag.replace(" ", "")

        def delete(s: Subject, t: str = t, text: str = text) -> Variant:
            def prepare(ids: range) -> None:
                s.bulk_write([(f"w/del{t}/f{i:08d}", text) for i in ids])

            return Variant(lambda i: s.delete(f"w/del{t}/f{i:08d}"), prepare)

        work.append(Workload(f"delete {tag}", "delete", delete, c, b))

    def lock(s: Subject) -> Variant:
        def call(_i: int) -> None:
            with s.lock("w/.lock"):
                pass

        return Variant(call)

    work.append(Workload("lock+unlock", "lock", lock, c, b))
    return work


def run(
    subjects: dict[str, Subject],
    contents: dict[str, str],
    plan: Plan,
    results: Results,
    group: str = "per-call",
    only: Sequence[str] | None = None,
    log: Callable[[str], None] = print,
) -> None:
    """Load the files, then time every workload (or those named in ``only``)."""
    started = time.perf_counter()
    load_all(subjects.values(), lambda s: setup(s, contents, (100, 10_000)))
    log(f"  loaded files in {time.perf_counter() - started:.1f}s")
    for workload in build(contents, plan):
        started = time.perf_counter()
        if only is not None and workload.name not in only:
            continue
        variants = {
            key: workload.make(s) for key, s in subjects.items() if workload.op in s.supports
        }
        samples = interleave(variants, workload.calls, workload.batch)
        for key, values in samples.items():
            results.add(workload.name, key, summarize(values, "us"), group)
        medians = ", ".join(f"{k}={results.median(workload.name, k):.0f}" for k in variants)
        log(f"  {workload.name} ({time.perf_counter() - started:.1f}s): {medians}")
