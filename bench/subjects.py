"""What is measured: sqlstore on each database, the raw drivers, the SDK's own stores.

``SUBJECTS`` lists them in table order. Adding one is a line there: a sqlstore on
another URL or with other engine options (``database=`` puts it in a database of its
own on the same server, ``setup=`` runs on that database after migrating it).

The raw drivers are the floors: one statement (one round trip) per call, on a table
shaped like ``sqlstore_files`` (16-byte hash key, namespace, encoded parent, name,
content, size, timestamps, an index on ``(namespace, parent, name)``):

* write new: ``INSERT``; overwrite: ``INSERT ... ON CONFLICT / ON DUPLICATE KEY UPDATE``;
* read: ``SELECT content`` by key; exists: ``SELECT EXISTS`` by key;
* list: the range scan ``WHERE namespace = ? AND parent = ? ORDER BY name``;
* delete: ``DELETE`` by key;
* lock and unlock: ``BEGIN; SELECT pg_advisory_xact_lock(k); COMMIT`` (PostgreSQL),
  ``BEGIN IMMEDIATE; COMMIT`` (SQLite), ``GET_LOCK; RELEASE_LOCK`` (MariaDB).

psycopg runs in autocommit mode with server-side prepared statements, ``sqlite3`` in
WAL mode, PyMySQL in autocommit mode (it has no server-side prepare).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pymysql
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

import sqlstore
from bench.harness import Plan, Results, log

RAW_TABLE = "bench_raw_files"


@dataclass(frozen=True)
class Subject:
    """One contender: a store, or a raw driver (a floor).

    Attributes:
        key: Its id in the result files.
        title: Its name in tables, in plain words.
        kind: ``sqlstore``, ``raw``, ``local``, ``local-cold`` or ``memory``.
        backend: The database it needs (``postgresql``, ``sqlite``, ``mysql``), if any.
        floor: A sqlstore's raw subject, which its ratios divide by.
        options: Engine options (sqlstore), or the ``synchronous`` pragma (raw SQLite).
        vs_local: Whether a sqlstore's ratio to ``LocalFileStore`` is shown.
        every_row: False: measured on the per-call rows and one-writer appends only.
        database: A database of its own on the backend's server, instead of the URL's.
        setup: Called with the subject's URL once its database is migrated.
        url: Filled in when the run prepares the subject.
    """

    key: str
    title: str
    kind: str
    backend: str | None = None
    floor: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    vs_local: bool = True
    every_row: bool = True
    database: str | None = None
    setup: Callable[[str], None] | None = None
    url: str = ""

    @property
    def ops(self) -> frozenset[str]:
        """The per-call operations it takes part in."""
        if self.kind == "local-cold":  # its cache is the difference, so only reads
            return frozenset({"read"})
        everything = frozenset({"write", "read", "read_bytes", "exists", "list", "delete", "lock"})
        return everything - {"read_bytes"} if self.kind in ("local", "memory") else everything


def partition_8(url: str) -> None:
    """Lay out a subject's tables as 8 hash partitions by namespace.

    A module-level function: subjects travel to the benchmark's child processes.
    """
    sqlstore.migrate(url, partitions=8)


# fmt: off
SUBJECTS = (
    Subject("pg-raw", "PostgreSQL raw psycopg", "raw", "postgresql"),
    Subject("pg", "PostgreSQL sqlstore", "sqlstore", "postgresql", "pg-raw"),
    Subject("pg-part", "PostgreSQL sqlstore, 8 partitions", "sqlstore", "postgresql", "pg-raw",
            database="sqlstore_bench_part", setup=partition_8),
    Subject("sqlite-normal-raw", "SQLite NORMAL raw sqlite3", "raw", "sqlite", None,
            {"synchronous": "NORMAL"}, every_row=False),
    Subject("sqlite-raw", "SQLite FULL raw sqlite3", "raw", "sqlite", None,
            {"synchronous": "FULL"}),
    Subject("sqlite-normal", "SQLite NORMAL sqlstore", "sqlstore", "sqlite", "sqlite-normal-raw",
            {"sqlite_synchronous": "NORMAL"}, vs_local=False, every_row=False),
    Subject("sqlite", "SQLite FULL sqlstore", "sqlstore", "sqlite", "sqlite-raw"),
    Subject("mysql-raw", "MariaDB raw PyMySQL", "raw", "mysql"),
    Subject("mysql", "MariaDB sqlstore", "sqlstore", "mysql", "mysql-raw"),
    Subject("local", "SDK LocalFileStore", "local"),
    Subject("local-cold", "SDK LocalFileStore, cache cleared", "local-cold"),
    Subject("memory", "SDK InMemoryFileStore", "memory"),
)
# fmt: on


# -- the raw floors -------------------------------------------------------------------


def raw_key(namespace: str, path: str) -> bytes:
    """A 16-byte BLAKE2b key of (namespace, path), as sqlstore's primary key is."""
    digest = hashlib.blake2b(digest_size=16, person=b"bench-raw-file")
    digest.update(namespace.encode() + b"\x00" + path.encode())
    return digest.digest()


def _parent(directory: str) -> bytes:
    return directory.encode().replace(b"/", b"\x00")  # as sqlstore encodes a parent


class RawFiles:
    """The plainest SQL for each call, on one connection; a subclass per driver."""

    mark = "%s"
    now = "CURRENT_TIMESTAMP"
    upsert = "ON CONFLICT (file_id) DO UPDATE SET content = excluded.content, size = excluded.size"
    binary_text = False  # MariaDB keeps namespaces and names in VARBINARY, as sqlstore does
    #: Column types of the table: key, namespace, parent, name, content, timestamps.
    types: tuple[str, ...] = ("BLOB", "VARCHAR(255)", "BLOB", "VARCHAR(1024)", "BLOB", "DATETIME")
    index_prefix = ""

    def __init__(self, subject: Subject, namespace: str) -> None:
        self.namespace = namespace
        self.conn = self._connect(subject)
        self.cur = self.conn.cursor()
        m, table = self.mark, RAW_TABLE
        cols = "file_id, namespace, parent, name, content, size"
        self.insert = f"INSERT INTO {table} ({cols}) VALUES ({', '.join([m] * 6)})"
        self.overwrite = f"{self.insert} {self.upsert}, updated_at = {self.now}"
        self.select = f"SELECT content FROM {table} WHERE file_id = {m}"
        self.exists_sql = f"SELECT EXISTS (SELECT 1 FROM {table} WHERE file_id = {m})"
        self.scan = f"SELECT name FROM {table} WHERE namespace = {m} AND parent = {m} ORDER BY name"
        self.remove = f"DELETE FROM {table} WHERE file_id = {m}"

    def _connect(self, subject: Subject) -> Any:
        raise NotImplementedError

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        if params:
            self.cur.execute(sql, params)
        else:
            self.cur.execute(sql)
        return self.cur

    def create(self) -> None:
        """(Re)create the table, shaped like ``sqlstore_files``."""
        key, ns, parent, name, content, time = self.types
        self._run(f"DROP TABLE IF EXISTS {RAW_TABLE}")
        self._run(
            f"CREATE TABLE {RAW_TABLE} (file_id {key} NOT NULL PRIMARY KEY,"
            f" namespace {ns} NOT NULL, parent {parent} NOT NULL, name {name} NOT NULL,"
            f" content {content} NOT NULL, size BIGINT NOT NULL,"
            " chunk_count INTEGER NOT NULL DEFAULT 0,"
            f" created_at {time} NOT NULL DEFAULT CURRENT_TIMESTAMP,"
            f" updated_at {time} NOT NULL DEFAULT CURRENT_TIMESTAMP)"
        )
        p = self.index_prefix
        self._run(f"CREATE INDEX ix_{RAW_TABLE} ON {RAW_TABLE} (namespace, parent{p}, name{p})")

    def _text(self, value: str) -> str | bytes:
        return value.encode() if self.binary_text else value

    def _row(self, path: str, contents: str) -> tuple[Any, ...]:
        data, (parent, _, name) = contents.encode(), path.rpartition("/")
        ns, key = self._text(self.namespace), raw_key(self.namespace, path)
        return (key, ns, _parent(parent), self._text(name), data, len(data))

    def write_new(self, path: str, contents: str) -> None:
        """``INSERT``."""
        self._run(self.insert, self._row(path, contents))

    def write(self, path: str, contents: str) -> None:
        """Insert or overwrite."""
        self._run(self.overwrite, self._row(path, contents))

    def read_bytes(self, path: str) -> bytes:
        """``SELECT content`` by key."""
        row = self._run(self.select, (raw_key(self.namespace, path),)).fetchone()
        if row is None:
            raise FileNotFoundError(path)
        return bytes(row[0])

    def read(self, path: str) -> str:
        """``SELECT content`` by key, decoded."""
        return self.read_bytes(path).decode()

    def exists(self, path: str) -> bool:
        """``SELECT EXISTS`` by key."""
        return bool(self._run(self.exists_sql, (raw_key(self.namespace, path),)).fetchone()[0])

    def list(self, path: str) -> list[str]:
        """The range scan over one directory's files."""
        rows = self._run(self.scan, (self._text(self.namespace), _parent(path))).fetchall()
        return [f"{path}/{n.decode() if isinstance(n, bytes) else n}" for (n,) in rows]

    def delete(self, path: str) -> None:
        """``DELETE`` by key."""
        self._run(self.remove, (raw_key(self.namespace, path),))

    @contextmanager
    def lock(self, path: str) -> Iterator[None]:
        """A transaction holding an advisory lock on ``path``."""
        lock_id = int.from_bytes(raw_key(self.namespace, path)[:8], "big", signed=True)
        self._run("BEGIN")
        self._run("SELECT pg_advisory_xact_lock(%s)", (lock_id,))
        try:
            yield
        finally:
            self._run("COMMIT")

    def load(self, items: list[tuple[str, str]]) -> None:
        """Untimed set-up: write many files in one transaction."""
        self._run("BEGIN")
        self.cur.executemany(self.overwrite, [self._row(p, c) for p, c in items])
        self._run("COMMIT")

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


class RawPostgres(RawFiles):
    """psycopg 3, autocommit, server-side prepared statements (one round trip a call)."""

    name = 'varchar(1024) COLLATE "C"'
    types = ("bytea", 'varchar(255) COLLATE "C"', "bytea", name, "bytea", "timestamptz")

    def _connect(self, subject: Subject) -> Any:
        return psycopg.connect(_conninfo(subject.url), autocommit=True)

    def _run(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self.cur.execute(sql, params or None, prepare=bool(params))

    def create(self) -> None:
        """(Re)create the table, with lz4 TOAST compression as sqlstore has it."""
        super().create()
        lz4 = "SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression'"
        if self._run(f"{lz4} AND 'lz4' = ANY(enumvals)").fetchone():
            self._run(f"ALTER TABLE {RAW_TABLE} ALTER COLUMN content SET COMPRESSION lz4")


class RawSQLite(RawFiles):
    """The standard library's ``sqlite3``, WAL, autocommit, its statement cache."""

    mark = "?"

    def _connect(self, subject: Subject) -> Any:
        conn = sqlite3.connect(subject.url, isolation_level=None, check_same_thread=False)
        sync = subject.options["synchronous"]
        for pragma in ("journal_mode=WAL", f"synchronous={sync}", "busy_timeout=30000"):
            conn.execute(f"PRAGMA {pragma}")
        return conn

    @contextmanager
    def lock(self, path: str) -> Iterator[None]:
        """SQLite's one lock: the database's write lock."""
        self._run("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            self._run("COMMIT")


class RawMySQL(RawFiles):
    """PyMySQL, autocommit."""

    now = "NOW()"
    upsert = "ON DUPLICATE KEY UPDATE content = VALUES(content), size = VALUES(size)"
    binary_text = True
    types = ("BINARY(16)", "VARBINARY(1020)", "VARBINARY(4096)", "VARBINARY(4096)", "LONGBLOB",
             "DATETIME")  # fmt: skip
    index_prefix = "(1024)"

    def _connect(self, subject: Subject) -> Any:
        return pymysql.connect(**_pymysql_args(subject.url), autocommit=True)

    @contextmanager
    def lock(self, path: str) -> Iterator[None]:
        """A named lock, released after the block."""
        name = "bench/" + raw_key(self.namespace, path).hex()
        self._run("SELECT GET_LOCK(%s, 30)", (name,))
        try:
            yield
        finally:
            self._run("SELECT RELEASE_LOCK(%s)", (name,))


RAW = {"postgresql": RawPostgres, "sqlite": RawSQLite, "mysql": RawMySQL}


def _conninfo(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _pymysql_args(url: str, database: bool = True) -> dict[str, Any]:
    u = make_url(url)
    args = {
        "host": u.host or "127.0.0.1",
        "port": u.port or 3306,
        "user": u.username or "root",
        "password": u.password or "",
    }
    return {**args, "database": u.database} if database else args


# -- the SDK's stores and sqlstore, behind the raw floors' calls ----------------------


class Files:
    """A store behind the raw floors' calls: ``write_new``, and ``load`` for set-up."""

    def __init__(self, store: Any, cold: bool = False) -> None:
        self.store, self.write_new = store, store.write
        if cold:  # before each timed read, clear the cache of a LocalFileStore
            self.before_read = lambda _i: store.cache.clear()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def load(self, items: list[tuple[str, str]]) -> None:
        """Write files for set-up: a thousand per lock block (one commit) on sqlstore."""
        if isinstance(self.store, sqlstore.SQLFileStore):
            for start in range(0, len(items), 1000):
                with self.store.lock("bench/.load"):
                    for path, contents in items[start : start + 1000]:
                        self.store.write(path, contents)
            return
        from openhands.sdk.io import LocalFileStore

        for path, contents in items:
            if isinstance(self.store, LocalFileStore):
                (Path(self.store.root) / path).parent.mkdir(parents=True, exist_ok=True)
                (Path(self.store.root) / path).write_text(contents, encoding="utf-8")
            else:
                self.store.write(path, contents)

    def close(self) -> None:
        """Nothing to close: engines belong to the run."""


def open_store(subject: Subject, where: str) -> Any:
    """A new store of ``subject`` on a fresh engine (as a child process opens one).

    ``where`` is its namespace, or the directory of a ``LocalFileStore``.
    """
    if subject.kind in ("local", "local-cold"):
        from openhands.sdk.io import LocalFileStore

        return LocalFileStore(where)
    return sqlstore.SQLFileStore.from_url(subject.url, where, **subject.options)


# -- a run: its subjects, databases, engines and namespaces ---------------------------


@dataclass
class Run:
    """What every workload needs: the plan, the subjects that run, where to put things."""

    plan: Plan
    subjects: dict[str, Subject]
    tmp: Path
    run_id: str
    only: re.Pattern[str] | None = None
    results: Results = field(default_factory=Results)
    engines: dict[str, Engine] = field(default_factory=dict)
    namespaces: set[str] = field(default_factory=set)

    def wants(self, *rows: str) -> bool:
        """Whether ``--only`` selects any of these rows."""
        return self.only is None or any(self.only.search(r) for r in rows)

    def keys(self, *kinds: str, every_row: bool = False) -> list[str]:
        """Subjects of these kinds that run, in table order."""
        return [
            k
            for k, s in self.subjects.items()
            if s.kind in kinds and (s.every_row or not every_row)
        ]

    def where(self, key: str, name: str) -> str:
        """A namespace (or directory) of the run for ``key``'s store called ``name``."""
        if self.subjects[key].kind in ("local", "local-cold"):
            return str(self.tmp / key / name)
        self.namespaces.add(f"{self.run_id}-{name}")
        return f"{self.run_id}-{name}"

    def store(self, key: str, name: str) -> Any:
        """A store of ``key`` in namespace (directory) ``name``, on the run's engine."""
        subject = self.subjects[key]
        if subject.kind == "memory":  # with room for everything: its default LRU evicts
            from openhands.sdk.io import InMemoryFileStore

            return InMemoryFileStore(max_size=1_000_000, max_memory=1 << 30)
        if subject.kind != "sqlstore":
            return open_store(subject, self.where(key, name))
        if key not in self.engines:
            self.engines[key] = sqlstore.create_engine(subject.url, **subject.options)
        return sqlstore.SQLFileStore(self.engines[key], self.where(key, name))

    def files(self, key: str, name: str) -> Any:
        """``key`` behind the per-call interface, in namespace (directory) ``name``."""
        subject = self.subjects[key]
        if subject.kind == "raw":
            return RAW[subject.backend or ""](subject, self.where(key, name))
        return Files(self.store(key, name), cold=subject.kind == "local-cold")

    def cleanup(self) -> None:
        """Delete the run's namespaces and raw tables on the servers; close engines."""
        for key, subject in self.subjects.items():
            try:
                if subject.kind == "sqlstore" and subject.backend != "sqlite":
                    store = self.store(key, "cleanup")
                    with store.lock("bench/.cleanup"):
                        for name in self.namespaces:
                            store.with_namespace(name).delete("")
                elif subject.kind == "raw" and subject.backend != "sqlite":
                    raw = RAW[subject.backend or ""](subject, "")
                    raw._run(f"DROP TABLE IF EXISTS {RAW_TABLE}")
                    raw.close()
            except Exception as exc:  # the results stand; say what is left behind
                log(f"cleanup of {key} failed: {exc}")
        for engine in self.engines.values():
            engine.dispose()


def prepare(
    backends: list[str], urls: dict[str, str], tmp: Path
) -> tuple[dict[str, Subject], dict[str, str]]:
    """The subjects that can run, in databases created, migrated and set up for them.

    Returns:
        The subjects, URLs filled in; and each backend's version, or why it was skipped.
    """
    versions: dict[str, str] = {}
    for backend in backends:
        try:
            versions[backend] = _server_version(backend, urls[backend])
        except Exception as exc:  # a database that does not answer is reported, not fatal
            versions[backend] = f"skipped: {type(exc).__name__}: {exc}".splitlines()[0]
    subjects: dict[str, Subject] = {}
    for s in SUBJECTS:
        if s.backend is not None and versions.get(s.backend, "skipped").startswith("skipped"):
            continue
        url = urls.get(s.backend or "", "")
        if s.backend == "sqlite":
            url = str(tmp / f"{s.key}.db") if s.kind == "raw" else f"sqlite:///{tmp}/{s.key}.db"
        elif s.database:
            url = make_url(url).set(database=s.database).render_as_string(False)
        try:
            _create_database(s.backend, url)
            if s.kind == "sqlstore":
                sqlstore.migrate(url)
            elif s.kind == "raw":
                raw = RAW[s.backend or ""](dataclasses.replace(s, url=url), "")
                raw.create()
                raw.close()
            if s.setup is not None:
                s.setup(url)
        except Exception as exc:
            versions[s.key] = f"skipped: {type(exc).__name__}: {exc}".splitlines()[0]
            continue
        mysql = versions.get("mysql", "").startswith("MySQL")
        title = s.title.replace("MariaDB", "MySQL") if mysql else s.title
        subjects[s.key] = dataclasses.replace(s, url=url, title=title)
    return subjects, versions


def _server_version(backend: str, url: str) -> str:
    if backend == "sqlite":
        return f"SQLite {sqlite3.sqlite_version}"
    if backend == "postgresql":
        with psycopg.connect(
            _conninfo(make_url(url).set(database="postgres").render_as_string(False)),
            connect_timeout=5,
        ) as conn:
            return f"PostgreSQL {conn.execute('SHOW server_version').fetchone()[0]}"
    conn = pymysql.connect(**_pymysql_args(url, database=False), connect_timeout=5)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT VERSION()")
        raw = str(cur.fetchone()[0])
    return f"MariaDB {raw}" if "mariadb" in raw.lower() else f"MySQL {raw}"


def _create_database(backend: str | None, url: str) -> None:
    name = make_url(url).database if backend in ("postgresql", "mysql") else None
    if backend == "postgresql":
        admin = _conninfo(make_url(url).set(database="postgres").render_as_string(False))
        with psycopg.connect(admin, autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                conn.execute(f'CREATE DATABASE "{name}"')
    elif backend == "mysql":
        conn = pymysql.connect(**_pymysql_args(url, database=False), autocommit=True)
        with conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{name}`")
