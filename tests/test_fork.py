"""Forked children (``fork`` start method, pre-fork servers) and their parent share nothing.

These tests fork on purpose: the rest of the suite starts helper processes with
``forkserver`` or as new interpreters, which never inherit a connection.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import sys
import time
import uuid
import warnings
from collections.abc import Iterator

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

import sqlstore
from sqlstore import SQLFileStore
from tests.holding import held_by_another_thread

pytestmark = pytest.mark.timeout(180)

ROUNDS = 100


@pytest.fixture(autouse=True)
def _fork_in_a_threaded_process_is_the_point() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "This process .* is multi-threaded", DeprecationWarning)
        yield


def _work(store: SQLFileStore, rounds: int) -> list[str]:
    """Write and read back this store's own files; every answer that is not ours."""
    wrong = []
    for i in range(rounds):
        path = f"events/event-{i:05d}.json"
        body = f"{store.namespace}:{i}"
        store.write(path, body)
        got = store.read(path)
        if got != body:
            wrong.append(f"{path}: {got!r}")
        if store.read("base_state.json") != store.namespace:
            wrong.append("base_state.json")
        listed = store.list("events")
        if len(listed) != i + 1:
            wrong.append(f"list: {len(listed)} entries")
    return wrong


def _child(engine: sa.Engine, namespace: str, results: multiprocessing.Queue[object]) -> None:
    store = SQLFileStore(engine, namespace)
    try:
        results.put((namespace, _work(store, ROUNDS)))
    except BaseException as exc:  # reported to the parent, which fails the test
        results.put((namespace, [f"{type(exc).__name__}: {exc}"]))


def test_forked_children_never_use_the_parents_connections(engine: sa.Engine) -> None:
    # The parent uses the engine first, so its pool holds live connections to inherit.
    names = [f"fork-{uuid.uuid4().hex}" for _ in range(5)]
    stores = [SQLFileStore(engine, ns) for ns in names]
    for store in stores:
        store.write("base_state.json", store.namespace)
        assert store.read("base_state.json") == store.namespace
    context = multiprocessing.get_context("fork")
    results: multiprocessing.Queue[object] = context.Queue()
    children = [context.Process(target=_child, args=(engine, ns, results)) for ns in names[1:]]
    for child in children:
        child.start()
    # The parent keeps working on the same engine meanwhile.
    parent_wrong = _work(stores[0], ROUNDS)
    reports = dict(results.get(timeout=150) for _ in children)  # type: ignore[misc]
    for child in children:
        child.join(timeout=30)
        assert child.exitcode == 0
    assert parent_wrong == []
    assert reports == {ns: [] for ns in names[1:]}
    for store in stores:
        assert len(store.list("events")) == ROUNDS


def test_a_child_forked_inside_a_lock_block_neither_joins_nor_ends_it(
    engine: sa.Engine, namespace: str, db_dialect: str
) -> None:
    store = SQLFileStore(engine, namespace)
    other = SQLFileStore(engine, namespace + "-child")
    store.write("counter", "0")
    read, write = os.pipe()
    pid = -1
    try:
        with store.lock("events/.eventlog.lock", timeout=10):
            store.write("counter", "1")
            pid = os.fork()
            if pid == 0:
                # Not part of the parent's transaction: it sees only what is committed.
                os.write(write, store.read("counter").encode())
                if db_dialect != "sqlite":  # on SQLite the writer lock is the parent's
                    other.write("mine", "child")
            else:
                _, status = os.waitpid(pid, 0)
                assert os.waitstatus_to_exitcode(status) == 0
                assert os.read(read, 100) == b"0"
                # The parent's block is intact: the child leaving it ended nothing.
                store.write("after-fork", "parent")
    finally:
        if pid == 0:  # the child left the inherited block; now it ends
            os._exit(1 if sys.exc_info()[0] else 0)
    assert store.read("counter") == "1"
    assert store.read("after-fork") == "parent"
    if db_dialect != "sqlite":
        assert other.read("mine") == "child"


def test_a_child_that_runs_on_after_leaving_the_parents_block_ends_nothing_of_it(
    migrated_url: URL, namespace: str
) -> None:
    """A worker forked inside a block leaves it and works on, its garbage collector too.

    The parent's write is still unanswered at the fork (PostgreSQL: in pipeline mode).
    Whatever the child collects must not touch the parent's connection: the parent's
    block commits, at once, everything it wrote.
    """
    engine = sqlstore.create_engine(migrated_url, read_timeout=5)
    store = SQLFileStore(engine, namespace)
    store.write("counter", "0")
    pid = -1
    started = 0.0
    try:
        with store.lock("events/.eventlog.lock", timeout=10):
            store.write("counter", "1")
            pid = os.fork()
            if pid != 0:
                _, status = os.waitpid(pid, 0)
                assert os.waitstatus_to_exitcode(status) == 0
                store.write("after-fork", "parent")
                started = time.monotonic()
    finally:
        if pid == 0:  # the child left the block, as a worker returns to its own work
            code = 1 if sys.exc_info()[0] else 0
            gc.collect()
            garbage = [[i] for i in range(200_000)]  # allocations collect on their own too
            del garbage
            gc.collect()
            os._exit(code)
    assert time.monotonic() - started < 2, "the parent's COMMIT waited for an answer"
    assert store.read("counter") == "1"
    assert store.read("after-fork") == "parent"
    engine.dispose()


def test_a_forked_child_whose_other_parent_thread_held_a_lock_does_not_hang(
    engine: sa.Engine, namespace: str
) -> None:
    store = SQLFileStore(engine, namespace)
    store.write("x", "1")
    with held_by_another_thread(store, "held", timeout=10):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                # Another thread's block does not exist here; calls just work.
                code = 0 if SQLFileStore(engine, namespace).exists("x") else 3
            finally:
                os._exit(code)
        started = time.monotonic()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert time.monotonic() - started < 30


def test_stores_made_before_and_after_a_dispose_share_the_block(
    engine: sa.Engine, namespace: str
) -> None:
    """``engine.dispose()`` replaces the pool; the caller's block must not split."""

    class Boom(Exception):
        pass

    before = SQLFileStore(engine, namespace)
    with pytest.raises(Boom), before.lock("events/.eventlog.lock", timeout=5):
        before.write("a", "1")
        engine.dispose()
        after = SQLFileStore(engine, namespace)
        after.write("b", "2")  # joins the block: on SQLite it would wait for itself
        raise Boom
    assert not before.exists("a")
    assert not before.exists("b")
    with before.lock("events/.eventlog.lock", timeout=5):
        before.write("a", "1")
        engine.dispose()
        SQLFileStore(engine, namespace).write("b", "2")
    assert before.read("a") == "1"
    assert before.read("b") == "2"


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_child_never_sends_on_its_parents_connection_without_a_cursor(
    engine: sa.Engine,
) -> None:
    """The cursorless way a lock block opens and ends is behind the same fork guard.

    A child asking it on an inherited connection gets an error before anything is sent,
    so the parent's next statement reads its own answer, not one to the child's query.
    """
    raw = engine.raw_connection()
    try:
        dbapi = raw.dbapi_connection
        assert dbapi is not None
        assert dbapi.simple(b"SELECT 1")[0].get_value(0, 0) == b"1"
        pid = os.fork()
        if pid == 0:
            try:
                dbapi.simple(b"SELECT 41")
            except psycopg.OperationalError:  # the guard's (what was sent: see below)
                os._exit(0)
            os._exit(1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        cursor = dbapi.cursor()
        cursor.execute("SELECT 2")
        assert cursor.fetchone() == (2,)
    finally:
        raw.close()
