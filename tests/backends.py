"""Where the test databases come from.

Each backend's server URL comes from an environment variable, else the local service
when it answers, else a testcontainers container when Docker runs, else the backend is
unavailable: its tests skip, or fail when ``SQLSTORE_TEST_REQUIRE`` names it (CI).
Every test session works in databases of its own, created here and dropped after.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

DEFAULTS = {
    "postgresql": (
        "SQLSTORE_TEST_POSTGRES_URL",
        "postgresql+psycopg://postgres@127.0.0.1:5432/test",
    ),
    "mysql": ("SQLSTORE_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test"),
    # PgBouncer 1.18 (Debian 12) in transaction-pooling mode cannot route prepared
    # statements, hence prepare_threshold=none (see .ci/pgbouncer).
    "pgbouncer": (
        "SQLSTORE_TEST_PGBOUNCER_URL",
        "postgresql+psycopg://postgres@127.0.0.1:6432/test?prepare_threshold=none",
    ),
    # A Citus coordinator (bash ../shared/citus/cluster.sh start); each test database is
    # made on it and on its workers (see CitusServer).
    "citus": ("SQLSTORE_TEST_CITUS_URL", "postgresql+psycopg://postgres@127.0.0.1:9700/postgres"),
}
BACKENDS = (
    "sqlite",
    "postgresql",
    "mysql",
    "pgbouncer",
    "pgpartitioned",
    "mysqlpartitioned",
    "citus",
)
#: Backends that are another way to run a database of the list above, and the suites
#: that run on them too (the others would only repeat their database's).
VARIANT_SUITES = {
    "pgbouncer": frozenset(
        {"test_contract", "test_locks", "test_model", "test_round_trips", "test_deferred"}
    ),
    "pgpartitioned": frozenset(
        {"test_contract", "test_locks", "test_model", "test_routing", "test_plans"}
    ),
    "mysqlpartitioned": frozenset({"test_contract", "test_routing"}),
    # Every suite whose statements or locks could differ on a distributed PostgreSQL.
    # (test_plans counts the index entries read in the database's statistics: on Citus
    # those are the workers'; test_citus checks the plan mode and the statements run.)
    "citus": frozenset(
        {
            "test_contract",
            "test_locks",
            "test_model",
            "test_concurrency",
            "test_readahead",
            "test_timeouts",
            "test_routing",
            "test_migrations",
            "test_sdk",
            "test_agent_server",
            "test_citus",
        }
    ),
}
#: Hash partitions by namespace in the partitioned layouts.
PARTITIONS = 8
_DIALECTS = {
    "pgbouncer": "postgresql",
    "pgpartitioned": "postgresql",
    "mysqlpartitioned": "mysql",
    "citus": "postgresql",
}


def dialect(backend: str) -> str:
    """The database behind a backend: PgBouncer fronts PostgreSQL, and so on."""
    return _DIALECTS.get(backend, backend)


def partitions(backend: str) -> int | None:
    """The partitions a backend's tables have, or ``None`` for the default layout."""
    return PARTITIONS if backend.endswith("partitioned") else None


def required() -> set[str]:
    """Backends that must not be skipped (``SQLSTORE_TEST_REQUIRE=postgresql,mysql``)."""
    value = os.environ.get("SQLSTORE_TEST_REQUIRE", "")
    return {name.strip() for name in value.split(",") if name.strip()}


@dataclass
class Server:
    """A database server the tests may create databases on.

    ``client_url`` is where tests connect, when that is not the server itself (a
    PgBouncer in front of it); databases are always created on ``admin_url``.
    """

    backend: str
    admin_url: URL
    container: object | None = None
    client_url: URL | None = None

    def create_database(self) -> URL:
        name = f"sqlstore_t_{uuid.uuid4().hex[:12]}"
        self._admin(f"CREATE DATABASE {name}")
        return (self.client_url or self.admin_url).set(database=name)

    def drop_database(self, url: URL) -> None:
        if dialect(self.backend) == "postgresql":
            self._admin(f"DROP DATABASE IF EXISTS {url.database} WITH (FORCE)")
        else:
            self._admin(f"DROP DATABASE IF EXISTS {url.database}")

    def _admin(self, sql: str) -> None:
        engine = sa.create_engine(
            self.admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool
        )
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql(sql)
        finally:
            engine.dispose()

    def stop(self) -> None:
        if self.container is not None:
            self.container.stop()  # type: ignore[attr-defined]


class CitusServer(Server):
    """A Citus coordinator: each test database is made on it and on every worker.

    Citus keeps its metadata per database, so a new database gets the extension on
    every node, and the coordinator learns its workers again.
    """

    def workers(self) -> list[tuple[str, int]]:
        """The workers' hosts and ports, as the coordinator's own database knows them."""
        engine = sa.create_engine(self.admin_url, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                rows = conn.exec_driver_sql(
                    "SELECT nodename, nodeport FROM pg_dist_node"
                    " WHERE groupid <> 0 AND noderole = 'primary' ORDER BY nodeport"
                ).all()
        finally:
            engine.dispose()
        return [(str(host), int(port)) for host, port in rows]

    def create_database(self) -> URL:
        name = f"sqlstore_t_{uuid.uuid4().hex[:12]}"
        nodes = [self.admin_url, *self._worker_urls()]
        for node in nodes:
            _run(node, f"CREATE DATABASE {name}")
            _run(node.set(database=name), "CREATE EXTENSION IF NOT EXISTS citus")
        url = self.admin_url.set(database=name)
        coordinator = self.admin_url
        _run(url, f"SELECT citus_set_coordinator_host('{coordinator.host}', {coordinator.port})")
        for host, port in self.workers():
            _run(url, f"SELECT citus_add_node('{host}', {port})")
        return url

    def drop_database(self, url: URL) -> None:
        for node in [self.admin_url, *self._worker_urls()]:
            _run(node, f"DROP DATABASE IF EXISTS {url.database} WITH (FORCE)")

    def _worker_urls(self) -> list[URL]:
        return [self.admin_url.set(host=host, port=port) for host, port in self.workers()]


def _run(url: URL, sql: str) -> None:
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(sql)
    finally:
        engine.dispose()


def _citus_problem(url: URL) -> str | None:
    """``None`` if ``url`` is a Citus coordinator with workers, else why not."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            workers = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_dist_node WHERE groupid <> 0"
            ).scalar_one()
        return None if workers else "it has no workers"
    except Exception as exc:  # any failure means: not usable
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    finally:
        engine.dispose()


def _answers(url: URL) -> str | None:
    """``None`` if a server answers at ``url``, else why not."""
    args = {"connect_timeout": 3}
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args=args)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        return None
    except Exception as exc:  # any failure means: not usable
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    finally:
        engine.dispose()


def _docker_runs() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False)
    return probe.returncode == 0


def _container(backend: str) -> Server:
    if backend == "postgresql":
        from testcontainers.postgres import PostgresContainer

        pg = PostgresContainer("postgres:16", driver="psycopg").start()
        return Server(backend, make_url(pg.get_connection_url()), pg)
    from testcontainers.mysql import MySqlContainer

    my = MySqlContainer("mariadb:11", username="root", password="test").start()
    url = make_url(my.get_connection_url()).set(drivername="mysql+pymysql")
    return Server(backend, url, my)


def find_server(backend: str) -> tuple[Server | None, str]:
    """The server for ``backend``, or ``None`` and the reason there is none."""
    if backend == "pgbouncer":
        return _find_pgbouncer()
    if backend == "citus":
        return _find_citus()
    if backend in _DIALECTS:  # the same server, another layout
        server, reason = find_server(_DIALECTS[backend])
        return (None, reason) if server is None else (Server(backend, server.admin_url), "")
    variable, default = DEFAULTS[backend]
    url = make_url(os.environ.get(variable, default))
    reason = _answers(url)
    if reason is None:
        return Server(backend, url), ""
    if _docker_runs():
        return _container(backend), ""
    return None, (
        f"no {backend} server: {url.render_as_string(hide_password=True)} did not answer "
        f"({reason}); set {variable}, or run Docker for testcontainers"
    )


def _find_pgbouncer() -> tuple[Server | None, str]:
    postgres, reason = find_server("postgresql")
    if postgres is None:
        return None, reason
    variable, default = DEFAULTS["pgbouncer"]
    url = make_url(os.environ.get(variable, default))
    probe = url.difference_update_query(["prepare_threshold"])
    reason = _answers(probe)
    if reason is not None:
        return None, (
            f"no PgBouncer: {probe.render_as_string(hide_password=True)} did not answer "
            f"({reason}); run .ci/pgbouncer or set {variable}"
        )
    return Server("pgbouncer", postgres.admin_url, postgres.container, client_url=url), ""


def _find_citus() -> tuple[Server | None, str]:
    variable, default = DEFAULTS["citus"]
    url = make_url(os.environ.get(variable, default))
    reason = _citus_problem(url)
    if reason is None:
        return CitusServer("citus", url), ""
    return None, (
        f"no Citus cluster: {url.render_as_string(hide_password=True)} is not a Citus "
        f"coordinator ({reason}); run `bash ../shared/citus/cluster.sh start` or set {variable}"
    )


@contextmanager
def database(server: Server) -> Iterator[URL]:
    """A fresh, empty database on ``server``, dropped afterwards."""
    url = server.create_database()
    try:
        yield url
    finally:
        server.drop_database(url)
