"""A private Citus cluster for tests that stop its nodes, and writers that run meanwhile.

The fault tests stop a worker or restart the coordinator, so they never act on the
shared cluster of the ``citus`` backend: :class:`Cluster` starts one of its own with
``cluster.sh`` (``../shared/citus/``, or ``SQLSTORE_TEST_CITUS_SCRIPTS``) on free ports
in a directory of its own, and stops and deletes it afterwards.

:func:`writer` is the process body of one of the SDK writers: it appends events to
every conversation in turn through the SDK's ``EventLog`` until told to stop, and
reports each append: when it started, how long it took, and how it ended.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

SCRIPTS_VARIABLE = "SQLSTORE_TEST_CITUS_SCRIPTS"
_CANDIDATES = (
    Path(__file__).resolve().parents[2] / "shared" / "citus",
    Path("/work/shared/citus"),
)


def scripts() -> Path | None:
    """The directory holding ``cluster.sh``, if there is one."""
    given = os.environ.get(SCRIPTS_VARIABLE)
    for candidate in [Path(given)] if given else _CANDIDATES:
        if (candidate / "cluster.sh").is_file():
            return candidate
    return None


def _free_base_port() -> int:
    """A port such that it and the next two are free now."""
    for base in range(19700, 29700, 10):
        try:
            for port in range(base, base + 3):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no three free ports for a Citus cluster")


@dataclass
class Cluster:
    """A coordinator and two workers of this test's own."""

    script: Path
    base: int = field(default_factory=_free_base_port)
    directory: Path = field(
        default_factory=lambda: Path(tempfile.mkdtemp(prefix="sqlstore-citus-", dir="/tmp"))
    )
    url: URL = field(init=False)

    def start(self) -> URL:
        out = self._script("start")
        self.url = make_url(out.strip().splitlines()[-1])
        return self.url

    def stop(self) -> None:
        self._script("stop")
        shutil.rmtree(self.directory, ignore_errors=True)

    @property
    def workers(self) -> list[int]:
        return [self.base + 1, self.base + 2]

    def pg_ctl(self, port: int, action: str) -> float:
        """Run ``pg_ctl ACTION`` on one node; the seconds it took."""
        node = self.directory / f"node{port}"
        binary = Path("/usr/lib/postgresql") / _pg_major() / "bin" / "pg_ctl"
        command = f"'{binary}' -D '{node}' -l '{node}.log' -m fast -w -t 60 {action}"
        started = time.monotonic()
        if os.geteuid() == 0:
            subprocess.run(["su", "postgres", "-c", command], check=True, capture_output=True)
        else:
            subprocess.run(["bash", "-c", command], check=True, capture_output=True)
        return time.monotonic() - started

    def _script(self, action: str) -> str:
        env = {**os.environ, "CITUS_PORT": str(self.base)}
        done = subprocess.run(
            ["bash", str(self.script / "cluster.sh"), action, str(self.directory)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode:
            raise RuntimeError(f"cluster.sh {action} failed: {done.stderr or done.stdout}")
        return done.stdout


def _pg_major() -> str:
    return sorted(os.listdir("/usr/lib/postgresql"), key=int)[-1]


def worker_of(url: URL, namespaces: list[str]) -> dict[str, int]:
    """The port of the worker holding each namespace's shard."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            found = {}
            for namespace in namespaces:
                found[namespace] = int(
                    conn.execute(
                        sa.text(
                            "SELECT n.nodeport FROM pg_dist_shard s"
                            " JOIN pg_dist_placement p ON p.shardid = s.shardid"
                            " JOIN pg_dist_node n ON n.groupid = p.groupid"
                            " WHERE s.logicalrelid = 'sqlstore_files'::regclass"
                            " AND s.shardid = get_shard_id_for_distribution_column("
                            "'sqlstore_files', CAST(:ns AS text))"
                        ),
                        {"ns": namespace},
                    ).scalar_one()
                )
            return found
    finally:
        engine.dispose()


@dataclass
class Append:
    """One append a writer tried."""

    namespace: str
    started: float  # time.time()
    seconds: float
    event_id: str
    error: str | None = None  # the exception's class name, if it failed
    database_error: bool = False  # whether that exception is a sqlstore.DatabaseError


def writer(url: str, namespaces: list[str], worker: int, stop_file: str) -> list[Append]:
    """Append events to each conversation in turn until ``stop_file`` exists.

    A failed append is recorded with its error and the conversation's log is opened
    anew (the SDK's log keeps its length in memory); nothing is retried here, so every
    error sqlstore let through is counted.
    """
    from openhands.sdk.conversation.event_store import EventLog

    import sqlstore
    from tests.sdk_helpers import message_event

    engine = sqlstore.create_engine(url, connect_timeout=3, read_timeout=10)
    logs: dict[str, Any] = {}
    done: list[Append] = []
    i = 0
    try:
        while not os.path.exists(stop_file):
            namespace = namespaces[i % len(namespaces)]
            event = message_event(f"writer {worker} event {i}")
            started, clock = time.time(), time.monotonic()
            try:
                if namespace not in logs:
                    logs[namespace] = EventLog(
                        sqlstore.SQLFileStore(engine, namespace), dir_path="events"
                    )
                logs[namespace].append(event)
                error, database = None, False
            except Exception as exc:
                logs.pop(namespace, None)
                error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                database = isinstance(exc, sqlstore.DatabaseError)
            done.append(
                Append(namespace, started, time.monotonic() - clock, event.id, error, database)
            )
            if i >= len(namespaces) and error is None:  # a round done: tell the test
                Path(f"{stop_file}.writing-{worker}").touch()
            i += 1
    finally:
        engine.dispose()
    return done
