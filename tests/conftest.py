"""Backend fixtures: every store test runs on SQLite, PostgreSQL and MySQL/MariaDB.

``backend`` is parametrized over the three; ``engine`` is a session-wide engine on a
migrated database of that backend; ``store`` is a store in a namespace of its own, so
tests never see each other's files. ``empty_url`` is a fresh database with no schema.
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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run only their suites on PgBouncer and the partitioned layouts."""
    keep, drop = [], []
    for item in items:
        params = getattr(item, "callspec", None)
        backend = params.params.get("backend") if params else None
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if backend in VARIANT_SUITES and module not in VARIANT_SUITES[backend]:
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for server, _ in _servers.values():
        if server is not None:
            server.stop()


@pytest.fixture(params=BACKENDS, scope="session")
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def db_dialect(backend: str) -> str:
    """The database behind ``backend`` (``postgresql`` for ``pgbouncer``)."""
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
