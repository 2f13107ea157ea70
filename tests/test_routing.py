"""Every statement run against a namespace reaches one partition (or shard) only.

On a database hash-partitioned by namespace, a workload of every store call and every
administration function runs while each statement is recorded; each recorded statement
that names a namespace is then EXPLAINed with the values it ran with, and its plan must
touch at most one partition of each sqlstore table. That is what routes a statement to
a single shard in a distributed database too (Citus routes on the distribution column).

On Citus the plan itself says it: every statement that names a namespace is a router
plan of one task (one shard on one worker), and the statements that span namespaces
by design (the listing of namespaces, purge's scan for stale ones) are the only ones
that fan out to every shard.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from sqlstore import SQLFileStore, admin
from sqlstore.agent_server import _queries
from tests.test_retention import age_namespace

pytestmark = [pytest.mark.timeout(300)]

Recorded = tuple[str, Any]
_TABLE = re.compile(r"\bsqlstore_(files|chunks)\b")
#: Statements whose plan EXPLAIN shows.
_QUERIES = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "WITH"})


@pytest.fixture
def recorded(engine: sa.Engine) -> Iterator[list[Recorded]]:
    """Every statement sqlstore runs on ``engine`` meanwhile, with the values it ran with.

    Recorded as SQLAlchemy's ``before_cursor_execute`` listeners see them, which every
    statement sqlstore runs reaches (single calls, lock blocks, administration).
    """
    seen: list[Recorded] = []

    def record(
        conn: Any, cursor: Any, sql: str, params: Any, context: Any, executemany: bool
    ) -> None:
        if sql.lstrip().split(None, 1)[0].upper() not in _QUERIES:
            return  # no plan to read: ANALYZE after a bulk load, a lock, COMMIT
        if executemany:
            seen.extend((sql, row) for row in params)
        else:
            seen.append((sql, params))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def _workload(engine: sa.Engine, namespace: str, tmp_path: Path) -> None:
    """Every store call and administration function that works on one namespace."""
    store = SQLFileStore(engine, namespace)
    store.write("base_state.json", "{}")
    store.write("events/event-00000-a.json", "e0")
    store.write("events/sub/deep.json", b"\x00\xff")
    store.write("big.bin", bytes(3 << 20))  # chunked on MariaDB
    with store.lock("events/.eventlog.lock", timeout=5):
        assert not store.exists("events/.eventlog-len-1.marker")
        store.write("events/.eventlog-len-1.marker", "")
        with store.lock("nested", timeout=5):
            store.write("events/event-00001-b.json", "e1")
    for path in ("", "events", "events/sub", "base_state.json", "missing"):
        store.list(path)
        store.exists(path)
    for name in store.list("events"):
        if not name.endswith("/"):
            store.read(name)  # read-ahead after a listing
    store.read_bytes("big.bin")
    with pytest.raises(IsADirectoryError):
        store.write("events", "x")
    with pytest.raises(FileExistsError):
        store.write("base_state.json/x", "x")
    with pytest.raises(FileNotFoundError):
        store.read("events/none")
    store.delete("events/sub")
    admin.ls(engine, namespace, "events")
    admin.du(engine, namespace)
    admin.cat(engine, namespace, "base_state.json")
    admin.put(engine, namespace, "notes/todo", b"todo")
    admin.rm(engine, namespace, "notes", recursive=True)
    admin.export_namespace(engine, namespace, tmp_path / "out")
    admin.import_directory(engine, tmp_path / "out", namespace=namespace)
    admin.copy(engine, engine, [namespace])
    store.delete("big.bin")
    store.delete("events")
    age_namespace(engine, namespace, 40)
    # The scan for stale namespaces spans namespaces by design (a prefix); then each
    # one found is checked and deleted on its own.
    report = admin.purge(engine, timedelta(days=30), prefix="route-")
    assert [info.namespace for info in report.removed] == [namespace]


def _touched_partitions_pg(conn: Any, sql: str, params: Any) -> dict[str, set[str]]:
    with conn.cursor() as cursor:
        cursor.execute("EXPLAIN (FORMAT JSON) " + sql, params)
        (plan,) = cursor.fetchone()
    plan = plan if isinstance(plan, list) else json.loads(plan)
    touched: dict[str, set[str]] = {}

    def walk(node: Mapping[str, Any]) -> None:
        # Scans name partitions; the parent's name appears on the node that modifies it.
        relation = node.get("Relation Name", "")
        match = re.fullmatch(r"sqlstore_(files|chunks)_p\d+", relation)
        if match:
            touched.setdefault(match.group(1), set()).add(relation)
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return touched


def _touched_partitions_mysql(conn: Any, sql: str, params: Any) -> dict[str, set[str]]:
    with conn.cursor() as cursor:
        cursor.execute("EXPLAIN PARTITIONS " + sql, params)
        names = [column[0] for column in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    # Only partitioned tables (sqlstore's) have partitions; each reference is a row,
    # named by its alias.
    return {
        f"{row['id']}:{row['table']}": set(row["partitions"].split(","))
        for row in rows
        if row.get("partitions")
    }


def _citus_tasks(conn: Any, sql: str, params: Any) -> list[int]:
    """The task count of each distributed (Citus) job in the plan of ``sql``.

    A job that Citus runs to pull rows to the coordinator (an ``INSERT ... SELECT``
    whose ``SELECT`` reads no distributed table, as sqlstore's write was) counts as -1.

    The values are bound into the text first: Citus cannot plan an EXPLAIN whose
    statement has parameters and a subquery, while sqlstore's own runs are planned
    for their values (``plan_cache_mode``).
    """
    import psycopg

    with psycopg.ClientCursor(conn) as cursor:
        cursor.execute("EXPLAIN (FORMAT JSON) " + cursor.mogrify(sql, params))
        (plan,) = cursor.fetchone()
    plan = plan if isinstance(plan, list) else json.loads(plan)
    tasks: list[int] = []

    def walk(node: Any) -> None:
        if isinstance(node, Mapping):
            if node.get("INSERT/SELECT method") == "pull to coordinator":
                tasks.append(-1)
            job = node.get("Distributed Query", {}).get("Job")
            if job is not None:
                tasks.append(int(job["Task Count"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(plan)
    return tasks


@pytest.mark.parametrize("backend", ["pgpartitioned", "mysqlpartitioned"], indirect=True)
def test_every_statement_against_a_namespace_reaches_one_partition(
    engine: sa.Engine, migrated_url: URL, db_dialect: str, tmp_path: Path, recorded: list[Recorded]
) -> None:
    namespace = f"route-{uuid.uuid4().hex}"
    _workload(engine, namespace, tmp_path)
    ours = [
        (sql, params)
        for sql, params in recorded
        # (MySQL's VARBINARY namespace travels as UTF-8 bytes)
        if _TABLE.search(sql) and {namespace, namespace.encode()} & set(_values(params))
    ]
    distinct = {sql: params for sql, params in ours}
    assert len(distinct) >= 18, f"the workload ran only {len(distinct)} distinct statements"
    raw = sa.create_engine(migrated_url, poolclass=sa.pool.NullPool).raw_connection()
    explain = _touched_partitions_pg if db_dialect == "postgresql" else _touched_partitions_mysql
    wide, pruned = {}, 0
    try:
        for sql, params in distinct.items():
            touched = explain(raw.driver_connection, sql, params)
            if any(len(parts) > 1 for parts in touched.values()):
                wide[sql] = touched
            pruned += bool(touched)
    finally:
        raw.close()
    assert wide == {}
    assert pruned >= len(distinct) // 2  # the tables really are partitioned


def _values(params: Any) -> list[Any]:
    if params is None:  # a statement without parameters (a migration's, a lock's)
        return []
    return list(params.values()) if isinstance(params, Mapping) else list(params)


@pytest.mark.parametrize("backend", ["citus"], indirect=True)
def test_on_citus_every_per_conversation_statement_is_a_single_task_router_plan(
    engine: sa.Engine, migrated_url: URL, tmp_path: Path, recorded: list[Recorded]
) -> None:
    namespace = f"route-{uuid.uuid4().hex}"
    _workload(engine, namespace, tmp_path)
    # What spans namespaces by design: the namespaces listing, the agent server's catalog.
    assert admin.namespaces(engine, prefix="route-") == []
    found = _queries.root_files(engine, ["meta.json", "base_state.json"])
    assert namespace not in {root.namespace for root in found}  # purged above
    ours: dict[str, Any] = {}
    spanning: dict[str, Any] = {}
    for sql, params in recorded:
        if _TABLE.search(sql):
            named = namespace in set(_values(params))
            (ours if named else spanning)[sql] = params
    assert len(ours) >= 18, f"the workload ran only {len(ours)} distinct statements"
    raw = sa.create_engine(migrated_url, poolclass=sa.pool.NullPool).raw_connection()
    try:
        routed = {sql: _citus_tasks(raw.driver_connection, sql, p) for sql, p in ours.items()}
        fanned = {sql: _citus_tasks(raw.driver_connection, sql, p) for sql, p in spanning.items()}
    finally:
        raw.close()
    # Each statement a conversation runs is planned by Citus as one task on one shard,
    # the writes too (Statements.writes: the tree rules as UPDATEs, then INSERT ...
    # VALUES), from the engine's first write on: none is pulled through the coordinator
    # (an INSERT ... SELECT would be, and committed in two phases).
    pulled = {sql for sql, tasks in routed.items() if -1 in tasks}
    assert pulled == set()
    wide = {sql: t for sql, t in routed.items() if not t or set(t) != {1}}
    assert wide == {}
    # What spans namespaces by design (the namespaces listing, purge's scan) and only
    # that reaches every shard: each such statement reads from sqlstore_files only.
    assert fanned, "the workload ran no cross-namespace statement"
    print(f"\ncitus: {len(routed)} per-conversation statements, each 1 task; multi-shard:")
    for sql, tasks in fanned.items():
        print(f"  {max(tasks)} tasks: {' '.join(sql.split())[:160]}")
        assert max(tasks) > 1, sql
        assert "sqlstore_files" in sql and not re.search(r"\b(INSERT|UPDATE|DELETE)\b", sql), sql
