"""The Alembic migrations: one head, upgrade/downgrade, no drift from the Core model,
coexistence with an application's own Alembic, the schema check of stores, the
``alembic`` CLI of a checkout, and migrating from an installed wheel.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL, make_url

import sqlstore
from sqlstore import schema
from sqlstore.migrations import alembic_config, downgrade, migrations_dir

ROOT = Path(__file__).resolve().parent.parent
SQLSTORE_TABLES = {"sqlstore_files", "sqlstore_chunks"}
SCHEMA_HINT = r"sqlstore\.migrate\(url\).*alembic -x url=<url> upgrade head"


# -- helpers -------------------------------------------------------------------------


@contextmanager
def _connect(url: URL | str) -> Iterator[sa.Connection]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def _tables(url: URL) -> set[str]:
    with _connect(url) as conn:
        return set(sa.inspect(conn).get_table_names())


def _versions(url: URL, table: str = schema.VERSION_TABLE) -> list[str]:
    with _connect(url) as conn:
        if not sa.inspect(conn).has_table(table):
            return []
        return list(conn.execute(sa.text(f"SELECT version_num FROM {table}")).scalars())


def _head() -> str:
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert len(heads) == 1, heads
    return heads[0]


def _include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """The same filter as ``include_name`` in migrations/env.py."""
    if type_ == "table":
        return name in schema.TABLE_NAMES
    return True


#: The comparison options migrations/env.py hands to ``context.configure``.
COMPARE_OPTS: dict[str, Any] = {
    "include_name": _include_name,
    "compare_type": True,
    "compare_server_default": False,
}


def _diffs(url: URL, metadata: sa.MetaData = schema.metadata) -> list[Any]:
    with _connect(url) as conn:
        ctx = MigrationContext.configure(conn, opts=COMPARE_OPTS)
        return list(compare_metadata(ctx, metadata))


def _alembic_check(url: URL) -> None:
    """``alembic check`` through migrations/env.py itself: raises on any drift."""
    with _connect(url) as conn:
        config = alembic_config()
        config.attributes["connection"] = conn
        command.check(config)


def _write_read(url: URL, namespace: str = "ns") -> None:
    with sqlstore.SQLFileStore.from_url(url, namespace) as store:
        store.write("dir/a.txt", "hello")
        store.write("dir/b.bin", b"\x00\xff")
    with sqlstore.SQLFileStore.from_url(url, namespace) as store:
        assert store.read("dir/a.txt") == "hello"
        assert store.read_bytes("dir/b.bin") == b"\x00\xff"
        assert store.list("dir") == ["dir/a.txt", "dir/b.bin"]


def _url_arg(url: URL) -> str:
    return url.render_as_string(hide_password=False)


# -- 1. revisions ----------------------------------------------------------------------


def test_single_head_is_schema_revision() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    assert script.get_heads() == [schema.SCHEMA_REVISION]
    # A linear history from base to head.
    revisions = list(script.walk_revisions())
    assert revisions[0].revision == schema.SCHEMA_REVISION
    assert revisions[-1].down_revision is None
    assert all(not isinstance(r.down_revision, tuple | list) for r in revisions)
    # The checkout's alembic.ini points at the same revisions.
    checkout = ScriptDirectory.from_config(Config(str(ROOT / "alembic.ini")))
    assert Path(checkout.dir).resolve() == migrations_dir().resolve()
    assert checkout.get_heads() == [schema.SCHEMA_REVISION]


# -- 2. upgrade from empty -------------------------------------------------------------


def test_migrate_from_empty_and_again(empty_url: URL) -> None:
    assert not (_tables(empty_url) & SQLSTORE_TABLES)
    sqlstore.migrate(empty_url)

    tables = _tables(empty_url)
    assert tables >= {*SQLSTORE_TABLES, schema.VERSION_TABLE}
    assert "alembic_version" not in tables, "sqlstore must not use the default version table"
    assert _versions(empty_url) == [_head()]
    with _connect(empty_url) as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": schema.VERSION_TABLE})
        assert ctx.get_current_revision() == _head()

    # Again, by URL string and by an (autocommit) engine: nothing changes, data stays.
    _write_read(empty_url)
    sqlstore.migrate(_url_arg(empty_url))
    engine = sqlstore.create_engine(empty_url)
    try:
        sqlstore.migrate(engine)
        with engine.connect() as conn:  # the caller's engine stays usable
            assert conn.execute(sa.text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()
    assert _tables(empty_url) == tables
    assert _versions(empty_url) == [_head()]
    with sqlstore.SQLFileStore.from_url(empty_url, "ns") as store:
        assert store.read("dir/a.txt") == "hello"


MIGRATING_PROCESSES = 3


def _migrate_at_once(url: str, ready: Any, results: Any) -> None:
    """One replica starting up: wait until every process is ready, then migrate."""
    try:
        ready.wait(timeout=60)
        sqlstore.migrate(url)
        results.put("ok")
    except BaseException as exc:
        results.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.slow
def test_processes_migrating_a_fresh_database_at_once_all_end_at_head(empty_url: URL) -> None:
    """Replicas start together and each migrates: a database lock serialises them."""
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(MIGRATING_PROCESSES)
    results = context.Queue()
    workers = [
        context.Process(target=_migrate_at_once, args=(_url_arg(empty_url), ready, results))
        for _ in range(MIGRATING_PROCESSES)
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    assert outcomes == ["ok"] * MIGRATING_PROCESSES
    assert _versions(empty_url) == [_head()]
    assert _tables(empty_url) >= {*SQLSTORE_TABLES, schema.VERSION_TABLE}
    assert _diffs(empty_url) == []
    _write_read(empty_url)


# -- 3. no drift between migrations and model ------------------------------------------


def test_no_drift_between_migrations_and_model(empty_url: URL, backend: str) -> None:
    sqlstore.migrate(empty_url)
    assert _diffs(empty_url) == []
    _alembic_check(empty_url)  # env.py's own comparison options agree

    # The comparison is not vacuous: a different length of a BytewiseString column
    # (whose dialect type differs on every backend) is reported.
    changed = sa.MetaData(naming_convention=schema.NAMING_CONVENTION)
    for table in schema.metadata.tables.values():
        table.to_metadata(changed)
    changed.tables["sqlstore_files"].c.namespace.type = schema.BytewiseString(100)
    diffs = _diffs(empty_url, changed)
    assert len(diffs) == 1, diffs
    assert diffs[0][0][0] == "modify_type"
    assert diffs[0][0][3] == "namespace"

    # What compare_type cannot see: PostgreSQL's collation.
    with _connect(empty_url) as conn:
        columns = {c["name"]: c for c in sa.inspect(conn).get_columns("sqlstore_files")}
    for name in ("namespace", "name"):
        type_ = columns[name]["type"]
        if backend == "postgresql":
            assert type_.collation == "C", (name, type_)
        elif backend == "mysql":
            assert type(type_).__name__ == "VARBINARY", (name, type_)


# -- 4. downgrade and upgrade again ----------------------------------------------------


def test_downgrade_to_base_and_upgrade_again(empty_url: URL) -> None:
    sqlstore.migrate(empty_url)
    _write_read(empty_url)

    downgrade(empty_url, "base")
    assert not (_tables(empty_url) & SQLSTORE_TABLES)
    assert _versions(empty_url) == []
    with (
        sqlstore.SQLFileStore.from_url(empty_url, "ns") as store,
        pytest.raises(sqlstore.SchemaError, match=SCHEMA_HINT),
    ):
        store.exists("dir/a.txt")

    sqlstore.migrate(empty_url)
    assert _tables(empty_url) >= SQLSTORE_TABLES
    assert _versions(empty_url) == [_head()]
    with sqlstore.SQLFileStore.from_url(empty_url, "ns") as store:
        assert not store.exists("dir/a.txt"), "downgrade base must have dropped the data"
    _write_read(empty_url)


# -- 5. coexistence with an application's Alembic --------------------------------------


def test_coexists_with_application_alembic(empty_url: URL) -> None:
    app = sa.MetaData()
    things = sa.Table(
        "app_things",
        app,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("label", sa.String(50), nullable=False),
    )
    app_version = sa.Table(
        "alembic_version", app, sa.Column("version_num", sa.String(32), primary_key=True)
    )
    engine = sa.create_engine(empty_url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            app.create_all(conn)
            conn.execute(things.insert(), [{"id": 1, "label": "keep me"}])
            conn.execute(app_version.insert(), [{"version_num": "app_rev_1"}])
    finally:
        engine.dispose()
    app_tables = {"app_things", "alembic_version"}

    def app_untouched() -> None:
        assert _tables(empty_url) >= app_tables
        assert _versions(empty_url, "alembic_version") == ["app_rev_1"]
        with _connect(empty_url) as conn:
            assert conn.execute(sa.select(things.c.label)).scalars().all() == ["keep me"]
            # The application's Alembic still sees its own revision.
            assert MigrationContext.configure(conn).get_current_revision() == "app_rev_1"

    sqlstore.migrate(empty_url)
    app_untouched()
    assert _tables(empty_url) >= {*SQLSTORE_TABLES, schema.VERSION_TABLE}
    assert _versions(empty_url) == [_head()]
    # env.py ignores the application's tables (else it would propose dropping them).
    assert _diffs(empty_url) == []
    _alembic_check(empty_url)
    _write_read(empty_url)

    downgrade(empty_url, "base")
    app_untouched()
    assert not (_tables(empty_url) & SQLSTORE_TABLES)
    assert _versions(empty_url) == []


# -- 6. the store's schema check -------------------------------------------------------


def test_store_needs_migration_then_works_without_new_store(empty_url: URL, backend: str) -> None:
    engine = sqlstore.create_engine(empty_url)
    connects: list[object] = []
    sa.event.listen(engine, "connect", lambda dbapi_conn, record: connects.append(dbapi_conn))
    try:
        store = sqlstore.SQLFileStore(engine, "ns")
        other = store.with_namespace("other")
        assert connects == [], "constructing a store must not connect"
        assert engine.pool.checkedout() == 0
        if backend == "sqlite":
            assert empty_url.database is not None
            assert not Path(empty_url.database).exists()

        for _ in range(2):  # a failed check is not remembered
            with pytest.raises(sqlstore.SchemaError, match=SCHEMA_HINT):
                store.write("a/b.txt", "x")
        with pytest.raises(sqlstore.SchemaError, match=SCHEMA_HINT):
            other.read("a/b.txt")
        assert connects, "the first operation connects"
        assert engine.pool.checkedout() == 0

        sqlstore.migrate(empty_url)
        store.write("a/b.txt", "x")
        assert store.read("a/b.txt") == "x"
        assert store.list("a") == ["a/b.txt"]
        assert not other.exists("a/b.txt")
        assert engine.pool.checkedout() == 0
    finally:
        engine.dispose()


def test_store_construction_opens_no_connection(
    empty_url: URL, backend: str, tmp_path: Path
) -> None:
    if backend == "sqlite":
        unreachable = make_url(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}")
    else:
        unreachable = empty_url.set(host="127.0.0.1", port=1)
    store = sqlstore.SQLFileStore.from_url(unreachable, "ns")  # must not raise
    try:
        assert store.engine.pool.checkedout() == 0
        # Connection failures are database errors, not schema errors.
        with pytest.raises(sqlstore.DatabaseError) as caught:
            store.exists("a")
        assert not isinstance(caught.value, sqlstore.SchemaError)
    finally:
        store.close()
    if backend == "sqlite":
        assert not (tmp_path / "no").exists()


# -- 7. the alembic CLI of a checkout --------------------------------------------------


def _alembic(*args: str, env_url: str | None = None, uv: bool = False) -> None:
    env = {k: v for k, v in os.environ.items() if k != "SQLSTORE_URL"}
    if env_url is not None:
        env["SQLSTORE_URL"] = env_url
    if uv:
        uv_bin = shutil.which("uv")
        assert uv_bin is not None, "uv is not on PATH"
        cmd = [uv_bin, "run", "--no-sync", "alembic", *args]
    else:
        cmd = [str(Path(sys.executable).parent / "alembic"), *args]
    done = subprocess.run(
        cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout}\n{done.stderr}"


def test_alembic_cli_in_checkout(empty_url: URL) -> None:
    url = _url_arg(empty_url)

    _alembic("-x", f"url={url}", "upgrade", "head", uv=True)
    assert _tables(empty_url) >= {*SQLSTORE_TABLES, schema.VERSION_TABLE}
    assert "alembic_version" not in _tables(empty_url)
    assert _versions(empty_url) == [_head()]

    _alembic("-x", f"url={url}", "downgrade", "base")
    assert not (_tables(empty_url) & SQLSTORE_TABLES)
    assert _versions(empty_url) == []

    _alembic("upgrade", "head", env_url=url)
    assert _tables(empty_url) >= SQLSTORE_TABLES
    assert _versions(empty_url) == [_head()]
    _write_read(empty_url)


# -- 8. an installed wheel -------------------------------------------------------------

WHEEL_SNIPPET = """
import sys
import sysconfig
from pathlib import Path

import sqlstore
from sqlstore.migrations import migrations_dir

site = Path(sysconfig.get_paths()["purelib"]).resolve()
found = migrations_dir().resolve()
assert found.is_relative_to(site), (found, site)
assert found == Path(sqlstore.__file__).resolve().parent / "_migrations", found
for url in sys.argv[1:]:
    sqlstore.migrate(url)
    sqlstore.migrate(url)
    with sqlstore.SQLFileStore.from_url(url, namespace="n") as store:
        store.write("d/f.txt", "from the wheel")
    with sqlstore.SQLFileStore.from_url(url, namespace="n") as store:
        assert store.read("d/f.txt") == "from the wheel"
        assert store.list("d") == ["d/f.txt"]
print("migrated", len(sys.argv) - 1)
"""


def _run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, **kwargs)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_wheel_migrates_when_installed(empty_url: URL, tmp_path: Path) -> None:
    """``empty_url`` is a PostgreSQL database (skips or fails like every PG test)."""
    uv = shutil.which("uv")
    assert uv is not None, "uv is not on PATH"
    dist = tmp_path / "dist"
    _run([uv, "build", "--wheel", "--out-dir", str(dist)], cwd=ROOT)
    (wheel,) = dist.glob("sqlstore-*.whl")

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert "sqlstore/_migrations/env.py" in names
    assert "sqlstore/_migrations/versions/0001_initial.py" in names
    assert "sqlstore/_migrations/script.py.mako" in names
    assert not [n for n in names if n.startswith("migrations/")], "stray top-level package"
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]

    venv = tmp_path / "venv"
    _run([uv, "venv", str(venv), "--python", "3.12"])
    python = venv / "bin" / "python"
    _run([uv, "pip", "install", "--python", str(python), str(wheel), "psycopg[binary]"])

    work = tmp_path / "elsewhere"
    work.mkdir()
    sqlite_url = f"sqlite:///{tmp_path / 'wheel.db'}"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "SQLSTORE_URL", "VIRTUAL_ENV", "PYTHONHOME"}
    }
    done = _run(
        [str(python), "-I", "-c", WHEEL_SNIPPET, sqlite_url, _url_arg(empty_url)],
        cwd=work,
        env=env,
    )
    assert done.stdout.split() == ["migrated", "2"], done.stdout

    # The databases really were migrated by the wheel.
    for url in (make_url(sqlite_url), empty_url):
        assert _versions(url) == [_head()]
        with sqlstore.SQLFileStore.from_url(url, "n") as store:
            assert store.read("d/f.txt") == "from the wheel"
