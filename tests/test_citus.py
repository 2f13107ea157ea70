"""Citus: the layout sqlstore makes, the nodes it refuses, and distributed faults survived.

The layout tests run on the ``citus`` backend's cluster. The fault tests stop a worker
or restart the coordinator, so each starts a private cluster (``tests.citus_cluster``);
they run wherever ``cluster.sh`` and a Citus build are found, and on the ``citus``
backend only, so ``SQLSTORE_TEST_REQUIRE=citus`` makes them required.

Each fault test runs 4 writer processes appending through the SDK's ``EventLog`` to
20 conversations, in turn, while the fault happens, then checks every conversation:
every acknowledged event is in its log exactly once, and the log is contiguous.
"""

from __future__ import annotations

import io
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

import sqlstore
import sqlstore.migrations
from sqlstore import cli
from sqlstore.dialects import citus
from tests import citus_cluster
from tests.backends import CitusServer, find_server
from tests.citus_cluster import Append, Cluster, worker_of, writer

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.parametrize("backend", ["citus"], indirect=True),
]

WRITERS = 4
CONVERSATIONS = 20


def _rows(url: URL) -> Callable[[str], Any]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")

    def rows(sql: str) -> Any:
        with engine.connect() as conn:
            return conn.exec_driver_sql(sql).all()

    return rows


def _shards(url: URL) -> list[tuple[str, int]]:
    return [
        (str(table), int(shard))
        for table, shard in _rows(url)(
            "SELECT logicalrelid::regclass::text, shardid FROM pg_dist_shard"
            " WHERE logicalrelid::regclass::text IN ('sqlstore_files', 'sqlstore_chunks')"
            " ORDER BY 2"
        )
    ]


# -- the layout -------------------------------------------------------------------------


def test_db_upgrade_distributes_both_tables_by_namespace_colocated_once(empty_url: URL) -> None:
    url = empty_url.render_as_string(hide_password=False)
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli.main(["--url", url, "db", "upgrade"]) == 0
    assert "Citus: distributed by namespace, co-located" in out.getvalue()
    layout = citus.layout(_rows(empty_url))
    assert layout.distributed and layout.colocated
    assert len(layout.workers) == 2 and layout.shards == 32
    shards = _shards(empty_url)
    assert {table for table, _ in shards} == {"sqlstore_files", "sqlstore_chunks"}
    # Again: nothing changes, whichever way it is run.
    sqlstore.migrate(empty_url)
    with redirect_stdout(out):
        assert cli.main(["--url", url, "db", "upgrade"]) == 0
    assert _shards(empty_url) == shards
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli.main(["--url", url, "db", "layout"]) == 0
    assert out.getvalue().strip() == layout.describe()
    assert "127.0.0.1:" in out.getvalue() and "16 shards" in out.getvalue()


def test_alembic_upgrade_head_distributes_the_tables(empty_url: URL) -> None:
    root = Path(__file__).resolve().parent.parent
    url = empty_url.render_as_string(hide_password=False)
    subprocess.run(
        [sys.executable, "-m", "alembic", "-x", f"url={url}", "upgrade", "head"],
        cwd=root,
        check=True,
        capture_output=True,
    )
    assert citus.layout(_rows(empty_url)).distributed


def test_revisions_run_on_distributed_tables_down_and_up_keeping_rows(empty_url: URL) -> None:
    sqlstore.migrate(empty_url)
    engine = sqlstore.create_engine(empty_url)
    try:
        store = sqlstore.SQLFileStore(engine, "kept")
        store.write("events/e1", "one")
        store.write("big", b"\x01" * 100_000)
        sqlstore.migrations.downgrade(empty_url, "0001")  # keys without the namespace: local again
        assert citus.distributed_tables(_rows(empty_url)) == set()
        sqlstore.migrate(empty_url)
        assert citus.layout(_rows(empty_url)).distributed
        assert store.read("events/e1") == "one"
        assert store.read_bytes("big") == b"\x01" * 100_000
        assert store.list("") == ["big", "events/"]
    finally:
        engine.dispose()


def test_hash_partitions_are_refused_on_citus(empty_url: URL) -> None:
    sqlstore.migrate(empty_url)
    with pytest.raises(ValueError, match="distributed by namespace"):
        sqlstore.migrate(empty_url, partitions=8)
    assert citus.layout(_rows(empty_url)).distributed


def test_a_worker_is_refused_with_the_reason_and_the_coordinator(migrated_url: URL) -> None:
    server, _ = find_server("citus")
    assert isinstance(server, CitusServer)
    host, port = server.workers()[0]
    worker = migrated_url.set(host=host, port=port)
    coordinator = f"the coordinator at {migrated_url.host}:{migrated_url.port}"
    engine = sqlstore.create_engine(worker)
    try:
        with pytest.raises(sqlstore.SchemaError) as info:
            sqlstore.SQLFileStore(engine, "ns").read("x")
        assert "Citus worker" in str(info.value) and coordinator in str(info.value)
        assert "excludes no writer on another node" in str(info.value)
    finally:
        engine.dispose()
    with pytest.raises(sqlstore.SchemaError, match=coordinator):
        sqlstore.migrate(worker)
    # Nothing was made there.
    assert _rows(worker)("SELECT to_regclass('sqlstore_alembic_version')") == [(None,)]


def test_citus_connections_leave_the_plans_to_postgresql(engine: sa.Engine) -> None:
    # (Generic plans, sqlstore's choice on PostgreSQL, fail on Citus for every statement
    # with a subquery: the write, the listing, the subtree delete.)
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("SHOW plan_cache_mode")
        assert cursor.fetchone()[0] == "auto"
    finally:
        raw.close()
    store = sqlstore.SQLFileStore(engine, f"plans-{uuid.uuid4().hex}")
    for i in range(12):  # past psycopg's preparation and PostgreSQL's five custom plans
        store.write(f"d/{i}", "x")
        assert store.list("d") == sorted(f"d/{j}" for j in range(i + 1))
        assert store.read(f"d/{i}") == "x" and store.exists("d")
    store.delete("d")
    assert not store.exists("d")


def test_lock_blocks_and_writes_commit_in_one_phase(
    engine: sa.Engine, migrated_url: URL, namespace: str
) -> None:
    """Each statement of a write goes whole to the namespace's shard (Statements.writes),
    so Citus commits a lock block, and a write outside one, in a single phase: nothing
    of them is recorded for two-phase recovery. A write committed in two phases is what
    a worker stopped between the phases left prepared there, acknowledged yet unseen."""
    from openhands.sdk.conversation.event_store import EventLog

    from tests.sdk_helpers import message_event

    rows = _rows(migrated_url)
    store = sqlstore.SQLFileStore(engine, namespace)
    log = EventLog(store, dir_path="events")
    log.append(message_event("event 0"))
    with _recovery_by_hand(migrated_url):  # nothing recorded is removed meanwhile
        (before,) = rows("SELECT count(*) FROM pg_dist_transaction")[0]
        for n in range(1, 6):
            log.append(message_event(f"event {n}"))
            store.write("base_state.json", f'{{"events": {n + 1}}}')
        store.write("f", "a file")
        with pytest.raises(FileExistsError), store.lock("l", timeout=5):
            store.write("g", "rolled back with the block")
            store.write("f/g", "below a file")
        with pytest.raises(IsADirectoryError):
            store.write("events", "over a directory")
        (after,) = rows("SELECT count(*) FROM pg_dist_transaction")[0]
    assert after == before, f"{after - before} transactions committed in two phases"
    assert len(log) == 6 and store.list("events")[0] == "events/.eventlog-len-6.marker"
    assert not store.exists("g") and store.read("f") == "a file"


def _outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        found = call()
    except OSError as exc:
        # The contract's refusal of a write below a file is FileExistsError; the OS
        # says NotADirectoryError when the file is further up than the parent.
        kind = type(exc).__name__.replace("NotADirectoryError", "FileExistsError")
        return "error", kind.replace("DatabaseError", f"DatabaseError: {exc}")
    return "ok", sorted(found) if isinstance(found, list) else found


def _prune(root: Path) -> None:
    """Remove empty directories: sqlstore's directories exist while files lie below them."""
    for directory, _, _ in sorted(os.walk(root), key=lambda d: -len(d[0])):
        if Path(directory) != root and not os.listdir(directory):
            os.rmdir(directory)


def test_random_operations_match_local_file_store(
    engine: sa.Engine, migrated_url: URL, tmp_path: Path
) -> None:
    from openhands.sdk.io import LocalFileStore

    assert citus.layout(_rows(migrated_url)).distributed  # the backend's own migration did it

    rng = random.Random(17)
    store = sqlstore.SQLFileStore(engine, f"vs-local-{uuid.uuid4().hex}")
    local = LocalFileStore(str(tmp_path))
    divergences = []
    for i in range(1600):
        path = "/".join(rng.choice("abc") for _ in range(rng.randint(1, 3)))
        op = rng.choice(["write", "write", "read", "list", "exists", "delete"])
        args: tuple[str, ...] = (path, f"v{i}") if op == "write" else (path,)
        ours = _outcome(lambda: getattr(store, op)(*args))  # noqa: B023
        theirs = _outcome(lambda: getattr(local, op)(*args))  # noqa: B023
        _prune(tmp_path)
        if op == "list" and ours[0] == theirs[0] == "ok":
            theirs = ("ok", sorted(p.replace(f"{tmp_path}/", "") for p in theirs[1]))
        if ours != theirs:
            divergences.append((op, path, ours, theirs))
    print(f"\ncitus: 1600 random operations, {len(divergences)} divergences from LocalFileStore")
    assert divergences == []


# -- distributed faults -------------------------------------------------------------------


@pytest.fixture(scope="module")
def private_cluster(backend: str) -> Iterator[Cluster]:
    """A cluster of this module's own (stopped and deleted after), migrated."""
    script = citus_cluster.scripts()
    if script is None:
        pytest.fail(
            "no cluster.sh for a private Citus cluster: set "
            f"{citus_cluster.SCRIPTS_VARIABLE} to the directory holding it",
            pytrace=False,
        )
    cluster = Cluster(script)
    try:
        cluster.start()
        sqlstore.migrate(cluster.url)
        yield cluster
    finally:
        cluster.stop()


def _under_writers(
    cluster: Cluster, tmp_path: Path, fault: Callable[[list[str]], None]
) -> tuple[list[str], list[Append], int]:
    """Run ``fault`` while 4 SDK writers append to 20 conversations; check every log.

    Returns the namespaces, the appends, and how many in-doubt transactions were
    recovered before the check (see :func:`_check_logs`).
    """
    from tests.sdk_helpers import event_processes

    namespaces = [f"fault-{uuid.uuid4().hex[:8]}-{i:02d}" for i in range(CONVERSATIONS)]
    stop = tmp_path / "stop"
    url = cluster.url.render_as_string(hide_password=False)
    with event_processes().Pool(WRITERS) as pool:
        running = [
            pool.apply_async(writer, (url, namespaces[w:] + namespaces[:w], w, str(stop)))
            for w in range(WRITERS)
        ]
        # The fault starts once every writer has gone round its conversations once.
        deadline = time.monotonic() + 180
        while not all(Path(f"{stop}.writing-{w}").exists() for w in range(WRITERS)):
            assert time.monotonic() < deadline, "the writers did not start"
            time.sleep(0.2)
        time.sleep(2)
        fault(namespaces)
        time.sleep(4)
        stop.touch()
        appends = [a for result in running for a in result.get(timeout=300)]
    recovered = _check_logs(cluster.url, namespaces, appends)
    return namespaces, appends, recovered


@contextmanager
def _recovery_by_hand(url: URL) -> Iterator[None]:
    """Citus's automatic recovery of in-doubt transactions off on the coordinator.

    A transaction whose second commit phase missed a stopped worker stays prepared
    there, unseen, until recovered. sqlstore's writes of one namespace commit in one
    phase (see test_lock_blocks_and_writes_commit_in_one_phase), but with recovery left
    to the check, whatever else Citus commits in two phases is settled only there, so a
    test sees what sqlstore alone guarantees.
    """
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")

    def configure(setting: str) -> None:
        with engine.connect() as conn:
            conn.exec_driver_sql(f"ALTER SYSTEM {setting}")
            conn.exec_driver_sql("SELECT pg_reload_conf()")

    configure("SET citus.recover_2pc_interval = -1")
    try:
        yield
    finally:
        configure("RESET citus.recover_2pc_interval")
        engine.dispose()


def _check_logs(url: URL, namespaces: list[str], appends: list[Append]) -> int:
    """0 acknowledged events lost, 0 duplicated, every log contiguous.

    First the transactions a fault left in doubt are settled. Citus commits every
    sqlstore write in two phases; one whose second phase did not reach a stopped
    worker was acknowledged (the coordinator committed) and becomes visible when Citus
    recovers it, which its maintenance daemon does every ``citus.recover_2pc_interval``
    (a minute by default). Settled now, the check does not race that daemon.
    """
    from openhands.sdk.conversation.event_store import EventLog

    (recovered,) = _rows(url)("SELECT recover_prepared_transactions()")[0]
    print(f"\nin-doubt transactions recovered before the check: {recovered}")
    engine = sqlstore.create_engine(url)
    try:
        lost, duplicated = 0, 0
        for namespace in namespaces:
            store = sqlstore.SQLFileStore(engine, namespace)
            stored = [event.id for event in EventLog(store, dir_path="events")]
            acked = {a.event_id for a in appends if a.namespace == namespace and a.error is None}
            lost += len(acked - set(stored))
            duplicated += len(stored) - len(set(stored))
            names = [p.rsplit("/", 1)[1] for p in store.list("events") if p.endswith(".json")]
            assert [int(n.split("-")[1]) for n in names] == list(range(len(stored)))
            assert not store.exists("events/.eventlog.lock")
        assert (lost, duplicated) == (0, 0)
    finally:
        engine.dispose()
    return int(recovered)


def _report(name: str, appends: list[Append], window: tuple[float, float]) -> str:
    ok = [a for a in appends if a.error is None]
    before = [a.seconds for a in ok if a.started < window[0]]
    during = [a for a in appends if window[0] <= a.started <= window[1]]
    slowest = max((a.seconds for a in during), default=0.0)
    return (
        f"\ncitus {name}: {len(ok)} appends acknowledged, "
        f"{sum(a.error is not None for a in appends)} failed; fault {window[1] - window[0]:.1f} s; "
        f"append median {statistics.median(before or [0.0]) * 1000:.1f} ms before, "
        f"slowest {slowest * 1000:.0f} ms during"
    )


@pytest.mark.slow
def test_writers_lose_nothing_through_a_shard_move_and_a_rebalance(
    private_cluster: Cluster, tmp_path: Path
) -> None:
    window: list[float] = []
    moves: dict[str, float] = {}

    def fault(namespaces: list[str]) -> None:
        rows = _rows(private_cluster.url)
        held = worker_of(private_cluster.url, namespaces[:1])[namespaces[0]]
        (target,) = set(private_cluster.workers) - {held}
        (shard,) = rows(
            f"SELECT get_shard_id_for_distribution_column('sqlstore_files', '{namespaces[0]}')"
        )[0]
        window.append(time.time())
        rows(
            f"SELECT citus_move_shard_placement({shard}, '127.0.0.1', {held},"
            f" '127.0.0.1', {target})"
        )
        moves["move"] = time.time() - window[0]
        assert worker_of(private_cluster.url, namespaces[:1])[namespaces[0]] == target
        started = time.time()
        rows("SELECT rebalance_table_shards(rebalance_strategy => 'by_shard_count')")
        moves["rebalance"] = time.time() - started
        window.append(time.time())

    _, appends, _ = _under_writers(private_cluster, tmp_path, fault)
    # Both moves copy and switch a live shard; no writer saw an error.
    assert [a.error for a in appends if a.error] == []
    layout = citus.layout(_rows(private_cluster.url))
    assert sorted(layout.workers.values()) == [16, 16]
    during = [a for a in appends if window[0] <= a.started <= window[1]]
    assert during, "no append ran while the shards moved"
    print(
        _report("shard move + rebalance", appends, (window[0], window[1]))
        + f" (move {moves['move']:.1f} s, rebalance {moves['rebalance']:.1f} s)"
    )


@pytest.mark.slow
def test_a_stopped_worker_fails_its_conversations_quickly_and_loses_nothing(
    private_cluster: Cluster, tmp_path: Path
) -> None:
    stopped = private_cluster.workers[1]
    window: list[float] = []
    placement: dict[str, int] = {}

    def fault(namespaces: list[str]) -> None:
        placement.update(worker_of(private_cluster.url, namespaces))
        window.append(time.time())
        private_cluster.pg_ctl(stopped, "stop")
        time.sleep(10)
        private_cluster.pg_ctl(stopped, "start")
        window.append(time.time())

    with _recovery_by_hand(private_cluster.url):
        namespaces, appends, in_doubt = _under_writers(private_cluster, tmp_path, fault)
    down, up = window
    on_stopped = {ns for ns, port in placement.items() if port == stopped}
    assert 0 < len(on_stopped) < len(namespaces), placement
    outage = [a for a in appends if down + 1 <= a.started <= up - 1]
    others = [a for a in outage if a.namespace not in on_stopped]
    theirs = [a for a in outage if a.namespace in on_stopped]
    # The other worker's conversations go on, untouched.
    assert others and [a.error for a in others if a.error] == []
    # The stopped worker's fail, as DatabaseError, each within the timeouts.
    assert theirs and all(a.error is not None and a.database_error for a in theirs), theirs
    assert max(a.seconds for a in theirs) < 15
    # After the restart every conversation takes appends again, but one whose rows a
    # transaction left in doubt holds (its appends wait on those rows, and fail in
    # their timeouts, until the transaction is recovered: here at the check).
    after = [a for a in appends if a.started > up + 2 and a.error is None]
    assert len(on_stopped - {a.namespace for a in after}) <= in_doubt
    print(_report("worker stopped 10 s", appends, (down, up)))


@pytest.mark.slow
def test_writers_recover_from_a_coordinator_restart(
    private_cluster: Cluster, tmp_path: Path
) -> None:
    window: list[float] = []

    def fault(namespaces: list[str]) -> None:
        window.append(time.time())
        private_cluster.pg_ctl(private_cluster.base, "restart")
        window.append(time.time())

    namespaces, appends, _ = _under_writers(private_cluster, tmp_path, fault)
    failed = [a for a in appends if a.error is not None]
    # As on PostgreSQL: what fails while the coordinator is down fails as
    # DatabaseError, within the timeouts, and the writers carry on afterwards.
    assert all(a.database_error for a in failed), failed
    assert max((a.seconds for a in failed), default=0) < 15
    after = [a for a in appends if a.started > window[1] + 1 and a.error is None]
    assert {a.namespace for a in after} == set(namespaces)
    print(_report("coordinator restart", appends, (window[0], window[1])))
