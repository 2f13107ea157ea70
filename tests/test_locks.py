"""``lock(path, timeout)``: exclusion, timeouts, release, and the block as a transaction.

Cross-process tests drive stores in real worker processes (:mod:`tests.lock_worker`,
one ``SQLFileStore.from_url`` each) over a pipe, against the real databases.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

import sqlstore
from sqlstore import LockTimeoutError, SQLFileStore

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(120)


class Boom(Exception):
    """Raised inside lock blocks to leave them by an exception."""


class Peer:
    """A store in another process (:mod:`tests.lock_worker`), driven one command at a time."""

    def __init__(self, url: str, namespace: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.lock_worker", url, namespace],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._replies: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._replies.put(json.loads(line))
        self._replies.put(None)

    def send(self, op: str, **args: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()

    def recv(self, timeout: float = 30.0) -> dict[str, Any]:
        try:
            reply = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"worker gave no answer within {timeout}s") from None
        if reply is None:
            raise AssertionError(f"worker exited with status {self.proc.wait()}")
        return reply

    def poll(self, timeout: float) -> dict[str, Any] | None:
        """The next answer if one arrives within ``timeout`` seconds, else ``None``."""
        try:
            reply = self._replies.get(timeout=timeout)
        except queue.Empty:
            return None
        assert reply is not None, f"worker exited with status {self.proc.wait()}"
        return reply

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        self.send(op, **args)
        return self.recv()

    def ok(self, op: str, **args: Any) -> dict[str, Any]:
        reply = self.call(op, **args)
        assert reply["ok"], reply
        return reply

    def read(self, path: str) -> str | None:
        value: str | None = self.ok("read", path=path)["value"]
        return value

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send("exit")
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.kill()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


class PeerPool:
    """Idle workers of one database, reused across tests: a worker takes ~1 s to start."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.idle: list[Peer] = []

    def take(self, count: int, namespace: str) -> list[Peer]:
        peers: list[Peer] = []
        while self.idle and len(peers) < count:
            peers.append(self.idle.pop())
        for peer in peers:
            peer.ok("reset", namespace=namespace)
        fresh = [Peer(self.url, namespace) for _ in range(count - len(peers))]
        for peer in fresh:
            assert peer.recv(timeout=60) == {"ok": True, "op": "ready"}
        return peers + fresh

    def give_back(self, peer: Peer) -> None:
        """Pool ``peer`` again if it answers a reset at once; otherwise stop it."""
        if peer.proc.poll() is None:
            peer.send("reset", namespace="idle")
            reply = peer.poll(5.0)
            if reply is not None and reply["op"] == "reset" and reply["ok"]:
                self.idle.append(peer)
                return
            peer.kill()
        peer.close()

    def close(self) -> None:
        while self.idle:
            self.idle.pop().close()


Spawn = Callable[..., list[Peer]]


@pytest.fixture(scope="session")
def peer_pool(migrated_url: URL) -> Iterator[PeerPool]:
    pool = PeerPool(migrated_url.render_as_string(hide_password=False))
    yield pool
    pool.close()


@pytest.fixture
def spawn(peer_pool: PeerPool, namespace: str) -> Iterator[Spawn]:
    """Get worker processes working in the test's namespace."""
    taken: list[Peer] = []

    def start(count: int = 1) -> list[Peer]:
        peers = peer_pool.take(count, namespace)
        taken.extend(peers)
        return peers

    yield start
    for peer in taken:
        peer_pool.give_back(peer)


@pytest.fixture
def other_store(migrated_url: URL, namespace: str) -> Iterator[SQLFileStore]:
    """The test's namespace through an engine (and pool) of its own."""
    with SQLFileStore.from_url(migrated_url, namespace) as other:
        yield other


def _timed_timeout(store: SQLFileStore, path: str, timeout: float) -> float:
    """Try to lock ``path``; assert it times out; return the seconds it took."""
    start = time.monotonic()
    with pytest.raises(TimeoutError) as info, store.lock(path, timeout=timeout):
        pytest.fail(f"acquired {path!r}, which is held elsewhere")
    elapsed = time.monotonic() - start
    assert isinstance(info.value, LockTimeoutError)
    return elapsed


def _timed_acquire(store: SQLFileStore, path: str, timeout: float) -> float:
    start = time.monotonic()
    with store.lock(path, timeout=timeout):
        return time.monotonic() - start


# -- exclusion ---------------------------------------------------------------------------


@pytest.mark.slow
def test_mutual_exclusion_across_processes(store: SQLFileStore, spawn: Spawn) -> None:
    store.write("counter", "0")
    workers = spawn(4)
    start = time.monotonic()
    for worker in workers:
        worker.send("increment", lock="counter.lock", path="counter", cycles=100)
    replies = [worker.recv(timeout=100) for worker in workers]
    elapsed = time.monotonic() - start
    assert all(reply["ok"] for reply in replies), replies
    assert store.read("counter") == "400"
    print(f"\n4 processes x 100 locked increments: {elapsed:.2f}s")


def test_threads_increment_exactly(store: SQLFileStore, engine: sa.Engine) -> None:
    store.write("counter", "0")

    def work() -> None:
        mine = SQLFileStore(engine, store.namespace)
        for _ in range(25):
            with mine.lock("counter.lock"):
                n = int(mine.read("counter"))
                mine.write("counter", str(n + 1))

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(work) for _ in range(8)]
        for future in futures:
            future.result(timeout=60)
    assert store.read("counter") == "200"


def test_different_paths_and_namespaces(db_dialect: str, store: SQLFileStore, spawn: Spawn) -> None:
    (holder,) = spawn()
    holder.ok("acquire", path="a.lock")
    holder.ok("write", path="a/x", data="held")
    other_ns = store.with_namespace(store.namespace + "-other")
    if db_dialect == "sqlite":
        # Documented: SQLite has one writer per database file, so any lock waits.
        assert _timed_timeout(store, "b.lock", 0.5) >= 0.4
        assert _timed_timeout(other_ns, "a.lock", 0.5) >= 0.4
    else:
        with store.lock("b.lock", timeout=5):
            store.write("b/y", "mine")
        with other_ns.lock("a.lock", timeout=5):
            other_ns.write("a/x", "other namespace")
        assert _timed_acquire(store, "b.lock", 5) < 1.0
        assert _timed_acquire(other_ns, "a.lock", 5) < 1.0
        # A nested wait for a held path times out; the outer block carries on and commits.
        with store.lock("c.lock", timeout=5):
            store.write("c/1", "before")
            assert 0.4 <= _timed_timeout(store, "a.lock", 0.5) <= 1.0
            store.write("c/2", "after")
        assert (store.read("c/1"), store.read("c/2")) == ("before", "after")
        assert store.read("b/y") == "mine"
        assert other_ns.read("a/x") == "other namespace"
        assert not store.exists("a/x")  # the holder's write is not committed yet
    holder.ok("release")
    assert store.read("a/x") == "held"


def test_not_reentrant(store: SQLFileStore) -> None:
    twin = SQLFileStore(store.engine, store.namespace)
    with store.lock("p"):
        store.write("outer", "1")
        for who, path in [(store, "p"), (twin, "p"), (store, "/p"), (twin, "./q/../p")]:
            assert _timed_timeout(who, path, 30.0) < 1.0
        with store.lock("q"), twin.lock("r"):
            store.write("inner", "2")
        with store.with_namespace(store.namespace + "-other").lock("p", timeout=5):
            pass
        store.write("outer-after", "3")
    assert [store.read(p) for p in ("outer", "inner", "outer-after")] == ["1", "2", "3"]
    assert _timed_acquire(store, "p", 1.0) < 1.0


def test_the_same_path_locked_again_after_a_nested_block_ended(store: SQLFileStore) -> None:
    """As with LocalFileStore: a lock released can be taken again, inside an outer block too."""
    with store.lock("outer", timeout=5):
        with store.lock("p", timeout=1):
            store.write("one", "1")
        with store.lock("p", timeout=1):
            store.write("two", "2")
            with pytest.raises(sqlstore.LockTimeoutError, match="already locked"):
                store.lock("p", timeout=0)  # while it is open, still not reentrant
        with pytest.raises(Boom), store.lock("p", timeout=1):
            store.write("undone", "x")
            raise Boom
        with store.lock("p", timeout=1):
            store.write("three", "3")
    assert store.list("") == ["one", "three", "two"]


def test_a_lock_is_one_block_entered_once_as_local_file_store_s_is(
    store: SQLFileStore, tmp_path: Path
) -> None:
    """``lock()`` gives one block. Entered again, the reference's (a generator's context
    manager) fails with whatever contextlib raises; sqlstore's raises RuntimeError and
    changes nothing. A new ``lock()`` works."""
    from openhands.sdk.io import LocalFileStore

    refusals: dict[str, type[Exception] | tuple[type[Exception], ...]] = {
        "local": (AttributeError, RuntimeError),
        "sqlstore": RuntimeError,
    }
    for kind, files in (("local", LocalFileStore(str(tmp_path))), ("sqlstore", store)):
        block = files.lock("p", timeout=5)
        with block:
            files.write("f", "1")
        with pytest.raises(refusals[kind]), block:
            files.write("f", "2")
        assert files.read("f") == "1"
        with files.lock("p", timeout=5):
            files.write("f", "3")
        assert files.read("f") == "3"
    with pytest.raises(RuntimeError, match="entered once"), block:
        pass


# -- timeouts and release ------------------------------------------------------------------


def test_timeout_raises_lock_timeout_error(store: SQLFileStore, spawn: Spawn) -> None:
    (holder,) = spawn()
    holder.ok("acquire", path="t.lock")
    elapsed = _timed_timeout(store, "t.lock", 1.0)
    print(f"\ntimeout=1.0 raised after {elapsed:.3f}s")
    assert 0.9 <= elapsed <= 1.5
    assert 0.2 <= _timed_timeout(store, "t.lock", 0.3) <= 0.8
    holder.ok("release")
    assert _timed_acquire(store, "t.lock", 5.0) < 1.0


def test_timeout_zero_tries_once(store: SQLFileStore, spawn: Spawn) -> None:
    (peer,) = spawn()
    with store.lock("z.lock", timeout=0):
        store.write("z", "1")
    assert store.read("z") == "1"
    peer.ok("acquire", path="z.lock")
    assert _timed_timeout(store, "z.lock", 0) < 0.5
    peer.ok("release")
    assert _timed_acquire(store, "z.lock", 0) < 0.5
    with store.lock("z.lock"):
        reply = peer.call("acquire", path="z.lock", timeout=0)
    assert not reply["ok"]
    assert reply["lock_timeout"] and reply["timeout"], reply
    assert reply["elapsed"] < 0.5


@pytest.mark.slow
def test_killed_holder_releases(store: SQLFileStore, spawn: Spawn) -> None:
    holder, waiter = spawn(2)
    holder.ok("acquire", path="k.lock")
    holder.ok("write", path="uncommitted", data="x")
    waiter.send("acquire", path="k.lock", timeout=10)
    assert waiter.poll(0.5) is None, "the waiter did not wait for the holder"
    killed = time.monotonic()
    holder.kill()
    reply = waiter.recv(timeout=15)
    waited = time.monotonic() - killed
    assert reply["ok"], reply
    print(f"\nwaiter acquired {waited:.3f}s after SIGKILL of the holder")
    assert waited < 5.0
    waiter.ok("release")
    assert not store.exists("uncommitted")

    # A holder killed while nobody waits: a later waiter gets the lock promptly.
    (holder,) = spawn()
    holder.ok("acquire", path="k.lock")
    holder.kill()
    assert _timed_acquire(store, "k.lock", 10.0) < 5.0


# -- what a lock leaves behind --------------------------------------------------------------


def test_lock_leaves_nothing_visible(
    store: SQLFileStore, other_store: SQLFileStore, new_store: Callable[[], SQLFileStore]
) -> None:
    store.write("events/event-00000-a.json", "{}")
    lock = "events/.eventlog.lock"

    def check(*stores: SQLFileStore) -> None:
        for s in stores:
            assert s.list("events") == ["events/event-00000-a.json"]
            assert s.list("") == ["events/"]
            assert s.list(lock) == []
            assert not s.exists(lock)

    with store.lock(lock):
        check(store, other_store)
    check(store, other_store)
    with pytest.raises(Boom), store.lock(lock):
        raise Boom
    check(store, other_store)

    empty = new_store()
    with empty.lock(lock):
        assert empty.list("") == []
        assert not empty.exists("events")
    assert empty.list("") == []
    assert not empty.exists("events")


@pytest.mark.parametrize("exit_by", ["commit", "rollback", "timeout"])
def test_nothing_leaks_to_the_next_pooled_connection(
    db_dialect: str,
    migrated_url: URL,
    namespace: str,
    other_store: SQLFileStore,
    spawn: Spawn,
    exit_by: str,
) -> None:
    (peer,) = spawn()
    # One pooled connection: whatever the block leaves on it, the next call gets.
    engine = sqlstore.create_engine(migrated_url, pool_size=1, max_overflow=0)
    try:
        store = SQLFileStore(engine, namespace)
        if exit_by == "commit":
            with store.lock("leak.lock", timeout=0.25):
                store.write("in-block", "1")
        elif exit_by == "rollback":
            with pytest.raises(Boom), store.lock("leak.lock", timeout=0.25):
                store.write("in-block", "1")
                raise Boom
        else:
            peer.ok("acquire", path="leak.lock")
            _timed_timeout(store, "leak.lock", 0.25)
            peer.ok("release")
        assert other_store.exists("in-block") == (exit_by == "commit")

        # The connection is back in autocommit mode: a plain write is seen at once.
        store.write("after", exit_by)
        assert other_store.read("after") == exit_by
        with engine.connect() as conn:
            if db_dialect == "postgresql":
                held = conn.exec_driver_sql(
                    "SELECT count(*) FROM pg_locks"
                    " WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
                ).scalar_one()
                assert held == 0
                assert conn.exec_driver_sql("SHOW lock_timeout").scalar_one() == "0"
                assert conn.exec_driver_sql("SHOW transaction_isolation").scalar_one() == (
                    "read committed"
                )
            elif db_dialect == "mysql":
                assert conn.exec_driver_sql("SELECT @@in_transaction").scalar_one() == 0
            else:
                assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == 30000
                assert conn.connection.dbapi_connection.in_transaction is False  # type: ignore[union-attr]

        # Another process locks the path at once.
        reply = peer.ok("acquire", path="leak.lock", timeout=1.0)
        assert reply["elapsed"] < 1.0
        peer.ok("release")
    finally:
        engine.dispose()


# -- the block is a transaction ---------------------------------------------------------------


def test_exception_rolls_back_the_block(
    store: SQLFileStore, new_store: Callable[[], SQLFileStore]
) -> None:
    store.write("existing", "old")
    store.write("doomed", "kept")
    joined = new_store()
    same_ns = SQLFileStore(store.engine, store.namespace)
    with pytest.raises(Boom), store.lock("x.lock"):
        store.write("new", "1")
        store.write("existing", "new")
        store.delete("doomed")
        joined.write("joined", "1")
        same_ns.write("twin", "1")
        # The block sees its own writes.
        assert store.read("new") == "1"
        assert store.read("existing") == "new"
        assert joined.read("joined") == "1"
        raise Boom
    assert not store.exists("new")
    assert store.read("existing") == "old"
    assert store.read("doomed") == "kept"
    assert not joined.exists("joined")
    assert not store.exists("twin")
    assert store.list("") == ["doomed", "existing"]


def test_block_commits_all_at_once(
    store: SQLFileStore, spawn: Spawn, new_store: Callable[[], SQLFileStore]
) -> None:
    store.write("existing", "old")
    (reader,) = spawn()
    joined = new_store()
    with store.lock("x.lock"):
        store.write("new", "1")
        store.write("existing", "new")
        joined.write("joined", "1")
        # Another process sees none of it while the block is open.
        assert (reader.read("new"), reader.read("existing")) == (None, "old")
        assert reader.ok("list", path="")["value"] == ["existing"]
    assert (reader.read("new"), reader.read("existing")) == ("1", "new")
    assert joined.read("joined") == "1"


def test_other_process_block_is_all_or_nothing(
    store: SQLFileStore, other_store: SQLFileStore, spawn: Spawn
) -> None:
    store.write("existing", "old")
    (writer,) = spawn()
    for commit in (False, True):
        writer.ok("acquire", path="x.lock")
        writer.ok("write", path="events/a", data="A")
        writer.ok("write", path="existing", data="new")
        for s in (store, other_store):
            assert s.list("") == ["existing"]
            assert s.read("existing") == "old"
        writer.ok("release", commit=commit)
        expected = ("A", "new") if commit else (None, "old")
        for s in (store, other_store):
            assert (s.read("events/a") if s.exists("events/a") else None, s.read("existing")) == (
                expected
            )


def test_nested_block_is_a_savepoint(store: SQLFileStore) -> None:
    store.write("k", "orig")
    with store.lock("a"):
        store.write("outer-1", "1")
        with pytest.raises(Boom), store.lock("b"):
            store.write("inner", "x")
            store.write("k", "changed")
            store.delete("outer-1")
            raise Boom
        assert not store.exists("inner")
        assert store.read("k") == "orig"
        assert store.read("outer-1") == "1"
        with store.lock("c"):
            store.write("inner-ok", "y")
            with pytest.raises(Boom), store.lock("d"):
                store.write("deepest", "z")
                raise Boom
            store.write("inner-ok-2", "w")
        store.write("outer-2", "2")
    assert store.list("") == ["inner-ok", "inner-ok-2", "k", "outer-1", "outer-2"]
    assert store.read("k") == "orig"

    # A nested block that completed is still undone when the outer block raises.
    with pytest.raises(Boom), store.lock("a"):
        with store.lock("b"):
            store.write("late", "1")
        raise Boom
    assert not store.exists("late")


@pytest.mark.parametrize("inner_exit", ["normal", "exception"])
def test_nested_locks_are_held_until_the_outer_block_ends(
    request: pytest.FixtureRequest,
    db_dialect: str,
    store: SQLFileStore,
    spawn: Spawn,
    inner_exit: str,
) -> None:
    (peer,) = spawn()
    with store.lock("outer"):
        if inner_exit == "normal":
            with store.lock("inner"):
                pass
        else:
            with pytest.raises(Boom), store.lock("inner"):
                raise Boom
        reply = peer.call("acquire", path="inner", timeout=0)
        if reply["ok"]:
            peer.ok("release")
        assert not reply["ok"] and reply["lock_timeout"], reply
    assert peer.ok("acquire", path="inner", timeout=1.0)["elapsed"] < 1.0
    peer.ok("release")


def test_other_threads_do_not_join_the_block(
    db_dialect: str, store: SQLFileStore, other_store: SQLFileStore
) -> None:
    errors: list[BaseException] = []

    def write_elsewhere() -> None:
        try:
            store.write("by-thread", "t")  # the same store, from another thread
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=write_elsewhere)
    with pytest.raises(Boom), store.lock("x.lock"):
        store.write("by-block", "b")
        thread.start()
        if db_dialect == "sqlite":
            # Documented: the thread's write waits for the database's only write lock.
            thread.join(0.5)
            assert thread.is_alive()
        else:
            thread.join(10)
            assert not thread.is_alive()
            # Committed on its own while the block is still open.
            assert other_store.read("by-thread") == "t"
            assert not other_store.exists("by-block")
        raise Boom
    thread.join(40)
    assert not thread.is_alive()
    assert errors == []
    assert store.read("by-thread") == "t"
    assert not store.exists("by-block")


# -- locks are per database ---------------------------------------------------------------


def test_same_namespace_in_another_database_does_not_block(
    request: pytest.FixtureRequest,
    db_dialect: str,
    store: SQLFileStore,
    empty_url: URL,
    spawn: Spawn,
) -> None:
    sqlstore.migrate(empty_url)
    (holder,) = spawn()
    holder.ok("acquire", path="shared.lock")
    with SQLFileStore.from_url(empty_url, store.namespace) as elsewhere:
        assert _timed_acquire(elsewhere, "shared.lock", 2.0) < 1.0
    holder.ok("release")


def test_a_lock_block_carries_a_read_of_one_file(store: SQLFileStore) -> None:
    """The private hook of the agent server's fenced writes: the file read with the lock."""
    store.write("record", "v1")
    big = bytes(range(256)) * 5000  # chunked on MariaDB: read again, whole, in the block
    store.write("big", big)
    with store._lock_reading("r.lock", 5, "record") as content:
        assert content == b"v1"
        with store._lock_reading("n.lock", 5, "record") as inner:
            assert inner == b"v1"
            store.write("record", "v2")
        with store._lock_reading("m.lock", 5, "missing") as missing:
            assert missing is None
        with store._lock_reading("n.lock", 5, "big", release_late=True) as whole:
            assert whole == big
        # A key a nested block took is held still: only the savepoint and the read.
        with store._lock_reading("n.lock", 5, "record") as again:
            assert again == b"v2"
    with store._lock_reading("r.lock", 5, "big") as whole:
        assert whole == big
    with store._lock_reading("r.lock", 0, "record") as content:
        assert content == b"v2"


def test_a_reading_lock_wait_that_runs_out_leaves_the_outer_block_usable(
    store: SQLFileStore, other_store: SQLFileStore, db_dialect: str
) -> None:
    store.write("a", "1")
    if db_dialect == "sqlite":
        # One writer per database file: the outermost reading block itself waits for
        # the holder, and runs out alike (nothing is nested in a block it never got).
        with other_store.lock("held", timeout=5):
            for timeout in (0.3, 0):
                with pytest.raises(LockTimeoutError), store._lock_reading("other", timeout, "a"):
                    pytest.fail("a second writer on one SQLite file")
        with store._lock_reading("held", 1, "a") as content:
            assert content == b"1"
        return
    with other_store.lock("held", timeout=5):
        with store.lock("outer", timeout=5):
            store.write("b", "2")
            for timeout in (0.3, 0):
                with pytest.raises(LockTimeoutError), store._lock_reading("held", timeout, "a"):
                    pytest.fail("acquired a lock held elsewhere")
            store.write("c", "3")
            with store._lock_reading("free", 5, "b", release_late=True) as content:
                assert content == b"2"
        for timeout in (0.3, 0):
            with pytest.raises(LockTimeoutError), store._lock_reading("held", timeout, "a"):
                pytest.fail("acquired a lock held elsewhere")
    assert store.list("") == ["a", "b", "c"]
    with store._lock_reading("held", 1, "a") as content:
        assert content == b"1"


def test_a_late_released_nested_block(store: SQLFileStore) -> None:
    """Undone alone if it raises; a refusal in it fails the outer block when that ends."""
    with store.lock("outer", timeout=5):
        store.write("a", "1")
        with pytest.raises(Boom), store._lock_reading("inner", 5, "a", release_late=True):
            store.write("b", "undone with the nested block")
            raise Boom
        with store._lock_reading("inner", 5, "a", release_late=True) as content:
            assert content == b"1"
            store.write("c", "3")
        store.write("d", "4")
    assert store.list("") == ["a", "c", "d"]
    store.write("f", "a file")
    # SQLite refuses at the call, the others as the outer block ends: nothing either way.
    with pytest.raises(FileExistsError, match="'f/g'"), store.lock("outer", timeout=5):
        store.write("e", "5")
        with store._lock_reading("inner", 5, "a", release_late=True):
            store.write("f/g", "below a file")
        store.write("h", "6")
    assert store.list("") == ["a", "c", "d", "f"]


def test_a_reading_lock_on_an_observed_engine(migrated_url: URL, namespace: str) -> None:
    """With statement listeners the read still rides with the lock, and is seen by them."""
    engine = sqlstore.create_engine(migrated_url)
    seen: list[str] = []
    sa.event.listen(
        engine, "before_cursor_execute", lambda conn, cursor, sql, *rest: seen.append(sql)
    )
    try:
        store = SQLFileStore(engine, namespace)
        store.write("record", "v1")
        seen.clear()
        with store._lock_reading("r.lock", 5, "record") as content:
            assert content == b"v1"
            with store._lock_reading("n.lock", 5, "record", release_late=True) as inner:
                assert inner == b"v1"
                store.write("record", "v2")
        assert store.read("record") == "v2"
        assert sum("sqlstore_files.content" in sql for sql in seen) >= 2, seen
    finally:
        engine.dispose()
