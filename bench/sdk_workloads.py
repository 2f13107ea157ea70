"""Workloads driven through the SDK's real ``EventLog`` (P2, P3, P4).

* P2: one writer appends events (``EventLog.append``: lock, check the length marker,
  write the event, move the marker), every store interleaved.
* P3: 8 processes append to one conversation at once; events/s, then the log is
  read back and checked: every event once, indices contiguous, nothing lost.
* P4: a conversation is resumed in a fresh process, as ``ConversationState`` does it:
  read ``base_state.json``, build the ``EventLog`` (one ``list``), then read every
  event newest first (``EventLog.path_to_root`` from the last event).
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from openhands.sdk.conversation.event_store import EventLog
from openhands.sdk.conversation.persistence_const import (
    BASE_STATE,
    EVENT_FILE_PATTERN,
    EVENT_NAME_RE,
)
from openhands.sdk.event import Event
from openhands.sdk.io import InMemoryFileStore, LocalFileStore

import sqlstore
from bench.events import events
from bench.plan import Plan
from bench.procs import StoreSpec, context
from bench.results import Results
from bench.subjects import SqlstoreEngines, local_bulk, sqlstore_bulk
from bench.timing import Variant, interleave, summarize

EVENT_SIZE = 1024
#: Seconds a child may take before the run gives up on it.
CHILD_TIMEOUT = 300.0

# -- P2 ------------------------------------------------------------------------------


def run_append(
    stores: dict[str, Any], plan: Plan, results: Results, log: Callable[[str], None] = print
) -> None:
    """Time single-writer ``EventLog.append`` on every store, interleaved."""
    logs = {key: EventLog(store, dir_path="events") for key, store in stores.items()}
    pending: dict[str, dict[int, Event]] = {}

    def variant(key: str) -> Variant:
        event_log = logs[key]

        def prepare(ids: range) -> None:
            pending[key] = dict(zip(ids, events(len(ids), EVENT_SIZE), strict=True))

        return Variant(lambda i: event_log.append(pending[key][i]), prepare)

    samples = interleave({k: variant(k) for k in logs}, plan.appends, plan.append_batch)
    name = "SDK EventLog.append, 1 writer"
    for key, values in samples.items():
        results.add(name, key, summarize(values, "us"), "SDK")
    for key, event_log in logs.items():
        expected = plan.appends + plan.append_batch  # timed + warm-up
        if len(event_log) != expected:
            raise AssertionError(f"{key}: EventLog has {len(event_log)} events, not {expected}")
    log("  " + ", ".join(f"{k}={results.median(name, k):.0f}us" for k in logs))


def append_stores(
    engines: SqlstoreEngines, variants: dict[str, tuple[str, dict[str, Any]]], ns: str, tmp: Path
) -> dict[str, Any]:
    """The stores P2 appends to: Local, InMemory and every sqlstore variant."""
    stores: dict[str, Any] = {
        "local:warm": LocalFileStore(str(tmp / "append-local")),
        "memory": InMemoryFileStore(max_size=1_000_000, max_memory=1 << 30),
    }
    for key, (url, options) in variants.items():
        stores[key] = sqlstore.SQLFileStore(engines.get(key, url, **options), ns)
    return stores


# -- P3 ------------------------------------------------------------------------------


def append_worker(spec: StoreSpec, worker: int, count: int, barrier: Any, out: Any) -> None:
    """Child: append ``count`` events through the SDK once every worker is ready."""
    try:
        store = spec.open()
        event_log = EventLog(store, dir_path="events")
        batch = events(count, EVENT_SIZE, seed=worker)
        barrier.wait(timeout=CHILD_TIMEOUT)
        start = time.perf_counter()
        indices = [event_log.append(e) for e in batch]
        end = time.perf_counter()
        out.put(
            {
                "worker": worker,
                "start": start,
                "end": end,
                "ids": [e.id for e in batch],
                "indices": indices,
                "error": None,
            }
        )
    except BaseException as exc:  # report, never hang the parent
        out.put({"worker": worker, "error": f"{type(exc).__name__}: {exc}"})


def verify_log(store: Any, appended: set[str]) -> dict[str, Any]:
    """Read the log back: count files, indices, ids, and what the SDK sees."""
    names = [p.rsplit("/", 1)[-1] for p in store.list("events")]
    by_idx: dict[int, list[str]] = {}
    for name in names:
        m = EVENT_NAME_RE.match(name)
        if m:
            by_idx.setdefault(int(m.group("idx")), []).append(m.group("event_id"))
    found = [i for ids in by_idx.values() for i in ids]
    sdk_len = len(EventLog(store, dir_path="events"))
    return {
        "expected": len(appended),
        "event_files": len(found),
        "sdk_len": sdk_len,
        "lost": len(appended - set(found)),
        "duplicate_indices": sum(1 for ids in by_idx.values() if len(ids) > 1),
        "duplicate_ids": len(found) - len(set(found)),
        "contiguous": sorted(by_idx) == list(range(len(by_idx))),
    }


def run_multiprocess(
    specs: dict[str, Callable[[int], StoreSpec]],
    plan: Plan,
    results: Results,
    log: Callable[[str], None] = print,
) -> None:
    """8 processes append to one conversation per variant; rounds interleave variants."""
    ctx = context()
    rates: dict[str, list[float]] = {k: [] for k in specs}
    checks: dict[str, list[dict[str, Any]]] = {k: [] for k in specs}
    names = list(specs)
    for r in range(plan.proc_rounds):
        shift = r % len(names)
        for key in names[shift:] + names[:shift]:
            spec = specs[key](r)
            barrier = ctx.Barrier(plan.procs)
            out = ctx.Queue()
            procs = [
                ctx.Process(target=append_worker, args=(spec, w, plan.proc_events, barrier, out))
                for w in range(plan.procs)
            ]
            for p in procs:
                p.start()
            reports = [_get(out) for _ in procs]
            for p in procs:
                p.join(CHILD_TIMEOUT)
            errors = [rep["error"] for rep in reports if rep.get("error")]
            if errors:
                raise RuntimeError(f"{key}: append worker failed: {errors[0]}")
            total = sum(len(rep["ids"]) for rep in reports)
            span = max(rep["end"] for rep in reports) - min(rep["start"] for rep in reports)
            rates[key].append(total / span)
            appended = {i for rep in reports for i in rep["ids"]}
            store = spec.open()
            try:
                check = verify_log(store, appended)
            finally:
                if hasattr(store, "close"):
                    store.close()
            checks[key].append(check)
            log(f"  {key} round {r}: {total / span:.0f} events/s, {check}")
    name = f"SDK EventLog.append, {plan.procs} processes"
    for key, values in rates.items():
        results.add(name, key, summarize(values, "events/s"), "SDK", better="higher")
    results.checks["P3"] = {
        key: {
            "rounds": len(c),
            "events_per_round": plan.procs * plan.proc_events,
            "lost": sum(x["lost"] for x in c),
            "duplicate_indices": sum(x["duplicate_indices"] for x in c),
            "duplicate_ids": sum(x["duplicate_ids"] for x in c),
            "all_contiguous": all(x["contiguous"] for x in c),
            "sdk_len_ok": all(x["sdk_len"] == x["expected"] for x in c),
            "details": c,
        }
        for key, c in checks.items()
    }


def _get(out: Any) -> dict[str, Any]:
    try:
        report: dict[str, Any] = out.get(timeout=CHILD_TIMEOUT)
    except queue.Empty as exc:
        raise RuntimeError("a child process did not report in time") from exc
    return report


# -- P4 ------------------------------------------------------------------------------


def conversation(count: int) -> list[tuple[str, str]]:
    """A conversation of ``count`` events in the SDK's layout, with marker and base state."""
    items = []
    for idx, event in enumerate(events(count, EVENT_SIZE)):
        name = EVENT_FILE_PATTERN.format(idx=idx, event_id=event.id)
        items.append((f"events/{name}", event.model_dump_json(exclude_none=True)))
    items.append((f"events/.eventlog-len-{count}.marker", ""))
    items.append((BASE_STATE, '{"id": "bench-resume", "note": "read, not parsed"}'))
    return items


def load_conversation(spec: StoreSpec, items: list[tuple[str, str]]) -> None:
    """Write a conversation fast (untimed): plain files, or lock-block transactions."""
    if spec.kind == "local":
        local_bulk(Path(spec.target))(items)
        return
    store = spec.open()
    try:
        sqlstore_bulk(store)(items)
    finally:
        store.close()


def resume_worker(spec: StoreSpec, out: Any) -> None:
    """Child: resume the conversation cold and report how long each step took."""
    try:
        start = time.perf_counter()
        store = spec.open()
        with contextlib.suppress(FileNotFoundError):
            store.read(BASE_STATE)
        event_log = EventLog(store, dir_path="events")
        indexed = time.perf_counter()
        n = len(event_log)
        chain = event_log.path_to_root(event_log.get_id(n - 1)) if n else []
        end = time.perf_counter()
        out.put(
            {
                "seconds": end - start,
                "index_seconds": indexed - start,
                "read_seconds": end - indexed,
                "events": len(chain),
                "error": None,
            }
        )
    except BaseException as exc:
        out.put({"error": f"{type(exc).__name__}: {exc}"})


def run_resume(
    specs: dict[str, StoreSpec],
    plan: Plan,
    results: Results,
    log: Callable[[str], None] = print,
) -> None:
    """Load one conversation per variant, then resume it in fresh processes, interleaved."""
    items = conversation(plan.resume_events)
    started = time.perf_counter()
    for spec in specs.values():
        load_conversation(spec, items)
    log(f"  loaded {plan.resume_events} events per store in {time.perf_counter() - started:.1f}s")
    ctx = context()
    samples: dict[str, list[float]] = {k: [] for k in specs}
    parts: dict[str, list[dict[str, Any]]] = {k: [] for k in specs}
    names = list(specs)
    for r in range(plan.resume_reps):
        shift = r % len(names)
        for key in names[shift:] + names[:shift]:
            out = ctx.Queue()
            proc = ctx.Process(target=resume_worker, args=(specs[key], out))
            proc.start()
            report = _get(out)
            proc.join(CHILD_TIMEOUT)
            if report.get("error"):
                raise RuntimeError(f"{key}: resume failed: {report['error']}")
            if report["events"] != plan.resume_events:
                raise AssertionError(f"{key}: resumed {report['events']} events")
            samples[key].append(report["seconds"] * 1000.0)
            parts[key].append(report)
            log(f"  {key} rep {r}: {report['seconds'] * 1000:.0f} ms")
    name = f"SDK resume {plan.resume_events:,} events, cold"
    for key, values in samples.items():
        results.add(name, key, summarize(values, "ms"), "SDK")
    results.checks["P4"] = {
        key: {
            "index_ms": [round(p["index_seconds"] * 1000, 1) for p in reps],
            "read_ms": [round(p["read_seconds"] * 1000, 1) for p in reps],
        }
        for key, reps in parts.items()
    }
