"""sqlstore's pytest plugin, run by pytester on a sample project.

The sample project is ``examples/testing_your_app`` (an application module and its
tests on the plugin's fixtures). It must pass on a temporary SQLite file with no
option, and on PostgreSQL and MariaDB by one switch, in a database the session creates
and drops.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.backends import Server, dialect
from tests.conftest import _server

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "testing_your_app"

# Prints where the fixtures put the session's database, so the test can look for it.
WHERE = """
def test_where(sqlstore_url, sqlstore_store):
    sqlstore_store.write("f", "1")
    print("SQLSTORE-URL=" + sqlstore_url.render_as_string(hide_password=False))
"""


def _sample_project(pytester: pytest.Pytester) -> None:
    sources = {path.stem: path.read_text() for path in sorted(EXAMPLE.glob("*.py"))}
    assert set(sources) == {"transcript", "test_transcript"}
    pytester.makepyfile(**sources, test_where=WHERE)


def _database_exists(server: Server, name: str) -> bool:
    if dialect(server.backend) == "postgresql":
        sql = "SELECT 1 FROM pg_database WHERE datname = %(name)s"
    else:
        sql = "SELECT 1 FROM information_schema.schemata WHERE schema_name = %(name)s"
    engine = sa.create_engine(server.admin_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql(sql, {"name": name}).first() is not None
    finally:
        engine.dispose()


def _session_url(result: pytest.RunResult) -> sa.URL:
    (found,) = re.findall(r"SQLSTORE-URL=(\S+)", result.stdout.str())
    return sa.make_url(found)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SQLSTORE_TEST_URL", raising=False)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mysql"], indirect=True)
def test_the_sample_project_passes_on_sqlite_and_by_one_switch_on_a_server(
    pytester: pytest.Pytester, backend: str, clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _sample_project(pytester)
    if backend == "sqlite":
        result = pytester.runpytest("-s", "-p", "no:cacheprovider")
    elif backend == "postgresql":
        server = _server(backend)
        given = server.admin_url.render_as_string(hide_password=False)
        result = pytester.runpytest("-s", "-p", "no:cacheprovider", "--sqlstore-url", given)
    else:  # the environment variable is the other switch
        server = _server(backend)
        monkeypatch.setenv(
            "SQLSTORE_TEST_URL", server.admin_url.render_as_string(hide_password=False)
        )
        result = pytester.runpytest("-s", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(["plugins:*sqlstore-*"])  # found through its entry point
    url = _session_url(result)
    assert url.get_backend_name() == dialect(backend)
    if backend == "sqlite":
        # A file in pytest's temporary directory, none in the project's.
        assert Path(str(url.database)).is_file()
        assert Path(str(url.database)).parent.name.startswith("sqlstore")
        assert not list(pytester.path.glob("*.db"))
        return
    assert f"sqlstore fixtures: {server.admin_url.render_as_string()}" in result.stdout.str()
    assert url.database is not None and re.fullmatch(r"sqlstore_test_[0-9a-f]{16}", url.database)
    assert url.database != server.admin_url.database
    assert not _database_exists(server, url.database)  # dropped with the session


def test_sqlite_in_memory(pytester: pytest.Pytester, clean_env: None) -> None:
    _sample_project(pytester)
    result = pytester.runpytest("-s", "-p", "no:cacheprovider", "--sqlstore-url", "sqlite://")
    # The URL test skips: an in-memory database lives in its engine only.
    result.assert_outcomes(passed=4, skipped=1)
    assert str(_session_url(result)) == "sqlite://"


def test_a_url_sqlstore_cannot_use_stops_the_run_naming_the_fix(
    pytester: pytest.Pytester, clean_env: None
) -> None:
    _sample_project(pytester)
    result = pytester.runpytest("--sqlstore-url", "mysql://root@127.0.0.1/test")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--sqlstore-url*write mysql+pymysql://root@127.0.0.1/test*"])


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_user_who_may_not_create_databases_gets_a_clear_error(
    pytester: pytest.Pytester, backend: str, clean_env: None
) -> None:
    server = _server(backend)
    role = f"sqlstore_t_role_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server.admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN NOCREATEDB")
    try:
        _sample_project(pytester)
        url = server.admin_url.set(username=role).render_as_string(hide_password=False)
        result = pytester.runpytest("-p", "no:cacheprovider", "--sqlstore-url", url)
        # The session stops at the first test that needs the database, saying why once.
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.assert_outcomes()
        output = result.stdout.str() + result.stderr.str()
        assert output.count("sqlstore: cannot create the test database") == 1, output
        result.stdout.fnmatch_lines(
            [
                f"*sqlstore: cannot create the test database sqlstore_test_* permission denied*"
                f"ALTER ROLE {role} CREATEDB*"
            ]
        )
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP ROLE IF EXISTS {role}")
        admin.dispose()


@pytest.mark.parametrize("backend", ["postgresql", "mysql"], indirect=True)
def test_a_user_who_cannot_connect_stops_the_session_once_naming_the_connection(
    pytester: pytest.Pytester, backend: str, clean_env: None
) -> None:
    """An unknown user is a connection that fails, not a missing right to create
    databases: the session stops once, and the hint is about the URL."""
    server = _server(backend)
    user = f"sqlstore_t_nobody_{uuid.uuid4().hex[:8]}"  # never created
    _sample_project(pytester)
    url = server.admin_url.set(username=user).render_as_string(hide_password=False)
    result = pytester.runpytest("-p", "no:cacheprovider", "--sqlstore-url", url)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.assert_outcomes()  # no test ran, none errored one by one
    output = result.stdout.str() + result.stderr.str()
    assert output.count("sqlstore: cannot connect to") == 1, output
    result.stdout.fnmatch_lines([f"*sqlstore: cannot connect to * as {user}: *{user}*"])
    assert "CREATEDB" not in output and "GRANT" not in output, output
