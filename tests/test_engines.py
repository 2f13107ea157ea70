"""Engines sqlstore is given: its own, plain SQLAlchemy ones, and in-memory SQLite."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

import sqlstore
from sqlstore import SQLFileStore

pytestmark = pytest.mark.timeout(60)


def _pragmas(engine: sa.Engine, connections: int) -> list[tuple[str, int]]:
    """journal_mode and busy_timeout of ``connections`` pooled connections at once."""
    held = [engine.connect() for _ in range(connections)]
    try:
        return [
            (
                conn.exec_driver_sql("PRAGMA journal_mode").scalar_one(),
                conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one(),
            )
            for conn in held
        ]
    finally:
        for conn in held:
            conn.close()


def test_a_plain_sqlalchemy_sqlite_engine_is_configured_like_sqlstores(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'plain.db'}"
    sqlstore.migrate(url)
    engine = sa.create_engine(url)  # not sqlstore.create_engine: no WAL, 5 s busy timeout
    with engine.connect() as conn:  # the app used it first: a connection sqlstore never saw
        conn.exec_driver_sql("SELECT 1")
    store = SQLFileStore(engine, "ns")
    store.write("a", "1")
    with store.lock("l", timeout=1):
        store.write("b", "2")
    assert store.read("b") == "2"
    # Every connection, the one that ran the lock block included, has sqlstore's settings.
    assert _pragmas(engine, 3) == [("wal", 30_000)] * 3
    engine.dispose()


def test_in_memory_sqlite_is_one_database_per_engine_shared_by_threads() -> None:
    engine = sqlstore.create_engine("sqlite://")
    sqlstore.migrate(engine)
    store = SQLFileStore(engine, "ns")
    store.write("a", "main thread")
    seen: list[str] = []
    thread = threading.Thread(target=lambda: seen.append(store.read("a")))
    thread.start()
    thread.join()
    assert seen == ["main thread"]
    # A lock block keeps the one connection; another thread waits its turn, bounded.
    inside, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with store.lock("l", timeout=1):
            store.write("b", "in the block")
            inside.set()
            leave.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert inside.wait(10)
    with pytest.raises(sqlstore.LockTimeoutError):
        store.lock("other", timeout=0.2).__enter__()
    leave.set()
    holder.join()
    assert store.read("b") == "in the block"
    assert SQLFileStore(engine, "ns").list("") == ["a", "b"]
    other = sqlstore.create_engine("sqlite://")  # another engine: another database
    with pytest.raises(sqlstore.SchemaError, match=r"sqlstore\.migrate\(engine\)"):
        SQLFileStore(other, "ns").read("a")


def test_in_memory_sqlite_by_url_alone_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match=r"sqlstore\.migrate\(engine\)"):
        sqlstore.migrate("sqlite://")
    with pytest.raises(ValueError, match=r"sqlstore\.create_engine"):
        SQLFileStore(sa.create_engine("sqlite://"), "ns")
    with pytest.raises(ValueError, match="poolclass"):
        sqlstore.create_engine("sqlite://", poolclass=sa.pool.StaticPool)


def test_an_engine_with_execution_options_is_the_same_database(tmp_path: Path) -> None:
    engine = sqlstore.create_engine(f"sqlite:///{tmp_path / 'o.db'}")
    sqlstore.migrate(engine)
    proxy = engine.execution_options(logging_token="app")
    store, through_proxy = SQLFileStore(engine, "ns"), SQLFileStore(proxy, "ns")

    class Boom(Exception):
        pass

    with pytest.raises(Boom), store.lock("l", timeout=1):
        through_proxy.write("a", "1")  # joins the block instead of waiting for it
        raise Boom
    assert not store.exists("a")
    engine.dispose()
