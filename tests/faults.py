"""Fault injection against the real servers: killed sessions, a restarted server."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import sqlalchemy as sa


def kill_other_sessions(engine: sa.Engine, backend: str) -> int:
    """Have the server terminate every session on ``engine``'s database but our own.

    Returns:
        How many sessions were killed.
    """
    admin = sa.create_engine(engine.url, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            if backend == "postgresql":
                killed = conn.exec_driver_sql(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                ).all()
                return len(killed)
            ids = (
                conn.exec_driver_sql(
                    "SELECT id FROM information_schema.processlist"
                    " WHERE db = DATABASE() AND id <> CONNECTION_ID()"
                )
                .scalars()
                .all()
            )
            for session in ids:
                conn.exec_driver_sql(f"KILL {int(session)}")
            return len(ids)
    finally:
        admin.dispose()


def postgres_restart_command() -> list[str] | None:
    """How to restart the local PostgreSQL cluster, if this machine can.

    ``SQLSTORE_TEST_PG_RESTART`` overrides it (a shell command).
    """
    custom = os.environ.get("SQLSTORE_TEST_PG_RESTART")
    if custom:
        return ["sh", "-c", custom]
    if shutil.which("pg_ctlcluster") is None or not os.path.isdir("/etc/postgresql"):
        return None
    versions = sorted(os.listdir("/etc/postgresql"))
    if not versions:
        return None
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "restart"]


def wait_for(url: sa.URL, seconds: float = 60.0) -> None:
    """Wait until the server at ``url`` accepts connections again."""
    deadline = time.monotonic() + seconds
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        while True:
            try:
                with engine.connect() as conn:
                    conn.exec_driver_sql("SELECT 1")
                return
            except sa.exc.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        engine.dispose()


def restart_postgres(command: list[str], url: sa.URL) -> None:
    """Restart the server and wait until it is back."""
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    wait_for(url)
