"""Backend fixtures: every store test runs on SQLite, PostgreSQL and MySQL/MariaDB.

``backend`` is parametrized over the three, and over variants of them for some suites
(PgBouncer; tables hash-partitioned by namespace on PostgreSQL and MariaDB: see
``tests.backends.VARIANT_SUITES``). ``engine`` is a session-wide engine on a migrated
database of that backend; ``store`` is a store in a namespace of its own, so tests
never see each other's files. ``empty_url`` is a fresh database with no schema.

Each test carries the marker of its backend (``sqlite``, ``postgresql``, ``mysql``,
``pgbouncer``, ``pgpartitioned``, ``mysqlpartitioned``; ``nodb`` when it has none), so
``pytest -m sqlite`` runs the SQLite tests. A backend whose server is missing is not
run, reported in one line at the end, unless ``SQLSTORE_TEST_REQUIRE`` names it: then
its tests fail. Tests marked ``disruptive`` (they restart a server that others may
share) run only with ``SQLSTORE_TEST_DISRUPTIVE=1``.
"""

from __future__ import annotations

import os

# The OpenHands SDK, imported by the SDK tests and their subprocesses: no banner, no
# INFO logging on the root logger, and no fetch of litellm's model price list.
os.environ.setdefault("OPENHANDS_SUPPRESS_BANNER", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LOG_LEVEL", "WARNING")

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

import sqlstore
from tests.backends import (
    BACKENDS,
    VARIANT_SUITES,
    Server,
    database,
    dialect,
    find_server,
    partitions,
    required,
)

#: pytester runs sample projects (tests/test_pytest_plugin.py).
pytest_plugins = ["pytester"]

_servers: dict[str, tuple[Server | None, str]] = {}


def _server(backend: str) -> Server:
    if backend not in _servers:
        _servers[backend] = find_server(backend)
    server, reason = _servers[backend]
    if server is None:
        if backend in required():
            pytest.fail(f"{reason} (required by SQLSTORE_TEST_REQUIRE)", pytrace=False)
        pytest.skip(reason)
    return server


DISRUPTIVE_VARIABLE = "SQLSTORE_TEST_DISRUPTIVE"
#: What the terminal summary reports as not run: one line per reason.
_NOT_RUN = pytest.StashKey[list[str]]()


def _disruptive_allowed() -> bool:
    return os.environ.get(DISRUPTIVE_VARIABLE, "").strip().lower() in {"1", "true", "yes"}


def _item_backends(item: pytest.Item) -> set[str]:
    """The backends ``item`` runs on, from its markers."""
    return {name for name in BACKENDS if item.get_closest_marker(name) is not None}


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> Iterator[None]:
    """Mark tests by backend, then drop what this machine cannot or should not run.

    Before ``-m`` selects: every test parametrized by ``backend`` gets that backend's
    marker, a test with no backend gets ``nodb``, and only their suites stay for the
    variant backends (PgBouncer, the partitioned layouts). After it: tests on a backend
    whose server is missing are deselected (one summary line per backend) unless
    ``SQLSTORE_TEST_REQUIRE`` names it, and disruptive tests unless
    ``SQLSTORE_TEST_DISRUPTIVE=1``.
    """
    keep, drop = [], []
    repeats: dict[str, int] = {}
    for item in items:
        params = getattr(item, "callspec", None)
        backend = params.params.get("backend") if params else None
        if backend is not None:
            item.add_marker(backend)
        elif not _item_backends(item):
            item.add_marker("nodb")
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if backend in VARIANT_SUITES and module not in VARIANT_SUITES[backend]:
            drop.append(item)
            repeats[backend] = repeats.get(backend, 0) + 1
        else:
            keep.append(item)
    _deselect(config, items, keep, drop)
    # pytest counts these in its "deselected"; say why, as for the lines below.
    not_run = config.stash.setdefault(_NOT_RUN, [])
    for backend, count in repeats.items():
        suites = ", ".join(sorted(VARIANT_SUITES[backend]))
        not_run.append(
            f"{backend}: {count} tests deselected, as it runs only {suites} (the other "
            f"suites would repeat {dialect(backend)}'s)"
        )
    yield
    if config.option.collectonly:
        return  # listing tests starts no container
    _drop_unavailable(config, items)


def _deselect(
    config: pytest.Config,
    items: list[pytest.Item],
    keep: list[pytest.Item],
    drop: list[pytest.Item],
) -> None:
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _drop_unavailable(config: pytest.Config, items: list[pytest.Item]) -> None:
    not_run = config.stash.setdefault(_NOT_RUN, [])
    keep, drop = list(items), []
    if not _disruptive_allowed():
        disruptive = [item for item in keep if item.get_closest_marker("disruptive")]
        if disruptive:
            not_run.append(
                f"disruptive: {_count(disruptive)} not run, as disruptive tests touch a server "
                f"beyond their own databases (a PostgreSQL restart); set "
                f"{DISRUPTIVE_VARIABLE}=1 to run them"
            )
            keep = [item for item in keep if item.get_closest_marker("disruptive") is None]
            drop += disruptive
    needed = {name for item in keep for name in _item_backends(item)} - {"sqlite"}
    for backend in sorted(needed):
        if backend not in _servers:
            _servers[backend] = find_server(backend)
        server, reason = _servers[backend]
        if server is not None:
            continue
        on_it = [item for item in keep if backend in _item_backends(item)]
        if backend in required():
            not_run.append(
                f"{backend}: {_count(on_it)} fail, as SQLSTORE_TEST_REQUIRE names it: {reason}"
            )
            continue  # they fail in the fixture: never a silent deselect
        not_run.append(f"{backend}: {_count(on_it)} not run: {reason}")
        gone = set(on_it)
        keep = [item for item in keep if item not in gone]
        drop += on_it
    _deselect(config, items, keep, drop)


def _count(items: list[pytest.Item]) -> str:
    return f"{len(items)} test" if len(items) == 1 else f"{len(items)} tests"


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    not_run = config.stash.get(_NOT_RUN, [])
    if not_run:
        terminalreporter.section("sqlstore: backends and disruptive tests", sep="-")
        for line in not_run:
            terminalreporter.write_line(line)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for server, _ in _servers.values():
        if server is not None:
            server.stop()


@pytest.fixture(params=BACKENDS, scope="session")
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def db_dialect(backend: str) -> str:
    """The database behind ``backend`` (``postgresql`` for ``pgbouncer``, and so on)."""
    return dialect(backend)


@pytest.fixture(scope="session")
def migrated_url(backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[URL]:
    """A database of ``backend`` migrated to head, shared by the session's tests."""
    if backend == "sqlite":
        url = make_url(f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'store.db'}")
        sqlstore.migrate(url)
        yield url
        return
    with database(_server(backend)) as url:
        sqlstore.migrate(url, partitions=partitions(backend))
        yield url


@pytest.fixture(scope="session")
def engine(migrated_url: URL) -> Iterator[sa.Engine]:
    engine = sqlstore.create_engine(migrated_url)
    yield engine
    engine.dispose()


@pytest.fixture
def namespace() -> str:
    return f"test-{uuid.uuid4().hex}"


@pytest.fixture
def store(engine: sa.Engine, namespace: str) -> sqlstore.SQLFileStore:
    return sqlstore.SQLFileStore(engine, namespace)


@pytest.fixture
def empty_url(backend: str, tmp_path: Path) -> Iterator[URL]:
    """A fresh database of ``backend`` with no tables, for migration tests."""
    if backend == "sqlite":
        yield make_url(f"sqlite:///{tmp_path / 'empty.db'}")
        return
    with database(_server(backend)) as url:
        yield url


@pytest.fixture
def new_store(engine: sa.Engine) -> Callable[[], sqlstore.SQLFileStore]:
    """Makes stores in fresh namespaces on the session engine."""
    return lambda: sqlstore.SQLFileStore(engine, f"test-{uuid.uuid4().hex}")
