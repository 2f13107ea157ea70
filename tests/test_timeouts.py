"""Every call is bounded in time: an exhausted pool, a silent server, a stalled one."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

import sqlstore
from sqlstore import SQLFileStore
from tests.holding import held_by_another_thread
from tests.proxy import Proxy, proxy_to, silent_server

SERVERS = pytest.mark.parametrize("backend", ["postgresql", "mysql"], indirect=True)
URLS = {
    "postgresql": "postgresql+psycopg://postgres@127.0.0.1:{port}/test",
    "mysql": "mysql+pymysql://root@127.0.0.1:{port}/test",
}

pytestmark = pytest.mark.timeout(120)


def _elapsed(call: Callable[[], object], raises: type[BaseException]) -> float:
    started = time.monotonic()
    with pytest.raises(raises):
        call()
    return time.monotonic() - started


# -- the pool has no free connection ------------------------------------------------


@pytest.fixture
def one_connection(migrated_url: URL) -> Iterator[sa.Engine]:
    engine = sqlstore.create_engine(migrated_url, pool_size=1, max_overflow=0, pool_timeout=3)
    yield engine
    engine.dispose()


def test_a_lock_timeout_bounds_the_wait_for_a_pooled_connection(
    one_connection: sa.Engine, namespace: str
) -> None:
    store = SQLFileStore(one_connection, namespace)
    store.write("x", "1")
    with held_by_another_thread(store, "busy", timeout=5):  # the only connection
        # Another path, so only the pool is in the way: the lock's 0.5 s bound it.
        took = _elapsed(lambda: store.lock("free", timeout=0.5).__enter__(), TimeoutError)
        assert took < 2.0
        with pytest.raises(sqlstore.LockTimeoutError, match="no pooled connection"):
            store.lock("free", timeout=0).__enter__()
        # A plain call waits for the pool's own timeout, then a TimeoutError too.
        with pytest.raises(sqlstore.DatabaseTimeoutError) as error:
            store.read("x")
        assert isinstance(error.value, TimeoutError)
        assert isinstance(error.value, OSError)
    assert store.read("x") == "1"
    with store.lock("free", timeout=1):
        store.write("y", "2")
    assert store.read("y") == "2"


# -- a server that accepts connections and never answers ----------------------------


@SERVERS
def test_a_silent_server_costs_a_call_its_connect_timeout(backend: str) -> None:
    with silent_server() as server:
        url = URLS[backend].format(port=server.port)
        engine = sqlstore.create_engine(url, connect_timeout=2, read_timeout=2)
        store = SQLFileStore(engine, "ns")
        try:
            took = _elapsed(lambda: store.read("events/e"), sqlstore.DatabaseTimeoutError)
            assert took < 6  # one attempt: a timeout is not retried
            took = _elapsed(lambda: store.list("events"), sqlstore.DatabaseTimeoutError)
            assert took < 6
            # A lock's timeout covers connecting (PostgreSQL's shortest is 2 s).
            took = _elapsed(
                lambda: store.lock("l", timeout=1.0).__enter__(), sqlstore.LockTimeoutError
            )
            assert took < 4
            took = _elapsed(lambda: sqlstore.migrate(engine), sqlstore.DatabaseError)
            assert took < 6
        finally:
            engine.dispose()


@pytest.fixture
def behind_a_proxy(backend: str, migrated_url: URL) -> Iterator[tuple[Proxy, sa.Engine]]:
    assert migrated_url.host is not None and migrated_url.port is not None
    with proxy_to(migrated_url.host, migrated_url.port) as proxy:
        url = migrated_url.set(port=proxy.port)
        engine = sqlstore.create_engine(url, connect_timeout=2, read_timeout=2)
        yield proxy, engine
        engine.dispose()


@SERVERS
def test_a_server_that_stops_answering_mid_use_costs_a_call_its_read_timeout(
    behind_a_proxy: tuple[Proxy, sa.Engine], namespace: str
) -> None:
    proxy, engine = behind_a_proxy
    store = SQLFileStore(engine, namespace)
    store.write("events/e", "1")
    assert store.read("events/e") == "1"  # the pool holds a live connection
    proxy.silence()
    took = _elapsed(lambda: store.read("events/e"), sqlstore.DatabaseTimeoutError)
    assert 1.5 < took < 6
    took = _elapsed(lambda: store.write("events/f", "2"), sqlstore.DatabaseTimeoutError)
    assert took < 6
    # A lock waits at most its timeout plus the read timeout for the server's answer.
    took = _elapsed(lambda: store.lock("l", timeout=1.0).__enter__(), sqlstore.LockTimeoutError)
    assert took < 6


@SERVERS
def test_a_lock_wait_longer_than_the_read_timeout_is_not_taken_for_silence(
    behind_a_proxy: tuple[Proxy, sa.Engine], namespace: str
) -> None:
    _, engine = behind_a_proxy
    store = SQLFileStore(engine, namespace)
    with held_by_another_thread(store, "l", timeout=5):
        # The server answers a 3.5 s lock wait after 3.5 s, beyond the 2 s read timeout.
        took = _elapsed(lambda: store.lock("l", timeout=3.5).__enter__(), sqlstore.LockTimeoutError)
        assert 3.0 < took < 6
    with store.lock("l", timeout=3):
        store.write("done", "yes")
    assert store.read("done") == "yes"


@pytest.mark.parametrize("options", [{"connect_timeout": 0}, {"read_timeout": -1}])
def test_timeouts_must_be_positive(options: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="timeout"):
        sqlstore.create_engine("sqlite://", **options)


# -- a statement that outwaits the read timeout ----------------------------------------


#: What a lock block whose COMMIT went unanswered raises while the row lock it waits
#: for is held throughout: PostgreSQL finds out that it did not commit; MariaDB cannot.
NOT_COMMITTED = {
    "postgresql": sqlstore.DatabaseTimeoutError,
    "mysql": sqlstore.CommitUnknownError,
}


@contextmanager
def row_locked(url: URL, namespace: str) -> Iterator[sa.Connection]:
    """Every row of ``namespace`` locked by another transaction until the block ends."""
    blocker = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with blocker.connect() as conn:
            conn.execute(  # holds the rows' locks until the rollback
                sa.text("UPDATE sqlstore_files SET size = size WHERE namespace = :ns"),
                {"ns": namespace},
            )
            try:
                yield conn
            finally:
                conn.rollback()
    finally:
        blocker.dispose()


@SERVERS
def test_what_outwaits_the_read_timeout_never_lands_later(
    migrated_url: URL, namespace: str, db_dialect: str
) -> None:
    """A timed-out call is ended in the server too, so it cannot commit afterwards.

    The client gives up after ``read_timeout``, but the server still holds what it was
    sent: a lock block's writes travel with its COMMIT, and would commit as soon as the
    row lock they wait for is released, after the caller was told the block failed.
    """
    engine = sqlstore.create_engine(migrated_url, read_timeout=1.0)
    store = SQLFileStore(engine, namespace)
    try:
        store.write("held", "before")
        for attempt in ("block", "plain"):
            with row_locked(migrated_url, namespace):
                expected = NOT_COMMITTED[db_dialect] if attempt == "block" else None
                with pytest.raises(expected or sqlstore.DatabaseTimeoutError):
                    if attempt == "block":
                        with store.lock("l"):
                            store.write("held", "in the block")
                            store.write("new", "in the block")
                    else:
                        store.write("held", "plain")
            # What was sent and never answered would land as soon as the lock is free.
            for _ in range(10):
                assert store.read("held") == "before"
                assert not store.exists("new")
                time.sleep(0.05)
    finally:
        engine.dispose()


@SERVERS
def test_a_timeout_in_a_block_discards_only_its_own_connection(
    migrated_url: URL, namespace: str
) -> None:
    engine = sqlstore.create_engine(migrated_url, read_timeout=1.0, pool_size=3, max_overflow=0)
    store = SQLFileStore(engine, namespace)
    try:
        store.write("held", "before")
        raws = [engine.raw_connection() for _ in range(3)]
        pooled = [raw.dbapi_connection for raw in raws]
        for raw in raws:
            raw.close()
        with (
            row_locked(migrated_url, namespace),
            pytest.raises(sqlstore.DatabaseTimeoutError),
            store.lock("l"),
        ):
            store.write("held", "in the block")
            store.read("held")  # answered after the write: the timeout is in the block
        raws = [engine.raw_connection() for _ in range(3)]
        kept = [raw for raw in raws if any(raw.dbapi_connection is c for c in pooled)]
        for raw in raws:
            raw.close()
        assert len(kept) == 2, "connections that never timed out were discarded too"
        assert store.read("held") == "before"
    finally:
        engine.dispose()


# -- a lock block whose COMMIT goes unanswered: a definite answer where there is one ------


@pytest.fixture
def one_proxied(backend: str, migrated_url: URL) -> Iterator[tuple[Proxy, sa.Engine]]:
    """An engine of one connection through a proxy, with a 1 s read timeout."""
    assert migrated_url.host is not None and migrated_url.port is not None
    with proxy_to(migrated_url.host, migrated_url.port) as proxy:
        url = migrated_url.set(port=proxy.port)
        engine = sqlstore.create_engine(
            url, connect_timeout=2, read_timeout=1.0, pool_size=1, max_overflow=0
        )
        yield proxy, engine
        engine.dispose()


@SERVERS
def test_a_commit_whose_answer_was_lost_is_found_committed(
    one_proxied: tuple[Proxy, sa.Engine], namespace: str, db_dialect: str
) -> None:
    proxy, engine = one_proxied
    store = SQLFileStore(engine, namespace)
    store.write("x", "before")
    if db_dialect == "postgresql":
        with store.lock("l"):
            store.write("x", "in the block")
            proxy.mute()  # the COMMIT reaches the server; its answer never comes back
    else:  # MariaDB cannot tell what became of it
        with pytest.raises(sqlstore.CommitUnknownError) as error, store.lock("l"):
            store.write("x", "in the block")
            proxy.mute()
        assert not isinstance(error.value, TimeoutError)
    assert store.read("x") == "in the block"


@SERVERS
def test_a_commit_held_by_a_row_lock_past_the_timeout_did_not_commit(
    migrated_url: URL, namespace: str, db_dialect: str
) -> None:
    engine = sqlstore.create_engine(migrated_url, read_timeout=1.0)
    store = SQLFileStore(engine, namespace)
    try:
        store.write("held", "before")
        with row_locked(migrated_url, namespace):
            with pytest.raises(NOT_COMMITTED[db_dialect]) as error, store.lock("l"):
                store.write("held", "in the block")
            assert "COMMIT" in str(error.value)
            if db_dialect == "mysql":
                # Where the COMMIT was never sent, MariaDB's answer is definite too.
                with pytest.raises(sqlstore.DatabaseTimeoutError), store.lock("l"):
                    store.write("held", "in the block")
                    store.read("held")  # waits behind the write; no COMMIT was sent
        time.sleep(0.2)
        assert store.read("held") == "before"
    finally:
        engine.dispose()


@SERVERS
def test_a_commit_whose_fate_cannot_be_asked_is_unknown(
    one_proxied: tuple[Proxy, sa.Engine], namespace: str
) -> None:
    proxy, engine = one_proxied
    store = SQLFileStore(engine, namespace)
    store.write("x", "before")
    with pytest.raises(sqlstore.CommitUnknownError) as error, store.lock("l"):
        store.write("x", "in the block")
        proxy.silence()  # nothing reaches the server any more...
        proxy.refuse_new()  # ...and no other connection can ask it
    assert isinstance(error.value, sqlstore.DatabaseError)
    assert not isinstance(error.value, TimeoutError)


#: Trials of the row-lock race in the suite (bench/commit_race.py runs more).
RACE_TRIALS = 12


@SERVERS
def test_a_row_lock_released_around_the_timeout_never_gets_a_false_answer(
    migrated_url: URL, namespace: str, db_dialect: str
) -> None:
    """The block's COMMIT waits on a row lock released just before or after read_timeout.

    Whatever it reports must be true: returned means committed, DatabaseTimeoutError
    means not committed (and never later), CommitUnknownError may be either.
    """
    from tests.commit_race import race

    outcomes = race(migrated_url, namespace, RACE_TRIALS)
    print(f"\n{db_dialect}: {outcomes.summary()}")
    assert outcomes.false_answers == [], outcomes.false_answers
    if db_dialect == "mysql":
        assert outcomes.committed_after_timeout == 0  # MariaDB never claims it
