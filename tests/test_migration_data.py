"""Migrations keep every byte: a database filled at an old revision, upgraded, downgraded.

The database is filled at revision 0001 with rows written the way sqlstore 0001 wrote
them (chunked contents on MariaDB included), then upgraded to head and read back through
today's store, then downgraded and compared row for row with what was written.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

import sqlstore
from sqlstore import SQLFileStore, paths
from sqlstore.migrations import downgrade
from sqlstore.schema import BytewiseString, Content, DirKey, FileId

pytestmark = pytest.mark.timeout(300)

CHUNK = 1 << 20  # revision 0001 split MySQL contents into 1 MiB rows

# The tables as revision 0001 made them.
_meta = sa.MetaData()
FILES_0001 = sa.Table(
    "sqlstore_files",
    _meta,
    sa.Column("file_id", FileId, primary_key=True),
    sa.Column("namespace", BytewiseString(255)),
    sa.Column("parent", DirKey),
    sa.Column("name", BytewiseString(1024)),
    sa.Column("content", Content),
    sa.Column("size", sa.BigInteger),
    sa.Column("chunk_count", sa.Integer),
    sa.Column("created_at", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
)
CHUNKS_0001 = sa.Table(
    "sqlstore_chunks",
    _meta,
    sa.Column("file_id", FileId, primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("data", Content),
)

NAMESPACES = ["conv-1", "Conv-1", "conv-1 ", "ünïcode ✓", "n" * 255, "a_b%c"]
FILES = {
    "base_state.json": b'{"agent": "x"}',
    "events/event-00000-a.json": b'{"kind": "MessageEvent"}',
    "events/.eventlog-len-1.marker": b"",
    "events/sub/deep/file.bin": bytes(range(256)) * 4,
    "Events/event-00000-a.json": b"case differs",
    "trailing /x": b"trailing space in a directory name",
}


def _files() -> dict[str, bytes]:
    found = dict(FILES)
    # Three chunks and a bit where contents are chunked; one statement elsewhere.
    found["events/big.bin"] = bytes(i % 251 for i in range(3 * CHUNK + 17))
    return found


def _rows(dialect: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The rows sqlstore 0001 would have stored for NAMESPACES x _files()."""
    chunked = dialect == "mysql"
    stamp = datetime(2026, 10, 1, 12, 0, 0, tzinfo=UTC)
    files, chunks = [], []
    for ns in NAMESPACES:
        for path, data in _files().items():
            parent, name = paths.split(path)
            fid = paths.file_id(ns, path)
            pieces = (
                [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
                if chunked and len(data) > CHUNK
                else [data]
            )
            files.append(
                {
                    "file_id": fid,
                    "namespace": ns,
                    "parent": paths.dir_key(parent),
                    "name": name,
                    "content": pieces[0],
                    "size": len(data),
                    "chunk_count": len(pieces) - 1,
                    "created_at": stamp,
                    "updated_at": stamp,
                }
            )
            chunks += [{"file_id": fid, "seq": i, "data": p} for i, p in enumerate(pieces[1:], 1)]
    if chunked:
        # What 0001 could leave behind: a chunk beyond its file's count (a file that
        # shrank), kept; and a chunk of a file that no longer exists, dropped.
        chunks.append(
            {"file_id": paths.file_id("conv-1", "events/big.bin"), "seq": 9, "data": b"x"}
        )
        chunks.append({"file_id": paths.file_id("gone", "gone"), "seq": 1, "data": b"orphan"})
    return files, chunks


def _dump(conn: sa.Connection, dialect: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    files = conn.execute(
        sa.select(
            FILES_0001.c.file_id,
            FILES_0001.c.namespace,
            FILES_0001.c.parent,
            FILES_0001.c.name,
            FILES_0001.c.content,
            FILES_0001.c.size,
            FILES_0001.c.chunk_count,
        ).order_by(FILES_0001.c.file_id)
    ).all()
    chunks = conn.execute(
        sa.select(CHUNKS_0001.c.file_id, CHUNKS_0001.c.seq, CHUNKS_0001.c.data).order_by(
            CHUNKS_0001.c.file_id, CHUNKS_0001.c.seq
        )
    ).all()
    normal = [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row) for row in files]
    return normal, [tuple(bytes(v) if isinstance(v, memoryview) else v for v in r) for r in chunks]


@pytest.fixture
def filled_at_0001(empty_url: URL, db_dialect: str) -> Iterator[URL]:
    sqlstore.migrate(empty_url, "0001")
    files, chunks = _rows(db_dialect)
    engine = sa.create_engine(empty_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(FILES_0001.insert(), files)
        if chunks:
            conn.execute(CHUNKS_0001.insert(), chunks)
    engine.dispose()
    yield empty_url


def _read_all(url: URL) -> None:
    engine = sqlstore.create_engine(url)
    try:
        for ns in NAMESPACES:
            store = SQLFileStore(engine, ns, read_ahead=0)
            for path, data in _files().items():
                assert store.read_bytes(path) == data, (ns, path)
            assert store.list("") == ["Events/", "base_state.json", "events/", "trailing /"]
            assert store.list("events/sub") == ["events/sub/deep/"]
        # And the upgraded tables take writes and deletes.
        store = SQLFileStore(engine, NAMESPACES[0])
        store.write("events/big.bin", b"smaller now")
        assert store.read_bytes("events/big.bin") == b"smaller now"
        store.delete("events")
        assert store.list("") == ["Events/", "base_state.json", "trailing /"]
    finally:
        engine.dispose()


def test_upgrade_and_downgrade_keep_every_byte(filled_at_0001: URL, db_dialect: str) -> None:
    url = filled_at_0001
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        before = _dump(conn, db_dialect)
    sqlstore.migrate(url)
    with engine.connect() as conn:
        after = _dump(conn, db_dialect)
        if db_dialect == "mysql":
            namespaced = conn.execute(
                sa.text("SELECT COUNT(*) FROM sqlstore_chunks WHERE namespace IS NULL")
            ).scalar_one()
            assert namespaced == 0
    expected_chunks = [row for row in before[1] if row[2] != b"orphan"]
    assert after == (before[0], expected_chunks)  # nothing lost, nothing changed
    downgrade(url, "0001")
    with engine.connect() as conn:
        assert _dump(conn, db_dialect) == (before[0], expected_chunks)
    sqlstore.migrate(url)
    engine.dispose()
    _read_all(url)
