"""A pytest plugin for testing applications that keep their files in sqlstore.

Installed with sqlstore and loaded by pytest on its own (the ``pytest11`` entry point),
it offers fixtures that give each test a migrated store in a namespace of its own:

* :func:`sqlstore_store`: a :class:`~sqlstore.SQLFileStore` in a fresh namespace;
* :func:`sqlstore_engine`: the session's engine, on a database migrated to head;
* :func:`sqlstore_url`: that database's URL, for an application that takes a URL;
* :func:`sqlstore_namespace`: a fresh namespace name.

By default the database is a temporary SQLite file. One switch runs the same tests on
a server: ``pytest --sqlstore-url postgresql+psycopg://user@host/db`` (or the
``SQLSTORE_TEST_URL`` environment variable; ``mysql+pymysql://`` works the same way).
The session then creates a database of its own next to the one the URL names, and
drops it at the end, so the user needs the right to create databases. ``sqlite://``
runs on an in-memory SQLite database (one connection: tests that use threads need a
file or a server).

Example:
    A test of an application that stores notes::

        def test_notes_survive_a_new_store(sqlstore_store, sqlstore_engine):
            save_note(sqlstore_store, "todo", "write the report")
            again = sqlstore.SQLFileStore(sqlstore_engine, sqlstore_store.namespace)
            assert load_note(again, "todo") == "write the report"
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.engine import URL
    from sqlalchemy.exc import DBAPIError

    from .store import SQLFileStore

__all__ = [
    "OPTION",
    "URL_VARIABLE",
    "sqlstore_engine",
    "sqlstore_namespace",
    "sqlstore_store",
    "sqlstore_url",
]

#: The command-line option that names the database server to test on.
OPTION = "--sqlstore-url"
#: The environment variable read when the option is not given.
URL_VARIABLE = "SQLSTORE_TEST_URL"
_DATABASE_PREFIX = "sqlstore_test_"


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--sqlstore-url``."""
    parser.getgroup("sqlstore").addoption(
        OPTION,
        dest="sqlstore_url",
        metavar="URL",
        default=None,
        help=(
            "run the sqlstore fixtures on this database server (each session creates a "
            "database of its own there and drops it), or on sqlite:// in memory; default "
            f"${URL_VARIABLE}, else a temporary SQLite file"
        ),
    )


def _configured(config: pytest.Config) -> str | None:
    value: str | None = config.getoption("sqlstore_url") or os.environ.get(URL_VARIABLE)
    return value or None


def pytest_configure(config: pytest.Config) -> None:
    """Refuse a URL sqlstore cannot use before any test runs, naming the fix."""
    text = _configured(config)
    if text is None:
        return
    from sqlalchemy.exc import ArgumentError

    from .errors import UnsupportedDialectError
    from .urls import check_url

    try:
        check_url(text)
    except (UnsupportedDialectError, ArgumentError) as exc:
        raise pytest.UsageError(f"{OPTION} / ${URL_VARIABLE}: {exc}") from None


def pytest_report_header(config: pytest.Config) -> str | None:
    """Say where the sqlstore fixtures run, when a URL was given."""
    text = _configured(config)
    if text is None:
        return None
    from sqlalchemy.engine import make_url

    shown = make_url(text).render_as_string(hide_password=True)
    return f"sqlstore fixtures: {shown}"


def _in_memory(url: URL) -> bool:
    from .dialects.sqlite import in_memory

    return url.get_backend_name() == "sqlite" and in_memory(url)


@pytest.fixture(scope="session")
def sqlstore_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[URL]:
    """The URL of this test session's sqlstore database, migrated to head.

    By default a temporary SQLite file. With ``--sqlstore-url`` (or
    ``$SQLSTORE_TEST_URL``) naming a PostgreSQL or MySQL/MariaDB server, a database
    created for this session on that server (named ``sqlstore_test_<random>``) and
    dropped after it; if the user cannot connect, or may not create databases, the
    session stops there with one error that says which. With ``sqlite://`` (in memory)
    it is just ``sqlite://``: the database lives in :func:`sqlstore_engine`, so take
    the engine, not the URL.

    Give the URL to an application that makes its own engine
    (``sqlstore.create_engine(url)``); a password in it is hidden when printed.
    """
    from sqlalchemy.engine import make_url

    from .migrations import migrate

    text = _configured(request.config)
    if text is None:
        path = tmp_path_factory.mktemp("sqlstore") / "store.db"
        url = make_url(f"sqlite:///{path}")
        migrate(url)
        yield url
        return
    url = make_url(text)
    if _in_memory(url):
        yield url  # migrated by sqlstore_engine, which holds the only connection
        return
    if url.get_backend_name() == "sqlite":  # a file the user named: used as it is
        Path(str(url.database)).parent.mkdir(parents=True, exist_ok=True)
        migrate(url)
        yield url
        return
    database = _ServerDatabase(url)
    try:
        migrate(database.url)
        yield database.url
    finally:
        database.drop()


@pytest.fixture(scope="session")
def sqlstore_engine(sqlstore_url: URL) -> Iterator[Engine]:
    """The session's engine on :func:`sqlstore_url`, from :func:`sqlstore.create_engine`.

    Disposed when the session ends. Make stores on it with
    ``sqlstore.SQLFileStore(sqlstore_engine, namespace)``.
    """
    from .engine import create_engine
    from .migrations import migrate

    engine = create_engine(sqlstore_url)
    if _in_memory(sqlstore_url):
        # One database per engine, so the engine itself is migrated (the URL names none).
        migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlstore_namespace() -> str:
    """A namespace no other test uses: ``test-`` and 32 random hex digits."""
    return f"test-{uuid.uuid4().hex}"


@pytest.fixture
def sqlstore_store(sqlstore_engine: Engine, sqlstore_namespace: str) -> SQLFileStore:
    """An empty store in a namespace of its own, on the session's engine.

    A :class:`~sqlstore.SQLFileStore` on :func:`sqlstore_engine` in
    :func:`sqlstore_namespace`: tests never see each other's files. The files stay
    until the session's database goes.
    """
    from .store import SQLFileStore

    return SQLFileStore(sqlstore_engine, sqlstore_namespace)


class _ServerDatabase:
    """A database created for one test session on the server a URL names.

    Made by the first test that needs it. If the server refuses, the session stops
    there with one message (``pytest.exit``), rather than every test that needs the
    database failing with it; the message tells a connection that fails (an unknown
    user, a wrong password, no server) from a user who may not create databases.
    """

    def __init__(self, server_url: URL) -> None:
        from sqlalchemy.exc import DBAPIError

        self.server_url = server_url
        self.name = f"{_DATABASE_PREFIX}{uuid.uuid4().hex[:16]}"
        self.url = server_url.set(database=self.name)
        shown = server_url.render_as_string(hide_password=True)
        user = server_url.username or "the user"
        try:
            self._admin(None)
        except DBAPIError as exc:
            _stop(
                f"sqlstore: cannot connect to {shown} as {user}: {_first_line(exc)}. The "
                f"fixtures connect with the URL of {OPTION} / ${URL_VARIABLE} (then create "
                "a database of their own next to the one it names): check its user, "
                "password, host, port and database, or run them on a temporary SQLite "
                f"file (no {OPTION}, no ${URL_VARIABLE})."
            )
        try:
            self._admin(f"CREATE DATABASE {self.name}")
        except DBAPIError as exc:
            _stop(
                f"sqlstore: cannot create the test database {self.name} on {shown}: "
                f"{_first_line(exc)}. The fixtures need a user who may create databases "
                f"(PostgreSQL: ALTER ROLE {user} CREATEDB; MySQL/MariaDB: GRANT ALL ON "
                f"`{_DATABASE_PREFIX}%`.* TO {user}), or run them on a temporary SQLite "
                f"file (no {OPTION}, no ${URL_VARIABLE})."
            )

    def drop(self) -> None:
        """Drop the database, closing what is left connected to it."""
        from sqlalchemy.exc import DBAPIError

        if self.server_url.get_backend_name() == "postgresql":
            try:
                # The application under test may still hold a pool on it.
                self._admin(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
                return
            except DBAPIError:
                pass  # before PostgreSQL 13: no FORCE
        self._admin(f"DROP DATABASE IF EXISTS {self.name}")

    def _admin(self, sql: str | None) -> None:
        """Run ``sql`` on the server URL's database; with None, only connect."""
        import sqlalchemy as sa

        from .engine import create_engine

        # sqlstore's engine: its URL checks and parameters; autocommit, as DDL on
        # databases needs.
        engine = create_engine(self.server_url, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                if sql is not None:
                    conn.exec_driver_sql(sql)
        finally:
            engine.dispose()


def _first_line(exc: DBAPIError) -> str:
    """The driver's own message, first line (psycopg adds hints below it)."""
    return str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)


def _stop(message: str) -> NoReturn:
    """End the session here, saying why once (the exit code of a usage error).

    A failing session fixture would be reported again by every test that needs it.
    """
    pytest.exit(message, returncode=pytest.ExitCode.USAGE_ERROR)
