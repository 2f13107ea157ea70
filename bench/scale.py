"""Scale workloads: listing in a large namespace (P5), many stores on one engine (P6)."""

from __future__ import annotations

import random
import threading
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.pool import QueuePool

import sqlstore
from bench.baselines import RawMySQL, RawPostgres, RawSQLite
from bench.databases import Databases, psycopg_conninfo, pymysql_args
from bench.plan import Plan
from bench.results import Results
from bench.subjects import SqlstoreEngines, sqlstore_bulk
from bench.timing import Variant, interleave, summarize

TARGET_DIR = "target"
TARGET_FILES = 100
FILES_PER_DIR = 100
#: Pool limits P6 runs with: at most 10 connections.
POOL: dict[str, Any] = {"pool_size": 5, "max_overflow": 5}

# -- P5 ------------------------------------------------------------------------------


def _other_files(start: int, stop: int, contents: str) -> list[tuple[str, str]]:
    """Files ``start..stop`` of the other directories, half sorting before the target."""
    items = []
    for n in range(start, stop):
        d, f = divmod(n, FILES_PER_DIR)
        side = "a-other" if d % 2 == 0 else "z-other"
        items.append((f"{side}/d{d:06d}/f{f:03d}", contents))
    return items


def _pairs(
    dbs: Databases, engines: SqlstoreEngines, namespace: str, tmp: Path
) -> dict[str, tuple[Any, Callable[[list[tuple[str, str]]], None]]]:
    """Per variant: (what ``list`` is called on, its untimed bulk loader), in one namespace."""
    pairs: dict[str, tuple[Any, Callable[[list[tuple[str, str]]], None]]] = {}
    if (pg := dbs.get("postgresql")) is not None:
        raw_pg = RawPostgres(psycopg_conninfo(pg.url), namespace)
        pairs["pg:raw"] = (raw_pg, raw_pg.bulk_write)
        store = sqlstore.SQLFileStore(engines.get("pg:sqlstore", pg.url), namespace)
        pairs["pg:sqlstore"] = (store, sqlstore_bulk(store))
    if (lite := dbs.get("sqlite")) is not None:
        raw_lite = RawSQLite(tmp / "raw-full.db", namespace, "FULL")
        pairs["sqlite:raw-full"] = (raw_lite, raw_lite.bulk_write)
        store = sqlstore.SQLFileStore(engines.get("sqlite:sqlstore-full", lite.url), namespace)
        pairs["sqlite:sqlstore-full"] = (store, sqlstore_bulk(store))
    if (my := dbs.get("mysql")) is not None:
        raw_my = RawMySQL(pymysql_args(my.url), namespace)
        pairs["mysql:raw"] = (raw_my, raw_my.bulk_write)
        store = sqlstore.SQLFileStore(engines.get("mysql:sqlstore", my.url), namespace)
        pairs["mysql:sqlstore"] = (store, sqlstore_bulk(store))
    return pairs


def run_namespace_growth(
    dbs: Databases,
    engines: SqlstoreEngines,
    namespaces: dict[int, str],
    tmp: Path,
    contents: str,
    plan: Plan,
    results: Results,
    log: Callable[[str], None] = print,
) -> None:
    """Time ``list`` of a 100-file directory in namespaces of growing size, vs the raw scan.

    Each size has a namespace of its own, all loaded first; then every (variant, size)
    is timed in one interleaved run, so drift on the machine cannot pass for growth.
    """
    by_size = {size: _pairs(dbs, engines, namespaces[size], tmp) for size in plan.namespace_sizes}
    started = time.perf_counter()
    for size, pairs in by_size.items():
        items = [(f"{TARGET_DIR}/f{k:05d}", contents) for k in range(TARGET_FILES)]
        items += _other_files(0, size, contents)
        with ThreadPoolExecutor(max_workers=len(pairs)) as pool:
            for f in [pool.submit(bulk, items) for _, bulk in pairs.values()]:
                f.result()
    log(
        f"  loaded {sum(plan.namespace_sizes):,} files per variant in "
        f"{time.perf_counter() - started:.1f}s"
    )
    variants = {
        f"{key}|{size}": _lister(subject)
        for size, pairs in by_size.items()
        for key, (subject, _) in pairs.items()
    }
    samples = interleave(variants, plan.list_calls, plan.batch)
    for label, values in samples.items():
        key, count = label.split("|")
        name = f"list 100 children, namespace of {int(count):,} files"
        results.add(name, key, summarize(values, "us"), "P5")
    for size in plan.namespace_sizes:
        name = f"list 100 children, namespace of {size:,} files"
        medians = ", ".join(f"{k}={v.median:.0f}" for k, v in results.rows[name].cells.items())
        log(f"  {size:,} files: {medians}")
    for pairs in by_size.values():
        for subject, _ in pairs.values():
            if not isinstance(subject, sqlstore.SQLFileStore):
                subject.close()
    results.checks["P5"] = {"sizes": list(plan.namespace_sizes), "target_files": TARGET_FILES}


def _lister(subject: Any) -> Variant:
    def call(_i: int) -> None:
        _check(subject.list(TARGET_DIR))

    return Variant(call)


def _check(listed: list[str]) -> None:
    if len(listed) != TARGET_FILES:
        raise AssertionError(f"listed {len(listed)} files, not {TARGET_FILES}")


# -- P6 ------------------------------------------------------------------------------


def _checked_out(engine: Engine) -> int:
    pool = engine.pool
    return pool.checkedout() if isinstance(pool, QueuePool) else -1


class PoolWatch:
    """Counts new connections and the most checked out at once, from pool events."""

    def __init__(self, engine: Any) -> None:
        self.opened = 0
        self.out = 0
        self.max_out = 0
        self._lock = threading.Lock()
        event.listen(engine, "connect", self._connect)
        event.listen(engine, "checkout", self._checkout)
        event.listen(engine, "checkin", self._checkin)

    def _connect(self, *_args: Any) -> None:
        with self._lock:
            self.opened += 1

    def _checkout(self, *_args: Any) -> None:
        with self._lock:
            self.out += 1
            self.max_out = max(self.max_out, self.out)

    def _checkin(self, *_args: Any) -> None:
        with self._lock:
            self.out -= 1


def run_many_stores(
    dbs: Databases,
    namespace: str,
    contents: str,
    plan: Plan,
    results: Results,
    log: Callable[[str], None] = print,
) -> None:
    """Create many stores on one engine (pool <= 10), then use them from 8 threads."""
    targets: dict[str, tuple[str, dict[str, Any]]] = {}
    if (pg := dbs.get("postgresql")) is not None:
        targets["pg:sqlstore"] = (pg.url, {})
    if (lite := dbs.get("sqlite")) is not None:
        targets["sqlite:sqlstore-full"] = (lite.url, {})
    if (my := dbs.get("mysql")) is not None:
        targets["mysql:sqlstore"] = (my.url, {})
    checks: dict[str, Any] = {}
    for key, (url, options) in targets.items():
        checks[key] = _many_stores(key, url, options, namespace, contents, plan, results)
        log(f"  {key}: {checks[key]}")
    results.checks["P6"] = checks


def _many_stores(
    key: str,
    url: str,
    options: dict[str, Any],
    namespace: str,
    contents: str,
    plan: Plan,
    results: Results,
) -> dict[str, Any]:
    engine = sqlstore.create_engine(url, **POOL, **options)
    watch = PoolWatch(engine)
    clock = time.perf_counter_ns
    create_us: list[float] = []
    stores = []
    for i in range(plan.stores):
        start = clock()
        stores.append(sqlstore.SQLFileStore(engine, f"{namespace}-{i:05d}"))
        create_us.append((clock() - start) / 1000.0)
    after_create = {"connections_opened": watch.opened, "checked_out": _checked_out(engine)}
    tracemalloc.start()
    before, _ = tracemalloc.get_traced_memory()
    extra = [sqlstore.SQLFileStore(engine, f"{namespace}-m{i:05d}") for i in range(1000)]
    after, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    bytes_per_store = (after - before) / len(extra)
    del extra

    latencies: list[list[float]] = [[] for _ in range(plan.threads)]
    touched: set[int] = set()
    errors: list[str] = []
    barrier = threading.Barrier(plan.threads + 1)

    def worker(t: int) -> None:
        rng = random.Random(t)
        out = latencies[t]
        try:
            barrier.wait()
            for k in range(plan.thread_ops):
                i = rng.randrange(len(stores))
                touched.add(i)
                store = stores[i]
                path = f"events/event-{t:02d}-{k:05d}.json"
                start = clock()
                store.write(path, contents)
                mid = clock()
                if store.read(path) != contents:
                    raise AssertionError("read back different content")
                end = clock()
                out += [(mid - start) / 1000.0, (end - mid) / 1000.0]
        except BaseException as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            raise

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(plan.threads)]
    for th in threads:
        th.start()
    barrier.wait()
    started = time.perf_counter()
    for th in threads:
        th.join()
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{key}: thread failed: {errors[0]}")
    ops = sum(len(x) for x in latencies)
    results.add(
        f"create {plan.stores:,} stores on one engine (per store)",
        key,
        summarize(create_us, "us"),
        "P6",
    )
    rate = ops / wall
    results.add(
        f"{plan.threads} threads on {plan.stores:,} stores, write+read",
        key,
        summarize([rate], "ops/s"),
        "P6",
        better="higher",
    )
    results.add(
        f"{plan.threads} threads on {plan.stores:,} stores, per call",
        key,
        summarize([x for lat in latencies for x in lat], "us"),
        "P6",
    )
    check = {
        "stores": plan.stores,
        "pool_limit": POOL["pool_size"] + POOL["max_overflow"],
        "after_create": after_create,
        "bytes_per_store": round(bytes_per_store),
        "ops": ops,
        "ops_per_s": round(rate),
        "max_checked_out": watch.max_out,
        "connections_opened": watch.opened,
        "checked_out_at_end": _checked_out(engine),
    }
    with stores[0].lock("bench/.cleanup"):
        for i in touched:
            stores[i].delete("")
    engine.dispose()
    return check
