"""Retention: a namespace is purged whole or not at all, and never a write it did not see."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from sqlstore import SQLFileStore, admin

pytestmark = pytest.mark.timeout(60)


def age_namespace(engine: sa.Engine, namespace: str, days: int) -> None:
    """Make every file of ``namespace`` look ``days`` old."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE sqlstore_files SET created_at = :t, updated_at = :t WHERE namespace = :ns"
            ).bindparams(sa.bindparam("t", type_=sa.DateTime())),
            {"t": days_ago(conn, days), "ns": namespace},
        )


def days_ago(conn: sa.Connection, days: int) -> object:
    now = conn.execute(sa.select(sa.func.current_timestamp())).scalar_one()
    if isinstance(now, str):  # SQLite's CURRENT_TIMESTAMP is text
        from datetime import datetime

        now = datetime.fromisoformat(now)
    return now - timedelta(days=days)


def test_a_write_that_lands_during_a_purge_is_never_deleted(
    engine: sa.Engine, namespace: str
) -> None:
    store = SQLFileStore(engine, namespace)
    store.write("events/old", "1")
    store.write("old", "2")
    age_namespace(engine, namespace, 40)
    touched, go = threading.Event(), threading.Event()

    def write_during_the_purge() -> None:
        # Holds a row lock on `old` (SQLite: the writer lock) until its block commits,
        # so the purge, which already found the namespace stale, has to wait for it.
        with store.lock("writer.lock", timeout=10):
            store.write("old", "touched")
            # A read: a write in a block may wait to be sent until one (or the commit).
            assert store.read("old") == "touched"
            touched.set()
            go.wait(10)
            store.write("new", "written during the purge")

    writer = threading.Thread(target=write_during_the_purge)
    writer.start()
    assert touched.wait(10)
    result: list[admin.PurgeReport] = []
    purge = threading.Thread(
        target=lambda: result.append(admin.purge(engine, timedelta(days=30), prefix=namespace))
    )
    purge.start()
    time.sleep(1.0)  # the purge has scanned (nothing recent is committed) and now waits
    go.set()
    writer.join(30)
    purge.join(30)
    assert not purge.is_alive()
    assert store.read("new") == "written during the purge"
    assert store.read("old") == "touched"
    assert store.read("events/old") == "1"
    (report,) = result
    assert report.kept == [namespace]
    assert report.removed == []


def test_purge_removes_stale_namespaces_whole_and_keeps_fresh_ones(
    engine: sa.Engine, namespace: str
) -> None:
    stale, fresh = SQLFileStore(engine, namespace), SQLFileStore(engine, namespace + "-fresh")
    for store in (stale, fresh):
        store.write("events/a", "1")
        store.write("base_state.json", "{}")
    age_namespace(engine, stale.namespace, 40)
    age_namespace(engine, fresh.namespace, 40)
    fresh.write("base_state.json", "{1}")  # one recent write keeps it all
    report = admin.purge(engine, timedelta(days=30), prefix=namespace)
    assert [info.namespace for info in report.removed] == [stale.namespace]
    assert stale.list("") == []
    assert fresh.list("") == ["base_state.json", "events/"]
