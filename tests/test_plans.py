"""PostgreSQL keeps using the right index as the tables grow from empty.

A pooled connection plans each prepared statement once and keeps the plan until the
table's statistics change. On a new database the first plans are made while the tables
hold a page or two, where scanning the whole namespace looks as cheap as the listing
index. Where nothing refreshes the statistics (autovacuum off, as on the test machine,
or behind a fast load) that plan would stay: measured here, a write took 0.55 ms at
2,000 files and 2.1 ms at 12,000, and a benchmark's load of 100,000 files did not end
in 20 minutes. sqlstore replaces such connections after ever longer use
(``sqlstore.pooling``). The test counts the index entries and rows PostgreSQL read,
from its own statistics, rather than timing anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

import sqlstore
from sqlstore import pooling
from tests.backends import partitions

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.parametrize("backend", ["postgresql", "pgpartitioned"], indirect=True),
]

_TABLES = "relname LIKE 'sqlstore\\_files%' OR relname LIKE 'sqlstore\\_chunks%'"
_READ = sa.text(
    "SELECT (SELECT coalesce(sum(idx_tup_read), 0) FROM pg_stat_user_indexes"
    f" WHERE {_TABLES}) + (SELECT coalesce(sum(seq_tup_read), 0) FROM pg_stat_user_tables"
    f" WHERE {_TABLES})"
)


def _entries_read(engine: sa.Engine, observer: sa.Engine) -> int:
    """Index entries and table rows PostgreSQL read from sqlstore's tables so far.

    ``engine`` has one connection; it is told to report its statistics as it goes idle
    (PostgreSQL 15), which happens before its answer arrives.
    """
    raw = engine.raw_connection()
    try:
        raw.cursor().execute("SELECT pg_stat_force_next_flush()")
    finally:
        raw.close()
    with observer.connect() as conn:
        conn.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
        return int(conn.execute(_READ).scalar_one())


@pytest.fixture
def new_url(empty_url: URL, backend: str) -> Iterator[URL]:
    """A new database at head: tables empty, statistics taken while they were."""
    sqlstore.migrate(empty_url, partitions=partitions(backend))
    yield empty_url


def _calls(store: sqlstore.SQLFileStore, i: int) -> int:
    """One of each call a conversation makes; returns how many names it listed."""
    store.write(f"new/f{i:05d}.json", "x" * 200)
    store.write("d000/f000.json", f"overwritten {i}")
    assert store.read(f"new/f{i:05d}.json") == "x" * 200
    assert store.read_bytes("d000/f001.json") == b"x" * 200
    assert store.exists(f"new/f{i:05d}.json")
    assert not store.exists(f"missing/f{i}")
    assert store.exists("d001")
    listed = store.list("d002")
    assert len(listed) == 50
    with store.lock("events/.lock"):
        store.write(f"events/e{i:05d}", "e")
        store.delete(f"events/m{i - 1:05d}")
        store.write(f"events/m{i:05d}", "")
    store.write(f"gone/f{i:05d}", "x")
    store.delete(f"gone/f{i:05d}")
    return len(listed)


def _grow_by_calls(store: sqlstore.SQLFileStore) -> None:
    for i in range(4 * pooling.FIRST_REPLAN):
        if i % 10 == 0:
            _calls(store, i)
        store.write(f"bulk/d{i // 100:03d}/f{i % 100:03d}", "y")


def _grow_in_blocks(store: sqlstore.SQLFileStore) -> None:
    # A load: few checkouts of the pool's connection, each running many statements.
    for block in range(8):
        with store.lock("bulk/.load"):
            for i in range(pooling.FIRST_REPLAN):
                store.write(f"bulk/d{block}{i // 100:02d}/f{i % 100:03d}", "y")


@pytest.mark.parametrize("grow", [_grow_by_calls, _grow_in_blocks], ids=["calls", "blocks"])
def test_plans_follow_the_tables_as_they_grow(
    new_url: URL, grow: Callable[[sqlstore.SQLFileStore], None]
) -> None:
    engine = sqlstore.create_engine(new_url, pool_size=1, max_overflow=0)
    observer = sa.create_engine(new_url, poolclass=sa.pool.NullPool)
    try:
        store = sqlstore.SQLFileStore(engine, "grows")
        for i in range(150):
            store.write(f"d{i // 50:03d}/f{i % 50:03d}.json", "x" * 200)
        # Every call is prepared and planned while the tables are small (psycopg
        # prepares on the sixth run), then the namespace grows past the point where
        # the listing index is the better plan by far.
        for i in range(10):
            _calls(store, i)
        grow(store)
        before = _entries_read(engine, observer)
        calls, listed = 0, 0
        for i in range(100_000, 100_200):
            listed += _calls(store, i)
            calls += 12
        read = _entries_read(engine, observer) - before
    finally:
        engine.dispose()
        observer.dispose()
    # Each call reads its own few entries; a plan that scans the namespace reads
    # thousands a call.
    assert read <= 10 * calls + listed, f"{read} entries read by {calls} calls"
