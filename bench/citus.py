"""``uv run python -m bench.citus``: sqlstore on a Citus cluster (a coordinator, 2 workers).

Start a cluster with ``bash ../shared/citus/cluster.sh start`` (it prints the URL given
by ``--url``). What is measured, each against a baseline in the same process:

* per call: sqlstore against raw psycopg on the same cluster (its table distributed by
  namespace like sqlstore's, every statement naming the namespace, so each is a
  one-shard router query too), interleaved;
* the SDK append (``EventLog.append``, one writer) against ``LocalFileStore``;
* the plan modes: per-call plans against PostgreSQL's own choice on Citus, and against
  the cached generic plans sqlstore keeps on plain PostgreSQL (``--pg-url``);
* 8 processes appending to one conversation: events/s, and that none is lost;
* a fleet: 200 conversations x 50 events from 4 processes: events/s, and the share of
  the rows on each worker.
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
import uuid
from typing import Any

import psycopg
import sqlalchemy as sa
from openhands.sdk.conversation.event_store import EventLog
from openhands.sdk.io import LocalFileStore
from sqlalchemy.engine import make_url

import sqlstore
from bench.harness import Variant, interleave, summarize
from bench.subjects import RAW_TABLE, Files, RawPostgres, Subject, raw_key
from bench.workloads import KIB, call_files, call_rows, call_variant, message_event
from sqlstore import admin

CITUS_URL = "postgresql+psycopg://postgres@127.0.0.1:9700/postgres"
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/sqlstore_bench"
#: The per-call rows measured here (the 1 KiB ones and the small listing).
ROWS = (
    "write a new 1 KiB file",
    "overwrite a 1 KiB file",
    "read a 1 KiB file",
    "exists, file present",
    "exists, file missing",
    "list 100 children",
    "delete a 1 KiB file",
    "lock and unlock",
)


class RawCitus(RawPostgres):
    """Raw psycopg on a table distributed by namespace: every statement names it."""

    def __init__(self, subject: Subject, namespace: str) -> None:
        super().__init__(subject, namespace)
        m, table, ns = self.mark, RAW_TABLE, "namespace = %s AND "
        self.upsert = (
            "ON CONFLICT (namespace, file_id) DO UPDATE SET content = excluded.content,"
            " size = excluded.size, updated_at = excluded.updated_at"
        )
        # Citus takes no volatile function in DO UPDATE: the new row's default, as sqlstore.
        self.overwrite = f"{self.insert} {self.upsert}"
        self.select = f"SELECT content FROM {table} WHERE {ns}file_id = {m}"
        self.exists_sql = f"SELECT EXISTS (SELECT 1 FROM {table} WHERE {ns}file_id = {m})"
        self.remove = f"DELETE FROM {table} WHERE {ns}file_id = {m}"

    def create(self) -> None:
        """The table with the namespace leading its key, distributed by namespace."""
        self._run(f"DROP TABLE IF EXISTS {RAW_TABLE}")
        self._run(
            f"CREATE TABLE {RAW_TABLE} (file_id bytea NOT NULL,"
            ' namespace varchar(255) COLLATE "C" NOT NULL, parent bytea NOT NULL,'
            ' name varchar(1024) COLLATE "C" NOT NULL, content bytea NOT NULL,'
            " size BIGINT NOT NULL, chunk_count INTEGER NOT NULL DEFAULT 0,"
            " created_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,"
            " updated_at timestamptz NOT NULL DEFAULT CURRENT_TIMESTAMP,"
            " PRIMARY KEY (namespace, file_id))"
        )
        self._run(f"CREATE INDEX ix_{RAW_TABLE} ON {RAW_TABLE} (namespace, parent, name)")
        self._run(f"SELECT create_distributed_table('{RAW_TABLE}', 'namespace')")

    def _keyed(self, path: str) -> tuple[Any, ...]:
        return (self.namespace, raw_key(self.namespace, path))

    def read_bytes(self, path: str) -> bytes:
        """``SELECT content`` by namespace and key."""
        row = self._run(self.select, self._keyed(path)).fetchone()
        if row is None:
            raise FileNotFoundError(path)
        return bytes(row[0])

    def exists(self, path: str) -> bool:
        """``SELECT EXISTS`` by namespace and key."""
        return bool(self._run(self.exists_sql, self._keyed(path)).fetchone()[0])

    def delete(self, path: str) -> None:
        """``DELETE`` by namespace and key."""
        self._run(self.remove, self._keyed(path))


def _median_us(samples: list[float]) -> float:
    return summarize(samples).median


def _plan_mode(engine: sa.Engine, mode: str) -> sa.Engine:
    """``engine`` with every new connection set to ``plan_cache_mode = mode`` after sqlstore."""

    @sa.event.listens_for(engine, "connect")
    def _set(dbapi_connection: Any, record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f"SET plan_cache_mode = {mode}")

    return engine


def per_call(url: str, calls: int, pg_url: str | None) -> list[str]:
    """The store against raw psycopg, and plan modes against each other; report lines."""
    from bench.harness import PLANS

    plan = PLANS["quick"]
    rows = [row for row in call_rows(plan) if row.name in ROWS]
    run = f"bench-{uuid.uuid4().hex[:8]}"
    raw = RawCitus(Subject("citus-raw", "raw", "raw", "postgresql", url=url), f"{run}-raw")
    raw.create()
    engines = {
        "sqlstore": sqlstore.create_engine(url),
        "sqlstore per-call plans": _plan_mode(sqlstore.create_engine(url), "force_custom_plan"),
    }
    handles: dict[str, Any] = {"raw": raw}
    handles |= {
        name: Files(sqlstore.SQLFileStore(engine, f"{run}-{i}"))
        for i, (name, engine) in enumerate(engines.items())
    }
    if pg_url is not None:
        sqlstore.migrate(pg_url)
        for name, mode in (("pg generic", None), ("pg custom", "force_custom_plan")):
            engine = sqlstore.create_engine(pg_url)
            engines[name] = engine if mode is None else _plan_mode(engine, mode)
            handles[name] = Files(sqlstore.SQLFileStore(engines[name], f"{run}-{name}"))
    for handle in handles.values():
        handle.load(call_files(plan, rows))
    lines = [
        "per call, median µs: citus raw psycopg | citus sqlstore (ratio) | citus sqlstore with "
        "per-call plans (ratio to PostgreSQL's own choice, sqlstore's on Citus)"
        + (" | plain PostgreSQL sqlstore generic | custom plans (ratio)" if pg_url else "")
    ]
    for row in rows:
        variants = {name: call_variant(handle, row) for name, handle in handles.items()}
        samples = {k: _median_us(v) for k, v in interleave(variants, calls, 20).items()}
        line = (
            f"  {row.name:24s} {samples['raw']:8.0f} | {samples['sqlstore']:8.0f} "
            f"({samples['sqlstore'] / samples['raw']:.2f}x) | "
            f"{samples['sqlstore per-call plans']:8.0f} "
            f"({samples['sqlstore per-call plans'] / samples['sqlstore']:.2f}x)"
        )
        if pg_url:
            line += (
                f" | {samples['pg generic']:6.0f} | {samples['pg custom']:6.0f} "
                f"({samples['pg custom'] / samples['pg generic']:.2f}x)"
            )
        lines.append(line)
    for handle in handles.values():
        store = getattr(handle, "store", None)
        if isinstance(store, sqlstore.SQLFileStore):
            store.delete("")
    raw._run(f"DROP TABLE IF EXISTS {RAW_TABLE}")
    raw.close()
    for engine in engines.values():
        engine.dispose()
    return lines


def sdk_append(url: str, calls: int) -> str:
    """One writer's ``EventLog.append`` on Citus against ``LocalFileStore``."""
    template = message_event(KIB)
    engine = sqlstore.create_engine(url)
    namespace = f"bench-append-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        logs = {
            "citus": EventLog(sqlstore.SQLFileStore(engine, namespace), dir_path="events"),
            "local": EventLog(LocalFileStore(tmp), dir_path="events"),
        }

        def appender(log: EventLog) -> Variant:
            return Variant(
                lambda _i: log.append(template.model_copy(update={"id": str(uuid.uuid4())}))
            )

        samples = interleave({k: appender(v) for k, v in logs.items()}, calls, 20)
    citus, local = _median_us(samples["citus"]), _median_us(samples["local"])
    sqlstore.SQLFileStore(engine, namespace).delete("")
    engine.dispose()
    return (
        f"SDK append, one writer, median: citus {citus:.0f} µs, LocalFileStore {local:.0f} µs "
        f"({citus / local:.1f}x)"
    )


def append_worker(url: str, namespaces: list[str], events: int) -> list[str]:
    """Append ``events`` events to each conversation in turn (a child process)."""
    engine = sqlstore.create_engine(url)
    template = message_event(KIB)
    ids: list[str] = []
    try:
        for namespace in namespaces:
            log = EventLog(sqlstore.SQLFileStore(engine, namespace), dir_path="events")
            for _ in range(events):
                event = template.model_copy(update={"id": str(uuid.uuid4())})
                log.append(event)
                ids.append(event.id)
    finally:
        engine.dispose()
    return ids


def _lost(url: str, namespaces: list[str], ids: list[str]) -> int:
    engine = sqlstore.create_engine(url)
    try:
        stored: list[str] = []
        for namespace in namespaces:
            stored += [e.id for e in EventLog(sqlstore.SQLFileStore(engine, namespace), "events")]
        return len(set(ids) - set(stored)) + len(stored) - len(set(stored))
    finally:
        engine.dispose()


def one_conversation(url: str, processes: int, events: int) -> str:
    """``processes`` writers appending to one conversation at once."""
    namespace = f"bench-one-{uuid.uuid4().hex[:8]}"
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["bench.workloads"])
    with context.Pool(processes) as pool:
        pool.map(time.sleep, [0.5] * processes)  # every child started, untimed
        started = time.perf_counter()
        results = pool.starmap(append_worker, [(url, [namespace], events)] * processes)
        elapsed = time.perf_counter() - started
    ids = [i for part in results for i in part]
    lost = _lost(url, [namespace], ids)
    return (
        f"{processes} processes x {events} appends on one conversation: "
        f"{len(ids) / elapsed:.0f} events/s, {lost} lost or duplicated"
    )


def fleet(url: str, conversations: int, events: int, processes: int) -> str:
    """Many conversations from several processes: events/s and rows per worker."""
    prefix = f"bench-fleet-{uuid.uuid4().hex[:8]}"
    namespaces = [f"{prefix}-{i:04d}" for i in range(conversations)]
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["bench.workloads"])
    with context.Pool(processes) as pool:
        pool.map(time.sleep, [0.5] * processes)  # every child started, untimed
        started = time.perf_counter()
        shares = [(url, namespaces[p::processes], events) for p in range(processes)]
        results = pool.starmap(append_worker, shares)
        elapsed = time.perf_counter() - started
    ids = [i for part in results for i in part]
    lost = _lost(url, namespaces, ids)
    spread = rows_per_worker(url, prefix)
    total = sum(spread.values())
    where = ", ".join(f"{node} {count / total:.0%}" for node, count in spread.items())
    return (
        f"fleet: {conversations} conversations x {events} events from {processes} processes: "
        f"{len(ids) / elapsed:.0f} events/s, {lost} lost or duplicated; rows: {where}"
    )


def rows_per_worker(url: str, prefix: str) -> dict[str, int]:
    """sqlstore_files rows of namespaces starting with ``prefix``, per worker."""
    conninfo = make_url(url).render_as_string(hide_password=False).replace("+psycopg", "")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT n.nodename || ':' || n.nodeport, sum(r.result::bigint)"
            " FROM run_command_on_shards('sqlstore_files',"
            " $$SELECT count(*) FROM %s WHERE namespace LIKE " + f"'{prefix}%%'$$) r"
            " JOIN pg_dist_placement p ON p.shardid = r.shardid"
            " JOIN pg_dist_node n ON n.groupid = p.groupid GROUP BY 1 ORDER BY 1"
        ).fetchall()
    return {str(node): int(count) for node, count in rows}


def main(argv: list[str] | None = None) -> int:
    """Run every measurement and print one line (or table) each."""
    p = argparse.ArgumentParser(prog="python -m bench.citus", description=__doc__)
    p.add_argument("--url", default=CITUS_URL, help="the coordinator (cluster.sh start)")
    p.add_argument("--pg-url", default=PG_URL, help="plain PostgreSQL, for the plan modes")
    p.add_argument("--calls", type=int, default=200, help="timed calls per row and subject")
    p.add_argument("--conversations", type=int, default=200)
    p.add_argument("--events", type=int, default=50)
    p.add_argument("--quick", action="store_true", help="a few calls and a small fleet")
    args = p.parse_args(argv)
    if args.quick:
        args.calls, args.conversations, args.events = 40, 20, 10
    _create(args.pg_url)
    sqlstore.migrate(args.url)
    print(admin.layout(sqlstore.create_engine(args.url)))
    started = time.perf_counter()
    for line in per_call(args.url, args.calls, args.pg_url):
        print(line, flush=True)
    print(sdk_append(args.url, args.calls), flush=True)
    print(one_conversation(args.url, 8, max(10, args.events * 2)), flush=True)
    print(fleet(args.url, args.conversations, args.events, 4), flush=True)
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


def _create(url: str) -> None:
    target = make_url(url)
    admin = target.set(database="postgres").render_as_string(hide_password=False)
    with psycopg.connect(admin.replace("+psycopg", ""), autocommit=True) as conn:
        found = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (target.database,)
        ).fetchone()
        if not found:
            conn.execute(f'CREATE DATABASE "{target.database}"')


if __name__ == "__main__":
    raise SystemExit(main())
