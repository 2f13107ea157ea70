"""The rows: what one sample is, and the set-up around it (never timed).

``WORKLOADS`` lists them in report order, each with the names of the rows it makes,
so ``--only`` can select them. A per-call row is one ``CallRow`` line in ``call_rows``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
import traceback
import tracemalloc
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import sqlalchemy
from openhands.sdk.conversation.event_store import EventLog
from openhands.sdk.conversation.persistence_const import (
    BASE_STATE,
    EVENT_FILE_PATTERN,
    EVENT_NAME_RE,
)
from openhands.sdk.event import MessageEvent
from openhands.sdk.llm import Message, TextContent

import sqlstore
from bench.harness import Plan, Variant, context, in_children, interleave, log, summarize
from bench.subjects import Files, Run, Subject, open_store

KIB = 1024
HOT = 100  # files that overwrite, read and exists cycle through
TEXT = (
    "the agent ran a command in the workspace and read the output file to decide what to change "
    "next tests passed after editing module function class return value error trace import path "
    "config build install run check result observation action tool call"
)


# -- content: real SDK events, serialised as EventLog stores them ---------------------


def message_event(size: int, seed: int = 0) -> MessageEvent:
    """A ``MessageEvent`` of about ``size`` bytes of JSON; random words compress like output."""
    rng, vocabulary, words, total = random.Random(seed), TEXT.split(), [], 0
    while total < size:
        words.append(rng.choice(vocabulary))
        total += len(words[-1]) + 1

    def event(text: str) -> MessageEvent:
        message = Message(role="assistant", content=[TextContent(text=text)])
        return MessageEvent(source="agent", llm_message=message)

    overhead = len(event("").model_dump_json(exclude_none=True).encode())
    return event(" ".join(words)[: max(0, size - overhead)])


def event_json(size: int) -> str:
    """The stored form of an event of about ``size`` bytes."""
    return message_event(size).model_dump_json(exclude_none=True)


def new_events(count: int, seed: int = 0) -> list[MessageEvent]:
    """``count`` 1 KiB events with fresh ids."""
    template = message_event(KIB, seed)
    return [template.model_copy(update={"id": str(uuid.uuid4())}) for _ in range(count)]


def _rotated(keys: list[str], r: int) -> list[str]:
    return keys[r % len(keys) :] + keys[: r % len(keys)]


# -- per call -------------------------------------------------------------------------


@dataclass(frozen=True)
class CallRow:
    """A per-call row: one store call per sample, on files loaded beforehand.

    Attributes:
        name: The row's name in plain words.
        op: ``write_new``, ``write``, ``read``, ``read_bytes``, ``exists``, ``list``,
            ``delete`` or ``lock``.
        dir: The directory it works in.
        text: What it writes.
        hot: Cycles through the ``HOT`` files loaded in ``dir``; else a new name per call.
        small: Part of the 1 KiB set that is also timed under the SDK's logging.
    """

    name: str
    op: str
    dir: str
    text: str = ""
    hot: bool = True
    small: bool = True


def call_rows(plan: Plan) -> list[CallRow]:
    """The per-call rows, in report order."""
    rows = []
    for tag, text in (("1 KiB", event_json(KIB)), ("64 KiB", event_json(64 * KIB))):
        d, small = tag.replace(" ", ""), tag == "1 KiB"
        rows += [
            CallRow(f"write a new {tag} file", "write_new", f"new{d}", text, False, small),
            CallRow(f"overwrite a {tag} file", "write", f"hot{d}", text, True, small),
            CallRow(f"read a {tag} file", "read", f"read{d}", text, True, small),
            CallRow(f"read a {tag} file as bytes", "read_bytes", f"read{d}", text, True, small),
        ]
    return [
        *rows,
        CallRow("exists, file present", "exists", "read1KiB", rows[0].text),
        CallRow("exists, file missing", "exists", "missing", hot=False),
        CallRow("list 100 children", "list", "list100"),
        CallRow(f"list {plan.big_dir:,} children", "list", "listbig", small=False),
        CallRow("delete a 1 KiB file", "delete", "del1KiB", rows[0].text, hot=False),
        CallRow("delete a 64 KiB file", "delete", "del64KiB", rows[4].text, False, False),
        CallRow("lock and unlock", "lock", "lock"),
    ]


def call_variant(files: Any, row: CallRow) -> Variant:
    """Subject ``files`` (a raw floor or a :class:`Files`) doing ``row``'s call."""

    def path(i: int) -> str:
        return f"{row.dir}/f{i % HOT if row.hot else i:08d}"

    if row.op in ("write_new", "write"):
        write = getattr(files, row.op)
        return Variant(lambda i: write(path(i), row.text))
    if row.op in ("read", "read_bytes", "exists"):
        call = getattr(files, row.op)
        return Variant(lambda i: call(path(i)), None, getattr(files, "before_read", None))
    if row.op == "list":
        return Variant(lambda i: files.list(row.dir))
    if row.op == "delete":
        make = lambda ids: files.load([(path(i), row.text) for i in ids])  # noqa: E731
        return Variant(lambda i: files.delete(path(i)), make)

    def lock(_i: int) -> None:
        with files.lock(row.dir):
            pass

    return Variant(lock)


def call_files(plan: Plan, rows: list[CallRow], read_only: bool = False) -> list[tuple[str, str]]:
    """The files the per-call rows read, overwrite, test and list."""
    small, items = event_json(KIB), {}
    for row in rows:
        hot = row.op in ("read", "read_bytes", "exists", "write") and row.hot
        if hot and (not read_only or row.op == "read"):
            items |= {f"{row.dir}/f{i:08d}": row.text for i in range(HOT)}
        if row.op == "list" and not read_only:
            count = 100 if row.dir == "list100" else plan.big_dir
            items |= {f"{row.dir}/f{i:08d}": small for i in range(count)}
    return list(items.items())


def per_call(run: Run) -> None:
    """Every subject on every per-call row, interleaved."""
    rows = [r for r in call_rows(run.plan) if run.wants(r.name)]
    handles = {k: run.files(k, "calls") for k in run.subjects}
    with ThreadPoolExecutor(len(handles)) as pool:
        loads = {
            k: pool.submit(h.load, call_files(run.plan, rows, run.subjects[k].ops == {"read"}))
            for k, h in handles.items()
        }
        for future in loads.values():
            future.result()
    for row in rows:
        big = row.dir == "listbig"
        op = "write" if row.op == "write_new" else row.op
        variants = {
            k: call_variant(h, row) for k, h in handles.items() if op in run.subjects[k].ops
        }
        samples = interleave(
            variants,
            run.plan.big_dir_calls if big else run.plan.calls,
            run.plan.big_dir_batch if big else run.plan.batch,
        )
        run.results.record("Per call", row.name, "µs", samples)
    for h in handles.values():
        h.close()


# -- the SDK's EventLog ---------------------------------------------------------------

APPEND_ONE = "SDK append (EventLog.append), one writer"


def append_many_row(plan: Plan) -> str:
    """The name of the several-processes append row."""
    return f"SDK append, {plan.procs} processes on one conversation"


def resume_row(plan: Plan) -> str:
    """The name of the resume row."""
    return f"SDK resume of {plan.resume_events:,} events in a new process"


def append_one(run: Run) -> None:
    """One writer appends through ``EventLog`` (lock, marker check, event, marker move)."""
    keys = run.keys("sqlstore", "local", "memory")
    logs = {k: EventLog(run.store(k, "append"), dir_path="events") for k in keys}
    pending: dict[str, dict[int, Any]] = {}

    def variant(key: str) -> Variant:
        def prepare(ids: range) -> None:
            pending[key] = dict(zip(ids, new_events(len(ids)), strict=True))

        return Variant(lambda i: logs[key].append(pending[key][i]), prepare)

    samples = interleave({k: variant(k) for k in keys}, run.plan.calls, run.plan.batch)
    for key, event_log in logs.items():
        if len(event_log) != run.plan.calls + run.plan.batch:  # timed + warm-up
            raise AssertionError(f"{key}: the EventLog holds {len(event_log)} events")
    run.results.record("SDK", APPEND_ONE, "µs", samples)


def append_worker(subject: Subject, where: str, worker: int, count: int, barrier: Any) -> Any:
    """Child: append ``count`` events through the SDK once every worker is ready."""
    event_log = EventLog(open_store(subject, where), dir_path="events")
    batch = new_events(count, seed=worker)
    barrier.wait(timeout=300)
    start = time.perf_counter()
    for event in batch:
        event_log.append(event)
    return {"start": start, "end": time.perf_counter(), "ids": [e.id for e in batch]}


def read_back(store: Any, appended: set[str]) -> dict[str, int]:
    """What a log holds after the appends: counts of what is wrong, 0 when intact."""
    by_index: dict[int, list[str]] = {}
    for path in store.list("events"):
        if m := EVENT_NAME_RE.match(path.rsplit("/", 1)[-1]):
            by_index.setdefault(int(m.group("idx")), []).append(m.group("event_id"))
    found = [i for ids in by_index.values() for i in ids]
    return {
        "events": len(appended),
        "lost": len(appended - set(found)),
        "duplicate_ids": len(found) - len(set(found)),
        "duplicate_indices": sum(len(ids) > 1 for ids in by_index.values()),
        "gaps_in_indices": len(by_index) - sum(i in by_index for i in range(len(by_index))),
        "sdk_length_wrong": int(len(EventLog(store, dir_path="events")) != len(appended)),
    }


def append_many(run: Run) -> None:
    """Several processes append to one conversation; events/s, then the log is read back."""
    keys = run.keys("sqlstore", "local", every_row=True)
    rates: dict[str, list[float]] = {k: [] for k in keys}
    facts: dict[str, list[dict[str, int]]] = {k: [] for k in keys}
    for r in range(run.plan.proc_rounds):
        for key in _rotated(keys, r):
            subject, where = run.subjects[key], run.where(key, f"procs-{r}")
            barrier = context().Barrier(run.plan.procs)
            args = [
                (subject, where, w, run.plan.proc_events, barrier) for w in range(run.plan.procs)
            ]
            reports = in_children(append_worker, args)
            ids = {i for rep in reports for i in rep["ids"]}
            span = max(rep["end"] for rep in reports) - min(rep["start"] for rep in reports)
            rates[key].append(len(ids) / span)
            store = open_store(subject, where)
            facts[key].append(read_back(store, ids))
            getattr(store, "close", lambda: None)()
    for key, rounds in facts.items():
        sums = {what: sum(f[what] for f in rounds) for what in rounds[0]}
        run.results.check("appends", key, {"rounds": len(rounds), **sums})
    run.results.record("SDK", append_many_row(run.plan), "events/s", rates, higher_is_better=True)


def resume_worker(subject: Subject, where: str) -> dict[str, Any]:
    """Child: resume as ``ConversationState`` does, and say how long each step took.

    Read ``base_state.json``, build the ``EventLog`` (one ``list``), then read every
    event newest first (``EventLog.path_to_root`` from the last event).
    """
    start = time.perf_counter()
    store = open_store(subject, where)
    with contextlib.suppress(FileNotFoundError):
        store.read(BASE_STATE)
    event_log = EventLog(store, dir_path="events")
    indexed = time.perf_counter()
    n = len(event_log)
    chain = event_log.path_to_root(event_log.get_id(n - 1)) if n else []
    end = time.perf_counter()
    return {"ms": (end - start) * 1000, "index_ms": (indexed - start) * 1000, "events": len(chain)}


def resume(run: Run) -> None:
    """A stored conversation is resumed in new processes, subjects interleaved."""
    keys = run.keys("sqlstore", "local-cold", every_row=True)
    items = [
        (
            f"events/{EVENT_FILE_PATTERN.format(idx=i, event_id=e.id)}",
            e.model_dump_json(exclude_none=True),
        )
        for i, e in enumerate(new_events(run.plan.resume_events))
    ]
    items += [(f"events/.eventlog-len-{len(items)}.marker", ""), (BASE_STATE, '{"id": "resume"}')]
    for key in keys:
        run.files(key, "resume").load(items)
    samples: dict[str, list[float]] = {k: [] for k in keys}
    indexing: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(run.plan.resume_reps):
        for key in _rotated(keys, r):
            [report] = in_children(resume_worker, [(run.subjects[key], run.where(key, "resume"))])
            if report["events"] != run.plan.resume_events:
                raise AssertionError(f"{key}: resumed {report['events']} events")
            samples[key].append(report["ms"])
            indexing[key].append(round(report["index_ms"], 1))
    for key in keys:  # the rest of each resume is reading the events
        run.results.check("resume", key, {"ms_to_list_and_index": indexing[key]})
    run.results.record("SDK", resume_row(run.plan), "ms", samples)


# -- scale ----------------------------------------------------------------------------


def growth_rows(plan: Plan) -> list[str]:
    """The names of the listing rows, one per namespace size."""
    return [f"list 100 children among {n:,} files" for n in plan.namespace_sizes]


def growth(run: Run) -> None:
    """``list`` of a 100-file directory among ever more files, vs the raw range scan.

    Each size is a namespace of its own, all loaded first; every (subject, size) is then
    timed in one interleaved run, so drift on the machine cannot pass for growth.
    """
    stores = run.keys("sqlstore", every_row=True)
    keys = list(
        dict.fromkeys(k for s in stores for k in (run.subjects[s].floor, s) if k in run.subjects)
    )
    handles = {(k, n): run.files(k, f"growth-{n}") for n in run.plan.namespace_sizes for k in keys}
    text = event_json(KIB)

    def load(item: tuple[tuple[str, int], Any]) -> None:
        (_key, n), files = item
        # The other files sit in directories of 100, half sorting before the target.
        others = (divmod(i, 100) for i in range(n))
        files.load(
            [(f"target/f{i:03d}", text) for i in range(100)]
            + [(f"{'az'[d % 2]}-other/d{d:06d}/f{f:03d}", text) for d, f in others]
        )

    with ThreadPoolExecutor(len(keys)) as pool:
        list(pool.map(load, handles.items()))

    def lister(files: Any) -> Variant:
        def call(_i: int) -> None:
            if len(files.list("target")) != 100:
                raise AssertionError("the target directory does not list 100 files")

        return Variant(call)

    samples = interleave(
        {f"{k}|{n}": lister(h) for (k, n), h in handles.items()},
        run.plan.list_calls,
        run.plan.batch,
    )
    for n, name in zip(run.plan.namespace_sizes, growth_rows(run.plan), strict=True):
        run.results.record("Scale", name, "µs", {k: samples[f"{k}|{n}"] for k in keys})
    for h in handles.values():
        h.close()


def stores_rows(plan: Plan) -> list[str]:
    """The names of the many-stores rows."""
    many = f"{plan.threads} threads on {plan.stores:,} stores"
    return [
        f"create a store ({plan.stores:,} on one engine)",
        f"{many}: writes and reads",
        f"{many}: one call",
    ]


def many_stores(run: Run) -> None:
    """Many stores on one engine (at most 10 pooled connections), used from several threads."""
    create, rate, calls = {}, {}, {}
    for key in run.keys("sqlstore", every_row=True):
        create[key], rate[key], calls[key] = _many_stores_on(run, run.subjects[key])
    create_row, rate_row, call_row = stores_rows(run.plan)
    run.results.record("Scale", create_row, "µs", create)
    run.results.record("Scale", rate_row, "ops/s", rate, higher_is_better=True)
    run.results.record("Scale", call_row, "µs", calls)


def _many_stores_on(run: Run, subject: Subject) -> tuple[list[float], list[float], list[float]]:
    plan, clock, text = run.plan, time.perf_counter_ns, event_json(KIB)
    engine = sqlstore.create_engine(subject.url, pool_size=5, max_overflow=5, **subject.options)
    pool = {"opened": 0, "out": 0, "most_out": 0}
    guard = threading.Lock()

    def counter(what: str, step: int) -> Callable[..., None]:
        def count(*_args: Any) -> None:
            with guard:
                pool[what] += step
                pool["most_out"] = max(pool["most_out"], pool["out"])

        return count

    for event, what, step in (
        ("connect", "opened", 1),
        ("checkout", "out", 1),
        ("checkin", "out", -1),
    ):
        sqlalchemy.event.listen(engine, event, counter(what, step))
    create, stores = [], []
    for i in range(plan.stores):
        start = clock()
        stores.append(sqlstore.SQLFileStore(engine, f"{run.run_id}-stores-{i:05d}"))
        create.append((clock() - start) / 1000)
    facts = {"opened_by_creating": pool["opened"], "out_after_creating": pool["out"]}
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    extra = [sqlstore.SQLFileStore(engine, f"m{i}") for i in range(1000)]
    facts["bytes_per_store"] = (tracemalloc.get_traced_memory()[0] - before) // len(extra)
    tracemalloc.stop()
    used: set[int] = set()
    latencies: list[float] = []
    barrier = threading.Barrier(plan.threads + 1)

    def worker(t: int) -> None:
        rng = random.Random(t)
        barrier.wait()
        for k in range(plan.thread_ops):
            used.add(i := rng.randrange(len(stores)))
            path = f"events/event-{t:02d}-{k:05d}.json"
            start = clock()
            stores[i].write(path, text)
            middle = clock()
            if stores[i].read(path) != text:
                raise AssertionError("read back other content")
            latencies.extend(((middle - start) / 1000, (clock() - middle) / 1000))

    with ThreadPoolExecutor(plan.threads) as threads:
        futures = [threads.submit(worker, t) for t in range(plan.threads)]
        barrier.wait()
        started = time.perf_counter()
        for future in futures:
            future.result()
        rate = len(latencies) / (time.perf_counter() - started)
    facts |= {"most_checked_out": pool["most_out"], "opened": pool["opened"], "limit": 10}
    run.results.check("pool", subject.key, facts)
    with stores[0].lock("bench/.cleanup"):
        for i in used:
            stores[i].delete("")
    engine.dispose()
    return create, [rate], latencies


# -- under the SDK's logging ----------------------------------------------------------

Levels = dict[str, tuple[int, bool, bool, tuple[logging.Handler, ...]]]


def _levels() -> Levels:
    """Level, propagate, disabled and handlers of the root and every logger."""
    found = {"": logging.getLogger()} | {
        n: lg
        for n, lg in logging.Logger.manager.loggerDict.items()
        if isinstance(lg, logging.Logger)
    }
    return {n: (lg.level, lg.propagate, lg.disabled, tuple(lg.handlers)) for n, lg in found.items()}


def _restore(state: Levels) -> None:
    """Put every logger back as in ``state``, except sqlstore's own (it may set those)."""
    now = _levels()
    for name, (level, propagate, disabled, handlers) in state.items():
        if "sqlstore" not in name and now.get(name) != state[name]:
            lg = logging.getLogger(name or None)
            lg.setLevel(level)  # also clears the isEnabledFor caches
            lg.propagate, lg.disabled, lg.handlers = propagate, disabled, list(handlers)


def _under(state: Levels, variant: Variant) -> Variant:
    def prepare(ids: range) -> None:
        _restore(state)
        if variant.prepare is not None:
            variant.prepare(ids)

    return Variant(variant.call, prepare, variant.before_each)


def logging_rows(plan: Plan) -> list[str]:
    """The names of the rows timed under both logging configurations."""
    return [f"logging check: {r.name}" for r in call_rows(plan) if r.small]


def logging_worker(
    subjects: list[Subject], where: dict[str, str], plan: Plan, names: list[str], log_path: str
) -> Any:
    """Child: time calls with quiet logging and with the SDK's, interleaved.

    The SDK's configuration is applied exactly as ``import openhands.sdk`` does it when
    ``LOG_AUTO_CONFIG`` is not off (root at INFO, a Rich handler on stderr, INFO on every
    logger at the root's old level), after sqlstore and SQLAlchemy are imported. stderr
    goes to a file, as it would to a log collector.
    """
    from openhands.sdk.logger import setup_logging

    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 2)
    quiet = _levels()
    setup_logging()
    info = _levels()
    handles: dict[tuple[str, str], Files] = {}
    for s in subjects:
        engine = sqlstore.create_engine(s.url, **s.options)
        for mode in ("quiet", "info"):
            store = sqlstore.SQLFileStore(engine, where[mode])
            store.write("probe", "{}")  # connect and prepare under the SDK's logging
            handles[s.key, mode] = Files(store)
    after = _levels()
    touched = sorted(
        n or "root"
        for n, v in after.items()
        if "sqlstore" not in n and info.get(n, (0, True, False, ())) != v
    )
    _restore(quiet)
    rows = [r for r in call_rows(plan) if f"logging check: {r.name}" in names]
    for files in handles.values():
        files.load(call_files(plan, rows))
    _restore(info)
    logged_before = os.fstat(2).st_size
    samples = {}
    for row in rows:
        variants = {
            f"{k}|{mode}": _under(info if mode == "info" else quiet, call_variant(h, row))
            for (k, mode), h in handles.items()
        }
        samples[row.name] = interleave(variants, plan.logging_calls, plan.batch)
    logged = os.fstat(2).st_size - logged_before
    # The trap itself, to show the harness sees it: a plain SQLAlchemy engine.
    engine = sqlalchemy.create_engine(subjects[0].url)

    def select_one(_i: int) -> None:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1")).scalar()

    control = interleave(
        {m: _under(s, Variant(select_one)) for m, s in (("quiet", quiet), ("info", info))},
        plan.logging_calls,
        plan.batch,
    )
    _restore(info)
    quiet_us, info_us = (summarize(control[m]).median for m in ("quiet", "info"))
    facts = {
        "loggers_changed": ", ".join(touched) or "none",
        "bytes_logged_in_INFO_batches": logged,
        f"control (SELECT 1 on a plain SQLAlchemy engine, {subjects[0].title})": (
            f"{quiet_us:,.0f} µs quiet, {info_us:,.0f} µs under INFO"
        ),
    }
    return {"samples": samples, "facts": facts}


def logging_check(run: Run) -> None:
    """Per-call cost with quiet logging and under the SDK's INFO logging, in a child."""
    subjects = [run.subjects[k] for k in run.keys("sqlstore", every_row=True)]
    where = {m: run.where(subjects[0].key, f"logging-{m}") for m in ("quiet", "info")}
    names = [n for n in logging_rows(run.plan) if run.wants(n)]
    args = (subjects, where, run.plan, names, str(run.tmp / "stderr.log"))
    [report] = in_children(logging_worker, [args])
    for name, samples in report["samples"].items():
        cells = {}
        for label, values in samples.items():
            key, mode = label.split("|")
            cells[key if mode == "quiet" else f"{key}+info"] = values
        run.results.record("Under the SDK's logging", f"logging check: {name}", "µs", cells)
    run.results.check("logging", "all", report["facts"])


#: (what, the rows it makes, how it runs), in report order.
WORKLOADS: tuple[tuple[str, Callable[[Plan], list[str]], Callable[[Run], None]], ...] = (
    ("per-call rows", lambda p: [r.name for r in call_rows(p)], per_call),
    ("SDK append, one writer", lambda p: [APPEND_ONE], append_one),
    ("SDK append, several processes", lambda p: [append_many_row(p)], append_many),
    ("SDK resume", lambda p: [resume_row(p)], resume),
    ("listing among more files", growth_rows, growth),
    ("many stores", stores_rows, many_stores),
    ("SDK logging", logging_rows, logging_check),
)


def run_all(run: Run) -> None:
    """Run every workload ``--only`` selects; one that fails is reported, the rest run."""
    for title, rows, work in WORKLOADS:
        if not run.wants(*rows(run.plan)):
            continue
        log(f"== {title}")
        started = time.perf_counter()
        try:
            work(run)
        except Exception as exc:
            run.results.failed.append(title)
            log(f"!! {title} failed: {exc}\n{traceback.format_exc()}")
        run.results.seconds[title] = round(time.perf_counter() - started, 1)
