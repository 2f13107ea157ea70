"""Faults, bad input and secrets: nothing lost, every failure loud and of a named type."""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

import sqlstore
from sqlstore import SQLFileStore, admin
from tests.faults import kill_other_sessions, postgres_restart_command, restart_postgres
from tests.holding import held_by_another_thread
from tests.proxy import proxy_to

SERVERS = pytest.mark.parametrize("backend", ["postgresql", "mysql"], indirect=True)

# -- the server kills our connections -------------------------------------------------


@SERVERS
def test_every_idempotent_call_survives_killed_connections(
    store: SQLFileStore, backend: str
) -> None:
    store.write("events/e", "1")
    calls = {
        "write": lambda: store.write("events/f", "2"),
        "read": lambda: store.read("events/e"),
        "read_bytes": lambda: store.read_bytes("events/e"),
        "exists": lambda: store.exists("events/e"),
        "list": lambda: store.list("events"),
        "delete": lambda: store.delete("events/missing"),
    }
    for name, call in calls.items():
        store.list("")  # the pool now holds a live connection
        assert kill_other_sessions(store.engine, backend) >= 1, name
        call()
    assert store.list("events") == ["events/e", "events/f"]
    assert store.read("events/e") == "1"


@SERVERS
def test_a_lock_block_whose_connection_dies_rolls_back_and_the_store_recovers(
    store: SQLFileStore, backend: str
) -> None:
    store.write("counter", "0")
    with pytest.raises(sqlstore.DatabaseError) as info, store.lock("counter.lock"):
        store.write("counter", "1")
        store.write("half-done", "x")
        kill_other_sessions(store.engine, backend)
        store.write("after-kill", "never")
    assert isinstance(info.value, OSError)
    # Nothing of the block was applied...
    assert store.read("counter") == "0"
    assert not store.exists("half-done")
    assert not store.exists("after-kill")
    # ...and the same store works on, lock blocks included.
    with store.lock("counter.lock", timeout=5):
        store.write("counter", "2")
    assert store.read("counter") == "2"


def test_list_raises_rather_than_answer_empty_when_the_database_is_gone() -> None:
    engine = sqlstore.create_engine("postgresql+psycopg://postgres@127.0.0.1:1/none")
    store = SQLFileStore(engine, "ns")
    started = time.monotonic()
    with pytest.raises(sqlstore.DatabaseError):
        store.list("events")
    assert time.monotonic() - started < 10  # bounded retries
    with pytest.raises(sqlstore.DatabaseError):
        store.exists("events/.eventlog-len-3.marker")
    engine.dispose()


@pytest.mark.disruptive  # restarts the whole server, not only this test's database
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_postgres_restart(store: SQLFileStore, migrated_url: sa.URL) -> None:
    command = postgres_restart_command()
    if command is None:
        pytest.skip("no way to restart PostgreSQL here (set SQLSTORE_TEST_PG_RESTART)")
    store.write("before", "1")
    restart_postgres(command, migrated_url)
    # The pooled connections all died with the server; the same store goes on, a lock
    # block first (it finds the dead connection before it has done anything).
    with store.lock("first", timeout=5):
        store.write("first-after", "0")
    assert store.read("before") == "1"
    store.write("after", "2")
    with store.lock("l", timeout=5):
        store.write("in-lock", "3")
    assert store.list("") == ["after", "before", "first-after", "in-lock"]


# -- SQLite's single writer -----------------------------------------------------------


HOLD_WRITE_LOCK = textwrap.dedent(
    """
    import sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    conn.execute("ROLLBACK")
    """
)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_sqlite_writer_held_elsewhere_is_a_timeout_never_a_raw_error(
    migrated_url: sa.URL,
) -> None:
    engine = sqlstore.create_engine(migrated_url, sqlite_busy_timeout=0.5)
    store = SQLFileStore(engine, "busy")
    store.write("existing", "old")  # schema checked before the other process locks
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_WRITE_LOCK, str(migrated_url.database), "3"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(TimeoutError) as info:
            store.write("x", "1")
        assert isinstance(info.value, sqlstore.LockTimeoutError)
        assert not isinstance(info.value.__cause__, sqlite3.OperationalError) or (
            "database is locked" in str(info.value.__cause__)
        )
        with pytest.raises(sqlstore.LockTimeoutError), store.lock("p", timeout=0.5):
            pass
        assert time.monotonic() - started < 3
        assert store.read("existing") == "old"  # readers never wait (WAL)
        assert not store.exists("x")
    finally:
        holder.wait(timeout=10)
        engine.dispose()
    store = SQLFileStore.from_url(migrated_url, "busy")
    store.write("x", "1")  # and writes work again once the holder is gone
    assert store.read("x") == "1"
    store.delete("")
    store.close()


# -- bad input ------------------------------------------------------------------------

INJECTIONS = [
    "'; DROP TABLE sqlstore_files; --",
    '" OR 1=1 --',
    "a' OR '1'='1",
    "%",
    "_",
    "*/ SELECT 1 /*",
    "0x00; SELECT pg_sleep(5)",
    "$1",
    ":ns",
    "%(ns)s",
    "?",
]


@pytest.mark.parametrize("text", INJECTIONS)
def test_sql_metacharacters_are_plain_data(engine: sa.Engine, text: str) -> None:
    store = SQLFileStore(engine, f"inj-{text}")
    other = SQLFileStore(engine, f"inj-{text}-other")
    text = text.replace("/", "|")  # in a path, "/" separates directories
    other.write("keep", "1")
    store.write(f"dir/{text}", text)
    store.write(text, "top")
    assert store.read(f"dir/{text}") == text
    assert store.list("dir") == [f"dir/{text}"]
    assert store.list(text) == [text]
    with store.lock(text, timeout=5):
        store.write("in-lock", "1")
    store.delete("")
    assert store.list("") == []
    assert other.read("keep") == "1"
    other.delete("")


def test_bad_input_changes_nothing(store: SQLFileStore) -> None:
    store.write("keep/file", "v")
    bad_calls = [
        (ValueError, lambda: store.write("../x", "v")),
        (ValueError, lambda: store.write("a\x00", "v")),
        (ValueError, lambda: store.write("x" * 1025, "v")),
        (ValueError, lambda: store.write("\udc80", "v")),  # not encodable as UTF-8
        (TypeError, lambda: store.write("keep/file", 42)),  # type: ignore[arg-type]
        (TypeError, lambda: store.write("keep/file", None)),  # type: ignore[arg-type]
        (TypeError, lambda: store.read(42)),  # type: ignore[arg-type]
        (ValueError, lambda: store.delete("keep/../../x")),
        (IsADirectoryError, lambda: store.write("keep", "v")),
        (FileExistsError, lambda: store.write("keep/file/below", "v")),
        (ValueError, lambda: store.lock("x", timeout=float("nan")).__enter__()),
        (ValueError, lambda: store.lock("x", timeout="1").__enter__()),  # type: ignore[arg-type]
    ]
    for expected, call in bad_calls:
        with pytest.raises(expected):
            call()
    assert store.list("") == ["keep/"]
    assert store.read("keep/file") == "v"


def test_over_long_and_invalid_namespaces(engine: sa.Engine) -> None:
    for bad in ["", "x" * 256, "a\x00b", "\udc80"]:
        with pytest.raises(ValueError):
            SQLFileStore(engine, bad)
    with pytest.raises(TypeError):
        SQLFileStore(engine, b"bytes")  # type: ignore[arg-type]


# -- secrets and isolation --------------------------------------------------------------


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_password_never_shown(
    migrated_url: sa.URL, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    # The local server trusts every connection, so a password in the URL is accepted
    # and unused: the store works, and the password must not leak anywhere.
    secret = "Sup3r-s3cret-pw"
    url = migrated_url.set(password=secret)
    caplog.set_level(logging.DEBUG)
    engine = sqlstore.create_engine(url)
    store = SQLFileStore(engine, "secret-test")
    store.write("f", "1")
    texts = [repr(store), store.get_absolute_path("f"), str(store.engine.url)]
    empty = sqlstore.create_engine(url.set(database="postgres"))  # no sqlstore schema
    with pytest.raises(sqlstore.SchemaError) as schema_error:
        SQLFileStore(empty, "x").exists("f")
    texts.append(str(schema_error.value))
    broken = sqlstore.create_engine(url.set(port=1))
    with pytest.raises(sqlstore.DatabaseError) as db_error:
        SQLFileStore(broken, "x").read("f")
    texts += [str(db_error.value), repr(db_error.value), caplog.text]
    for text in texts:
        assert secret not in text
    store.delete("")
    for e in (engine, empty, broken):
        e.dispose()


@SERVERS
def test_namespaces_do_not_share_locks(engine: sa.Engine, backend: str) -> None:
    one, two = SQLFileStore(engine, "lock-ns-1"), SQLFileStore(engine, "lock-ns-2")
    with held_by_another_thread(one, "events/.eventlog.lock"):
        started = time.monotonic()
        with two.lock("events/.eventlog.lock", timeout=2):
            pass
        assert time.monotonic() - started < 1
        same = SQLFileStore(engine, "lock-ns-1")
        with pytest.raises(TimeoutError), same.lock("events/.eventlog.lock", timeout=0.3):
            pass


# -- a connection lost in the middle of a transaction outside a lock block -------------


@SERVERS
def test_a_multi_statement_call_whose_connection_dies_midway_is_retried_whole(
    migrated_url: sa.URL, namespace: str, backend: str
) -> None:
    """On MariaDB a write over 1 MiB, and a delete, are several statements."""
    assert migrated_url.host is not None and migrated_url.port is not None
    big = [bytes([i]) * (3 << 20) for i in (1, 2)]
    with proxy_to(migrated_url.host, migrated_url.port) as proxy:
        engine = sqlstore.create_engine(migrated_url.set(port=proxy.port))
        store = SQLFileStore(engine, namespace)
        try:
            store.write("big", big[0])
            store.write("other/a", "x")
            for attempt in range(1, 5):  # cut at each point of the transaction in turn
                proxy.cut_after(attempt)
                store.write("big", big[attempt % 2])
                assert store.read_bytes("big") == big[attempt % 2]
            proxy.cut_after(2)
            store.delete("big")
            assert not store.exists("big")
            assert store.read("other/a") == "x"
        finally:
            engine.dispose()


# -- errors from outside the store are sqlstore errors too ------------------------------


def test_migrate_and_admin_on_an_unreachable_server_raise_database_errors() -> None:
    url = "postgresql+psycopg://postgres@127.0.0.1:1/none"
    with pytest.raises(sqlstore.DatabaseError) as info:
        sqlstore.migrate(url)
    assert isinstance(info.value.__cause__, Exception)
    engine = sqlstore.create_engine(url)
    try:
        calls = {
            "namespaces": lambda: admin.namespaces(engine),
            "ls": lambda: admin.ls(engine, "ns"),
            "du": lambda: admin.du(engine, "ns"),
            "cat": lambda: admin.cat(engine, "ns", "a"),
            "purge": lambda: admin.purge(engine, timedelta(days=1)),
            "current_revision": lambda: admin.current_revision(engine),
            "copy": lambda: admin.copy(engine, engine),
            "upgrade": lambda: admin.upgrade(engine),
        }
        for name, call in calls.items():
            with pytest.raises(sqlstore.DatabaseError):
                call()
            assert name
    finally:
        engine.dispose()


def test_an_unknown_revision_is_a_schema_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    sqlstore.migrate(url)
    with pytest.raises(sqlstore.SchemaError, match="nonexistent"):
        sqlstore.migrate(url, "nonexistent")
