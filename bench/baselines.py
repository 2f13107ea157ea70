"""The floors: one statement per call on a raw driver connection, no sqlstore.

Each baseline owns a table ``bench_raw_files`` with the shape of ``sqlstore_files``
(16-byte hash key, namespace, encoded parent directory, name, content, size,
timestamps, and an index on ``(namespace, parent, name)``), and implements the same
calls as the stores with the plainest SQL there is:

* write new: ``INSERT``; overwrite: ``INSERT ... ON CONFLICT/DUPLICATE KEY UPDATE``;
* read / read_bytes: ``SELECT content`` by key; exists: ``SELECT EXISTS`` by key;
* list: the range scan ``WHERE namespace = ? AND parent = ? ORDER BY name``;
* delete: ``DELETE`` by key;
* lock+unlock: ``BEGIN; pg_advisory_xact_lock; COMMIT`` (PostgreSQL),
  ``BEGIN IMMEDIATE; COMMIT`` (SQLite), ``GET_LOCK; RELEASE_LOCK`` (MariaDB).

PostgreSQL runs on psycopg 3 in autocommit mode with server-side prepared statements
(``prepare=True``: one round trip per call); SQLite on the standard library in WAL mode
(its statement cache prepares once); MariaDB on PyMySQL in autocommit mode.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pymysql

TABLE = "bench_raw_files"


def key(namespace: str, path: str) -> bytes:
    """A 16-byte BLAKE2b key of (namespace, path), as sqlstore's primary key is."""
    digest = hashlib.blake2b(digest_size=16, person=b"bench-raw-file")
    digest.update(namespace.encode())
    digest.update(b"\x00")
    digest.update(path.encode())
    return digest.digest()


def split(path: str) -> tuple[bytes, str]:
    """(encoded parent directory, name): ``/`` becomes NUL in the parent, as in sqlstore."""
    parent, _, name = path.rpartition("/")
    return parent.encode().replace(b"/", b"\x00"), name


def _lock_int(namespace: str, path: str) -> int:
    return int.from_bytes(key(namespace, path)[:8], "big", signed=True)


class RawPostgres:
    """psycopg 3, autocommit, server-side prepared statements."""

    label = "raw psycopg"

    INSERT = (
        f"INSERT INTO {TABLE} (file_id, namespace, parent, name, content, size)"
        " VALUES (%s, %s, %s, %s, %s, %s)"
    )
    UPSERT = (
        INSERT + " ON CONFLICT (file_id) DO UPDATE SET content = excluded.content,"
        " size = excluded.size, updated_at = now()"
    )
    READ = f"SELECT content FROM {TABLE} WHERE file_id = %s"
    EXISTS = f"SELECT EXISTS (SELECT 1 FROM {TABLE} WHERE file_id = %s)"
    LIST = f"SELECT name FROM {TABLE} WHERE namespace = %s AND parent = %s ORDER BY name"
    DELETE = f"DELETE FROM {TABLE} WHERE file_id = %s"
    LOCK = "SELECT pg_advisory_xact_lock(%s)"

    def __init__(self, conninfo: str, namespace: str) -> None:
        self.namespace = namespace
        self.conn = psycopg.connect(conninfo, autocommit=True)
        self.cur = self.conn.cursor()

    @staticmethod
    def create_table(conninfo: str) -> None:
        """(Re)create the baseline table, with lz4 TOAST compression as sqlstore uses it."""
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
            conn.execute(
                f"""CREATE TABLE {TABLE} (
                    file_id bytea PRIMARY KEY,
                    namespace varchar(255) COLLATE "C" NOT NULL,
                    parent bytea NOT NULL,
                    name varchar(1024) COLLATE "C" NOT NULL,
                    content bytea NOT NULL,
                    size bigint NOT NULL,
                    chunk_count integer NOT NULL DEFAULT 0,
                    created_at timestamptz NOT NULL DEFAULT now(),
                    updated_at timestamptz NOT NULL DEFAULT now())"""
            )
            conn.execute(f"CREATE INDEX ix_{TABLE}_npn ON {TABLE} (namespace, parent, name)")
            lz4 = conn.execute(
                "SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression'"
                " AND 'lz4' = ANY(enumvals)"
            ).fetchone()
            if lz4 is not None:
                conn.execute(f"ALTER TABLE {TABLE} ALTER COLUMN content SET COMPRESSION lz4")

    @staticmethod
    def drop_table(conninfo: str) -> None:
        """Drop the baseline table."""
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {TABLE}")

    def _row(self, path: str, contents: str) -> tuple[Any, ...]:
        data = contents.encode()
        parent, name = split(path)
        return (key(self.namespace, path), self.namespace, parent, name, data, len(data))

    def write_new(self, path: str, contents: str) -> None:
        """``INSERT`` a new file."""
        self.cur.execute(self.INSERT, self._row(path, contents), prepare=True)

    def write(self, path: str, contents: str) -> None:
        """Insert or overwrite a file."""
        self.cur.execute(self.UPSERT, self._row(path, contents), prepare=True)

    def read_bytes(self, path: str) -> bytes:
        """The content by key."""
        self.cur.execute(self.READ, (key(self.namespace, path),), prepare=True)
        row = self.cur.fetchone()
        if row is None:
            raise FileNotFoundError(path)
        return bytes(row[0])

    def read(self, path: str) -> str:
        """The content by key, decoded."""
        return self.read_bytes(path).decode()

    def exists(self, path: str) -> bool:
        """Whether the key exists."""
        self.cur.execute(self.EXISTS, (key(self.namespace, path),), prepare=True)
        row = self.cur.fetchone()
        return bool(row and row[0])

    def list(self, path: str) -> list[str]:
        """The range scan over one directory's direct files."""
        parent = path.encode().replace(b"/", b"\x00")
        self.cur.execute(self.LIST, (self.namespace, parent), prepare=True)
        return [f"{path}/{name}" for (name,) in self.cur.fetchall()]

    def delete(self, path: str) -> None:
        """``DELETE`` by key."""
        self.cur.execute(self.DELETE, (key(self.namespace, path),), prepare=True)

    @contextmanager
    def lock(self, path: str) -> Iterator[None]:
        """A transaction holding a transaction-scoped advisory lock."""
        self.cur.execute("BEGIN")
        try:
            self.cur.execute(self.LOCK, (_lock_int(self.namespace, path),), prepare=True)
            yield
        except BaseException:
            self.cur.execute("ROLLBACK")
            raise
        self.cur.execute("COMMIT")

    def bulk_write(self, items: Iterable[tuple[str, str]]) -> None:
        """Load files fast (untimed setup): one transaction, ``executemany``."""
        rows = [self._row(path, contents) for path, contents in items]
        with self.conn.transaction():
            self.cur.executemany(self.UPSERT, rows)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


class RawSQLite:
    """The standard library's ``sqlite3`` in WAL mode, autocommit, one statement per call."""

    INSERT = (
        f"INSERT INTO {TABLE} (file_id, namespace, parent, name, content, size)"
        " VALUES (?, ?, ?, ?, ?, ?)"
    )
    UPSERT = (
        INSERT + " ON CONFLICT (file_id) DO UPDATE SET content = excluded.content,"
        " size = excluded.size, updated_at = CURRENT_TIMESTAMP"
    )
    READ = f"SELECT content FROM {TABLE} WHERE file_id = ?"
    EXISTS = f"SELECT EXISTS (SELECT 1 FROM {TABLE} WHERE file_id = ?)"
    LIST = f"SELECT name FROM {TABLE} WHERE namespace = ? AND parent = ? ORDER BY name"
    DELETE = f"DELETE FROM {TABLE} WHERE file_id = ?"

    def __init__(self, path: Path, namespace: str, synchronous: str) -> None:
        self.namespace = namespace
        self.synchronous = synchronous
        self.label = f"raw sqlite3 {synchronous}"
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute(f"PRAGMA synchronous={synchronous}")
        self.conn.execute("PRAGMA busy_timeout=30000")
        self.conn.execute(
            f"""CREATE TABLE IF NOT EXISTS {TABLE} (
                file_id BLOB PRIMARY KEY,
                namespace VARCHAR(255) NOT NULL,
                parent BLOB NOT NULL,
                name VARCHAR(1024) NOT NULL,
                content BLOB NOT NULL,
                size BIGINT NOT NULL,
                chunk_count INTEGER NOT NULL DEFAULT 0,
                created_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
                updated_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP)"""
        )
        self.conn.execute(
            f"CREATE INDEX IF NOT EXISTS ix_{TABLE}_npn ON {TABLE} (namespace, parent, name)"
        )

    def _row(self, path: str, contents: str) -> tuple[Any, ...]:
        data = contents.encode()
        parent, name = split(path)
        return (key(self.namespace, path), self.namespace, parent, name, data, len(data))

    def write_new(self, path: str, contents: str) -> None:
        """``INSERT`` a new file."""
        self.conn.execute(self.INSERT, self._row(path, contents))

    def write(self, path: str, contents: str) -> None:
        """Insert or overwrite a file."""
        self.conn.execute(self.UPSERT, self._row(path, contents))

    def read_bytes(self, path: str) -> bytes:
        """The content by key."""
        row = self.conn.execute(self.READ, (key(self.namespace, path),)).fetchone()
        if row is None:
            raise FileNotFoundError(path)
        return bytes(row[0])

    def read(self, path: str) -> str:
        """The content by key, decoded."""
        return self.read_bytes(path).decode()

    def exists(self, path: str) -> bool:
        """Whether the key exists."""
        row = self.conn.execute(self.EXISTS, (key(self.namespace, path),)).fetchone()
        return bool(row and row[0])

    def list(self, path: str) -> list[str]:
        """The range scan over one directory's direct files."""
        parent = path.encode().replace(b"/", b"\x00")
        rows = self.conn.execute(self.LIST, (self.namespace, parent)).fetchall()
        return [f"{path}/{name}" for (name,) in rows]

    def delete(self, path: str) -> None:
        """``DELETE`` by key."""
        self.conn.execute(self.DELETE, (key(self.namespace, path),))

    @contextmanager
    def lock(self, path: str) -> Iterator[None]:
        """SQLite's only lock: the database's write lock."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def bulk_write(self, items: Iterable[tuple[str, str]]) -> None:
        """Load files fast (untimed setup): one transaction, ``executemany``."""
        rows = [self._row(path, contents) for path, contents in items]
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.executemany(self.UPSERT, rows)
        self.conn.execute("COMMIT")

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


class RawMySQL:
    """PyMySQL in autocommit mode (PyMySQL has no server-side prepared statements)."""

    label = "raw PyMySQL"

    INSERT = (
        f"INSERT INTO {TABLE} (file_id, namespace, parent, name, content, size)"
        " VALUES (%s, %s, %s, %s, %s, %s)"
    )
    UPSERT = (
        INSERT + " ON DUPLICATE KEY UPDATE content = VALUES(content),"
        " size = VALUES(size), updated_at = NOW()"
    )
    READ = f"SELECT content FROM {TABLE} WHERE file_id = %s"
    EXISTS = f"SELECT EXISTS (SELECT 1 FROM {TABLE} WHERE file_id = %s)"
    LIST = f"SELECT name FROM {TABLE} WHERE namespace = %s AND parent = %s ORDER BY name"
    DELETE = f"DELETE FROM {TABLE} WHERE file_id = %s"

    def __init__(self, args: dict[str, Any], namespace: str) -> None:
        self.namespace = namespace
        self._ns = namespace.encode()
        self.conn = pymysql.connect(**args, autocommit=True)
        self.cur = self.conn.cursor()

    @staticmethod
    def create_table(args: dict[str, Any]) -> None:
        """(Re)create the baseline table."""
        conn = pymysql.connect(**args, autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP TABLE IF EXISTS {TABLE}")
                cur.execute(
                    f"""CREATE TABLE {TABLE} (
                        file_id BINARY(16) NOT NULL PRIMARY KEY,
                        namespace VARBINARY(1020) NOT NULL,
                        parent VARBINARY(4096) NOT NULL,
                        name VARBINARY(4096) NOT NULL,
                        content LONGBLOB NOT NULL,
                        size BIGINT NOT NULL,
                        chunk_count INTEGER NOT NULL DEFAULT 0,
                        created_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
                        updated_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
                        INDEX ix_{TABLE}_npn (namespace, parent(1024), name(1024))
                    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"""
                )
        finally:
            conn.close()

    @staticmethod
    def drop_table(args: dict[str, Any]) -> None:
        """Drop the baseline table."""
        conn = pymysql.connect(**args, autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute(f"DROP TABLE IF EXISTS {TABLE}")
        finally:
            conn.close()

    def _row(self, path: str, contents: str) -> tuple[Any, ...]:
        data = contents.encode()
        parent, name = split(path)
        return (key(self.namespace, path), self._ns, parent, name.encode(), data, len(data))

    def write_new(self, path: str, contents: str) -> None:
        """``INSERT`` a new file."""
        self.cur.execute(self.INSERT, self._row(path, contents))

    def write(self, path: str, contents: str) -> None:
        """Insert or overwrite a file."""
        self.cur.execute(self.UPSERT, self._row(path, contents))

    def read_bytes(self, path: str) -> bytes:
        """The content by key."""
        self.cur.execute(self.READ, (key(self.namespace, path),))
        row = self.cur.fetchone()
        if row is None:
            raise FileNotFoundError(path)
        return bytes(row[0])

    def read(self, path: str) -> str:
        """The content by key, decoded."""
        return self.read_bytes(path).decode()

    def exists(self, path: str) -> bool:
        """Whether the key exists."""
        self.cur.execute(self.EXISTS, (key(self.namespace, path),))
        row = self.cur.fetchone()
        return bool(row and row[0])

    def list(self, path: str) -> list[str]:
        """The range scan over one directory's direct files."""
        parent = path.encode().replace(b"/", b"\x00")
        self.cur.execute(self.LIST, (self._ns, parent))
        return [f"{path}/{bytes(name).decode()}" for (name,) in self.cur.fetchall()]

    def delete(self, path: str) -> None:
        """``DELETE`` by key."""
        self.cur.execute(self.DELETE, (key(self.namespace, path),))

    @contextmanager
    def lock(self, path: str) -> Iterator[None]:
        """A named lock (``GET_LOCK``), released after the block."""
        name = "bench/" + key(self.namespace, path).hex()
        self.cur.execute("SELECT GET_LOCK(%s, 30)", (name,))
        self.cur.fetchone()
        try:
            yield
        finally:
            self.cur.execute("SELECT RELEASE_LOCK(%s)", (name,))
            self.cur.fetchone()

    def bulk_write(self, items: Iterable[tuple[str, str]]) -> None:
        """Load files fast (untimed setup): one transaction, ``executemany``."""
        rows = [self._row(path, contents) for path, contents in items]
        self.conn.begin()
        self.cur.executemany(self.UPSERT, rows)
        self.conn.commit()

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()
