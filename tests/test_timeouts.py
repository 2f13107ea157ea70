"""Every call is bounded in time: an exhausted pool, a silent server, a stalled one."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

import sqlstore
from sqlstore import SQLFileStore
from tests.holding import held_by_another_thread
from tests.proxy import Proxy, proxy_to, silent_server

SERVERS = pytest.mark.parametrize("backend", ["postgresql", "mysql", "citus"], indirect=True)
#: A fake server that never answers: the driver's side, the same whatever the database.
DRIVERS = pytest.mark.parametrize("backend", ["postgresql", "mysql"], indirect=True)
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


@DRIVERS
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


@SERVERS
def test_what_outwaits_the_read_timeout_never_lands_later(
    migrated_url: URL, namespace: str
) -> None:
    """A timed-out call is ended in the server too, so it cannot commit afterwards.

    The client gives up after ``read_timeout``, but the server still holds what it was
    sent: a lock block's writes travel with its COMMIT, and would commit as soon as the
    row lock they wait for is released, after the caller was told the block failed.
    """
    engine = sqlstore.create_engine(migrated_url, read_timeout=1.0)
    blocker = sa.create_engine(migrated_url, poolclass=sa.pool.NullPool)
    store = SQLFileStore(engine, namespace)
    try:
        store.write("held", "before")
        for attempt in ("block", "plain"):
            with blocker.connect() as conn:
                conn.execute(  # holds the row's lock until the rollback below
                    sa.text("UPDATE sqlstore_files SET size = size WHERE namespace = :ns"),
                    {"ns": namespace},
                )
                with pytest.raises(sqlstore.DatabaseTimeoutError):
                    if attempt == "block":
                        with store.lock("l"):
                            store.write("held", "in the block")
                            store.write("new", "in the block")
                    else:
                        store.write("held", "plain")
                conn.rollback()
            # What was sent and never answered would land as soon as the lock is free.
            for _ in range(10):
                assert store.read("held") == "before"
                assert not store.exists("new")
                time.sleep(0.05)
    finally:
        engine.dispose()
        blocker.dispose()
