"""The contenders of the per-call workloads, behind one small interface.

A subject is a store (sqlstore, ``LocalFileStore``, ``InMemoryFileStore``) or a raw
baseline (:mod:`bench.baselines`). Each lives in a namespace, directory or instance of
its own, and says which calls it supports: the SDK's stores have no ``read_bytes``,
and the cold ``LocalFileStore`` is only timed on reads (its cache is the difference).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openhands.sdk.io import InMemoryFileStore, LocalFileStore
from sqlalchemy import Engine

import sqlstore
from bench.baselines import RawMySQL, RawPostgres, RawSQLite
from bench.databases import Databases, psycopg_conninfo, pymysql_args

ALL_OPS = frozenset(
    {"write_new", "write", "read", "read_bytes", "exists", "list", "delete", "lock"}
)
#: Files written per sqlstore lock block during untimed bulk loading.
BULK_CHUNK = 1000

#: Every variant key, in table order, with its column title (``{db}`` is the MySQL label).
COLUMNS: dict[str, str] = {
    "pg:raw": "PG raw psycopg",
    "pg:sqlstore": "PG sqlstore",
    "sqlite:raw-normal": "SQLite raw NORMAL",
    "sqlite:raw-full": "SQLite raw FULL",
    "sqlite:sqlstore-normal": "SQLite sqlstore NORMAL",
    "sqlite:sqlstore-full": "SQLite sqlstore FULL",
    "mysql:raw": "{db} raw PyMySQL",
    "mysql:sqlstore": "{db} sqlstore",
    "local:warm": "Local",
    "local:cold": "Local cold",
    "memory": "InMemory",
}


@dataclass
class Subject:
    """One contender: the calls a workload times, bound to one store or connection."""

    key: str
    write_new: Callable[[str, str], object]
    write: Callable[[str, str], object]
    read: Callable[[str], str]
    read_bytes: Callable[[str], bytes] | None
    exists: Callable[[str], bool]
    list_dir: Callable[[str], list[str]]
    delete: Callable[[str], object]
    lock: Callable[[str], AbstractContextManager[Any]]
    bulk_write: Callable[[list[tuple[str, str]]], None]
    supports: frozenset[str] = ALL_OPS
    before_each: Callable[[int], None] | None = None
    close: Callable[[], None] = field(default=lambda: None)


def sqlstore_bulk(store: sqlstore.SQLFileStore) -> Callable[[list[tuple[str, str]]], None]:
    """Untimed loading through the public API: writes grouped in lock blocks.

    A lock block is one transaction, so a thousand writes share one commit.
    """

    def load(items: list[tuple[str, str]]) -> None:
        for start in range(0, len(items), BULK_CHUNK):
            with store.lock("bench/.bulk"):
                for path, contents in items[start : start + BULK_CHUNK]:
                    store.write(path, contents)

    return load


def local_bulk(root: Path) -> Callable[[list[tuple[str, str]]], None]:
    """Untimed loading of a ``LocalFileStore`` tree: plain file writes in its layout."""

    def load(items: list[tuple[str, str]]) -> None:
        made: set[Path] = set()
        for path, contents in items:
            full = root / path
            if full.parent not in made:
                full.parent.mkdir(parents=True, exist_ok=True)
                made.add(full.parent)
            full.write_text(contents, encoding="utf-8")

    return load


def from_sqlstore(key: str, store: sqlstore.SQLFileStore) -> Subject:
    """A sqlstore as a subject (a new file and an overwrite are the same call)."""
    return Subject(
        key=key,
        write_new=store.write,
        write=store.write,
        read=store.read,
        read_bytes=store.read_bytes,
        exists=store.exists,
        list_dir=store.list,
        delete=store.delete,
        lock=store.lock,
        bulk_write=sqlstore_bulk(store),
    )


def from_local(key: str, root: Path, *, cold: bool) -> Subject:
    """A ``LocalFileStore``; cold: its read cache is cleared before every timed call."""
    store = LocalFileStore(str(root))
    return Subject(
        key=key,
        write_new=store.write,
        write=store.write,
        read=store.read,
        read_bytes=None,
        exists=store.exists,
        list_dir=store.list,
        delete=store.delete,
        lock=store.lock,
        bulk_write=local_bulk(root),
        supports=frozenset({"read"}) if cold else ALL_OPS - {"read_bytes"},
        before_each=(lambda _i: store.cache.clear()) if cold else None,
    )


def from_memory(key: str) -> Subject:
    """An ``InMemoryFileStore``, with room for every file the workloads load.

    Its default 20 MB LRU would silently evict the files being read.
    """
    store = InMemoryFileStore(max_size=1_000_000, max_memory=1 << 30)

    def load(items: list[tuple[str, str]]) -> None:
        for path, contents in items:
            store.write(path, contents)

    return Subject(
        key=key,
        write_new=store.write,
        write=store.write,
        read=store.read,
        read_bytes=None,
        exists=store.exists,
        list_dir=store.list,
        delete=store.delete,
        lock=store.lock,
        bulk_write=load,
        supports=ALL_OPS - {"read_bytes"},
    )


def from_raw(key: str, raw: RawPostgres | RawSQLite | RawMySQL) -> Subject:
    """A raw-driver baseline as a subject."""
    return Subject(
        key=key,
        write_new=raw.write_new,
        write=raw.write,
        read=raw.read,
        read_bytes=raw.read_bytes,
        exists=raw.exists,
        list_dir=raw.list,
        delete=raw.delete,
        lock=raw.lock,
        bulk_write=raw.bulk_write,
        close=raw.close,
    )


@dataclass
class SqlstoreEngines:
    """The sqlstore engines of a run, one per variant (kept to clean up after)."""

    engines: dict[str, Engine] = field(default_factory=dict)

    def get(self, variant: str, url: str, **options: Any) -> Engine:
        """The engine for ``variant``, created on first use."""
        engine = self.engines.get(variant)
        if engine is None:
            engine = self.engines[variant] = sqlstore.create_engine(url, **options)
        return engine

    def dispose(self) -> None:
        """Close every pooled connection."""
        for engine in self.engines.values():
            engine.dispose()


def sqlstore_variants(dbs: Databases) -> dict[str, tuple[str, dict[str, Any]]]:
    """Variant key to (URL, engine options) for every sqlstore variant that runs."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    if (pg := dbs.get("postgresql")) is not None:
        out["pg:sqlstore"] = (pg.url, {})
    if (lite := dbs.get("sqlite")) is not None:
        assert lite.normal_url is not None
        out["sqlite:sqlstore-normal"] = (lite.normal_url, {"sqlite_synchronous": "NORMAL"})
        out["sqlite:sqlstore-full"] = (lite.url, {})
    if (my := dbs.get("mysql")) is not None:
        out["mysql:sqlstore"] = (my.url, {})
    return out


def build(
    dbs: Databases, engines: SqlstoreEngines, namespace: str, tmp: Path
) -> dict[str, Subject]:
    """Every per-call subject that runs, in column order."""
    subjects: dict[str, Subject] = {}
    stores = sqlstore_variants(dbs)
    if (pg := dbs.get("postgresql")) is not None:
        subjects["pg:raw"] = from_raw("pg:raw", RawPostgres(psycopg_conninfo(pg.url), namespace))
    if dbs.get("sqlite") is not None:
        for sync in ("NORMAL", "FULL"):
            k = f"sqlite:raw-{sync.lower()}"
            raw = RawSQLite(tmp / f"raw-{sync.lower()}.db", namespace, sync)
            subjects[k] = from_raw(k, raw)
    if (my := dbs.get("mysql")) is not None:
        subjects["mysql:raw"] = from_raw("mysql:raw", RawMySQL(pymysql_args(my.url), namespace))
    for k, (url, options) in stores.items():
        engine = engines.get(k, url, **options)
        subjects[k] = from_sqlstore(k, sqlstore.SQLFileStore(engine, namespace))
    subjects["local:warm"] = from_local("local:warm", tmp / "local-warm", cold=False)
    subjects["local:cold"] = from_local("local:cold", tmp / "local-cold", cold=True)
    subjects["memory"] = from_memory("memory")
    return {k: subjects[k] for k in COLUMNS if k in subjects}


def create_raw_tables(dbs: Databases) -> None:
    """(Re)create the raw baselines' tables on the server backends."""
    if (pg := dbs.get("postgresql")) is not None:
        RawPostgres.create_table(psycopg_conninfo(pg.url))
    if (my := dbs.get("mysql")) is not None:
        RawMySQL.create_table(pymysql_args(my.url))


def drop_raw_tables(dbs: Databases) -> None:
    """Drop the raw baselines' tables on the server backends."""
    if (pg := dbs.get("postgresql")) is not None:
        RawPostgres.drop_table(psycopg_conninfo(pg.url))
    if (my := dbs.get("mysql")) is not None:
        RawMySQL.drop_table(pymysql_args(my.url))


def load_all(subjects: Iterable[Subject], work: Callable[[Subject], None]) -> None:
    """Run untimed setup ``work`` for every subject, one thread each."""
    from concurrent.futures import ThreadPoolExecutor

    items = list(subjects)
    with ThreadPoolExecutor(max_workers=max(1, len(items))) as pool:
        for future in [pool.submit(work, s) for s in items]:
            future.result()
