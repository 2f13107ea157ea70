"""The databases a run uses: found, created if missing, migrated, versioned."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pymysql
from sqlalchemy.engine import URL, make_url

import sqlstore

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/sqlstore_bench"
DEFAULT_MYSQL_URL = "mysql+pymysql://root@127.0.0.1:3306/sqlstore_bench"
BACKENDS = ("postgresql", "sqlite", "mysql")


@dataclass
class Backend:
    """One database sqlstore is measured on.

    Attributes:
        name: ``postgresql``, ``sqlite`` or ``mysql``.
        label: How tables name it (``PostgreSQL``, ``SQLite``, ``MariaDB``).
        url: The sqlstore URL. For SQLite, the ``synchronous=FULL`` database.
        version: The server (or library) version.
        normal_url: SQLite only: a second database used with ``synchronous=NORMAL``.
    """

    name: str
    label: str
    url: str
    version: str
    normal_url: str | None = None


@dataclass
class Databases:
    """Every backend of the run that answered, and why the others are missing."""

    backends: dict[str, Backend] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> Backend | None:
        """The backend called ``name``, if it runs."""
        return self.backends.get(name)


def psycopg_conninfo(url: str | URL) -> str:
    """A libpq URI for a SQLAlchemy PostgreSQL URL."""
    u = make_url(url).set(drivername="postgresql")
    return u.render_as_string(hide_password=False)


def pymysql_args(url: str | URL) -> dict[str, object]:
    """``pymysql.connect`` keyword arguments for a SQLAlchemy MySQL URL."""
    u = make_url(url)
    return {
        "host": u.host or "127.0.0.1",
        "port": u.port or 3306,
        "user": u.username or "root",
        "password": u.password or "",
        "database": u.database,
    }


def prepare_postgresql(url: str) -> Backend:
    """Create the database if missing, migrate it, and read the server version."""
    u = make_url(url)
    admin = psycopg_conninfo(u.set(database="postgres"))
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        found = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (u.database,)
        ).fetchone()
        if found is None:
            conn.execute(f'CREATE DATABASE "{u.database}"')
    sqlstore.migrate(url)
    with psycopg.connect(psycopg_conninfo(u), autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    version = f"PostgreSQL {row[0] if row else '?'}"
    return Backend("postgresql", "PostgreSQL", url, version)


def prepare_mysql(url: str) -> Backend:
    """Create the database if missing, migrate it, and read the server version."""
    args = pymysql_args(url)
    database = args.pop("database")
    conn = pymysql.connect(**args, connect_timeout=5, autocommit=True)
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{database}`")
            cur.execute("SELECT VERSION()")
            row = cur.fetchone()
    finally:
        conn.close()
    sqlstore.migrate(url)
    raw = str(row[0]) if row else "?"
    label = "MariaDB" if "mariadb" in raw.lower() else "MySQL"
    return Backend("mysql", label, url, f"{label} {raw}")


def prepare_sqlite(directory: Path) -> Backend:
    """Two migrated SQLite files in ``directory`` (sqlstore's FULL and NORMAL)."""
    full = f"sqlite:///{directory / 'sqlstore-full.db'}"
    normal = f"sqlite:///{directory / 'sqlstore-normal.db'}"
    sqlstore.migrate(full)
    sqlstore.migrate(normal)
    return Backend("sqlite", "SQLite", full, f"SQLite {sqlite3.sqlite_version}", normal)


def prepare(wanted: list[str], pg_url: str, mysql_url: str, sqlite_dir: Path) -> Databases:
    """Prepare every wanted backend; one that does not answer is skipped, with the reason."""
    dbs = Databases()
    for name in wanted:
        try:
            if name == "postgresql":
                backend = prepare_postgresql(pg_url)
            elif name == "mysql":
                backend = prepare_mysql(mysql_url)
            elif name == "sqlite":
                backend = prepare_sqlite(sqlite_dir)
            else:
                raise ValueError(f"unknown backend {name!r}")
        except Exception as exc:  # a backend that does not run is reported, not fatal
            dbs.skipped[name] = f"{type(exc).__name__}: {exc}".splitlines()[0]
            continue
        dbs.backends[name] = backend
    return dbs
