"""Writes a lock block sends ahead of their answers: their errors, and what the block does then.

On PostgreSQL (pipeline mode) and MySQL/MariaDB (multi-statement packets) a write or
delete inside a lock block does not wait for its answer; a write that a tree rule
refuses is reported at the next read or when the block ends, and the block rolls back
whole. On SQLite it is reported at the call. Either way nothing of the block lands.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

import sqlstore
from sqlstore import SQLFileStore


class Boom(Exception):
    """Raised inside lock blocks to leave them by an exception."""


def test_a_refused_write_in_a_block_rolls_the_whole_block_back(store: SQLFileStore) -> None:
    store.write("f", "a file")
    with pytest.raises(FileExistsError, match="'f/g'"), store.lock("l", timeout=5):
        store.write("before", "1")
        store.write("f/g", "below a file")  # refused: may surface only at the end
        store.write("after", "2")
    assert store.list("") == ["f"]


def test_a_refused_write_surfaces_at_the_next_read_at_the_latest(store: SQLFileStore) -> None:
    store.write("dir/x", "1")
    with pytest.raises(sqlstore.DatabaseError, match="rolled back"), store.lock("l", timeout=5):
        store.write("other", "x")
        with pytest.raises(IsADirectoryError, match="'dir'"):
            store.write("dir", "over a directory")  # SQLite: reported here
            store.read("dir/x")  # others: here at the latest
        # The caller went on: the block is spoiled and rolls back when it ends.
    assert store.list("") == ["dir/"]
    assert store.read("dir/x") == "1"


def test_a_caught_error_still_rolls_the_block_back(store: SQLFileStore) -> None:
    store.write("f", "a file")
    with pytest.raises(sqlstore.DatabaseError, match="rolled back"), store.lock("l", timeout=5):
        store.write("kept?", "no")
        try:
            store.write("f/g", "x")
            store.exists("f")  # a read: the refusal is known by now on every dialect
        except FileExistsError:
            pass  # swallowed: the block must not commit half of itself
    assert not store.exists("kept?")


def test_deferred_writes_are_read_back_inside_the_block(store: SQLFileStore) -> None:
    with store.lock("l", timeout=5):
        for i in range(5):
            store.write(f"events/e{i}", f"v{i}")
        store.delete("events/e0")
        assert store.list("events") == [f"events/e{i}" for i in range(1, 5)]
        assert store.read("events/e4") == "v4"
        big = bytes(range(256)) * (5 << 12)  # 5 MiB: chunked on MariaDB
        store.write("big", big)
        assert store.read_bytes("big") == big
    assert store.read_bytes("big") == big
    assert store.list("events") == [f"events/e{i}" for i in range(1, 5)]


def test_nested_blocks_after_deferred_writes(store: SQLFileStore) -> None:
    with store.lock("outer", timeout=5):
        store.write("a", "1")
        with pytest.raises(Boom), store.lock("inner", timeout=5):
            store.write("b", "2")
            raise Boom
        store.write("c", "3")
    assert store.list("") == ["a", "c"]


def test_outside_a_block_refusals_are_reported_at_the_call(store: SQLFileStore) -> None:
    store.write("f", "a file")
    with pytest.raises(FileExistsError, match="'f/g/h'"):
        store.write("f/g/h", "x")
    store.write("d/x", "1")
    with pytest.raises(IsADirectoryError, match="'d'"):
        store.write("d", "x")
    big = bytes(3 << 20)
    with pytest.raises(FileExistsError):
        store.write("f/big", big)  # a multi-statement transaction on MariaDB
    assert store.list("") == ["d/", "f"]


def test_a_refusal_that_leaves_a_nested_block_undoes_that_block_only(store: SQLFileStore) -> None:
    """Identical on every database, wherever the refusal surfaces (the call, or the block's end)."""
    store.write("f", "a file")
    with store.lock("outer", timeout=5):
        store.write("a", "1")
        with pytest.raises(FileExistsError, match="'f/g'"), store.lock("inner", timeout=5):
            store.write("f/g", "below a file")  # SQLite: refused here; others: as it ends
            store.write("b", "undone with the nested block")
        store.write("c", "3")
    assert store.list("") == ["a", "c", "f"]


@pytest.fixture
def counted_engine(migrated_url: URL) -> Iterator[tuple[sa.Engine, list[object]]]:
    """An engine of its own, and the connections it invalidated."""
    engine = sqlstore.create_engine(migrated_url)
    invalidated: list[object] = []
    sa.event.listen(engine, "invalidate", lambda conn, record, exc: invalidated.append(exc))
    yield engine, invalidated
    engine.dispose()


@pytest.mark.parametrize("where", ["a later write", "the commit"])
def test_a_refusal_answered_before_the_next_statement_names_its_path(
    counted_engine: tuple[sa.Engine, list[object]],
    namespace: str,
    where: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """PostgreSQL raises an answer that arrived meanwhile from the next statement sent."""
    engine, invalidated = counted_engine
    store = SQLFileStore(engine, namespace)
    store.write("f", "a file")
    with pytest.raises(FileExistsError, match="'f/g'"), store.lock("l", timeout=5):
        store.write("f/g", "below a file")
        time.sleep(0.3)  # the refusal's answer is back before anything else is sent
        if where == "a later write":
            store.write("after", "x")
    gc.collect()  # a pipeline left open would log an error once collected
    assert store.list("") == ["f"]
    assert invalidated == [], "a refusal cost the pooled connection"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.records
    with store.lock("l", timeout=5):
        store.write("g", "the store works on")
    assert store.read("g") == "the store works on"


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_statement_prepared_after_a_failure_in_the_pipeline_is_never_missing(
    migrated_url: sa.URL, namespace: str
) -> None:
    """psycopg prepares a statement on its sixth run by sending it prepared in the
    pipeline; after a failed statement the server skips it, yet psycopg records it as
    prepared. The connection must not serve on with that record (it did: every later
    run of the statement failed with "prepared statement does not exist")."""
    engine = sqlstore.create_engine(migrated_url, pool_size=1, max_overflow=0)
    invalidated: list[object] = []
    sa.event.listen(engine, "invalidate", lambda conn, record, exc: invalidated.append(exc))
    try:
        store = SQLFileStore(engine, namespace)
        store.write("f", "a file")
        # psycopg forgets its prepared statements when it first sees a ROLLBACK on a
        # connection, not after: a block that rolls back once, beforehand.
        with pytest.raises(Boom), store.lock("l", timeout=5):
            raise Boom
        for i in range(5):  # five runs of the write at depth 1: the next one is prepared
            store.write(f"d/{i}", "x")
        with pytest.raises(FileExistsError), store.lock("l", timeout=5):
            store.write("f/g/h", "below a file")  # depth 2: refused, the pipeline aborts
            store.write("d/5", "x")  # depth 1, sixth run: sent to be prepared
        for i in range(6, 9):
            store.write(f"d/{i}", "x")
        assert store.list("d") == [f"d/{i}" for i in (0, 1, 2, 3, 4, 6, 7, 8)]
        assert invalidated == [], "the refusal cost the pooled connection"
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
@pytest.mark.parametrize("dropped_by", ["DEALLOCATE ALL", "DISCARD ALL"])
def test_statements_a_block_prepared_are_prepared_again_once_dropped(
    migrated_url: sa.URL, namespace: str, dropped_by: str
) -> None:
    """A lock block's writes go prepared by name on the connection. When the session's
    prepared statements are dropped (here by a statement another user of the engine's
    pool runs, which psycopg sees), the next block prepares them again: it must not
    fail with "prepared statement does not exist"."""
    engine = sqlstore.create_engine(migrated_url, pool_size=1, max_overflow=0)
    try:
        store = SQLFileStore(engine, namespace)
        for i in range(6):  # psycopg prepares the read on the sixth run: it has names
            with store.lock("l", timeout=5):
                store.write(f"d/{i}", "x")
            assert store.read(f"d/{i}") == "x"
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            # The pool's only connection: the one the blocks prepared their writes on.
            conn.exec_driver_sql(dropped_by)
        with store.lock("l", timeout=5):
            store.write("d/after", "x")
            store.delete("d/0")
        assert store.list("d") == [*(f"d/{i}" for i in range(1, 6)), "d/after"]
    finally:
        engine.dispose()


def test_a_block_larger_than_one_batch_still_rolls_back_whole(store: SQLFileStore) -> None:
    """Where writes are queued, a block's queue is sent ahead once it holds a few MiB:
    what was sent so far is still the block's, and leaves with it."""
    store.write("f", "a file")
    big = b"x" * (1 << 20)
    with pytest.raises(FileExistsError, match="'f/g'"), store.lock("l", timeout=30):
        for i in range(6):  # more than one batch (4 MiB on PostgreSQL)
            store.write(f"big/{i}", big)
        store.write("f/g", "below a file")
    assert store.list("") == ["f"]
    with store.lock("l", timeout=30):
        for i in range(6):
            store.write(f"big/{i}", big)
    assert store.read_bytes("big/5") == big
    assert len(store.list("big")) == 6
