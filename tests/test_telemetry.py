"""sqlstore's own telemetry (sqlstore.telemetry) through the OpenTelemetry SDK's in-memory
exporter and metric reader, on every database."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import sqlstore
from sqlstore import SQLFileStore, telemetry
from sqlstore.telemetry import hooks
from sqlstore.telemetry._otel import pool_name
from tests.faults import kill_other_sessions
from tests.holding import held_by_another_thread

ROOT = Path(__file__).resolve().parent.parent
SERVERS = pytest.mark.parametrize("backend", ["postgresql", "mysql"], indirect=True)
STORE_METHODS = ("write", "read", "read_bytes", "exists", "list", "delete", "lock")


@dataclass
class Recorded:
    """What one instrument() call records, read back from the SDK."""

    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def finished(self, prefix: str = "sqlstore.") -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if s.name.startswith(prefix)]

    def points(self, metric: str) -> list[Any]:
        """The data points of ``metric`` at a fresh collection."""
        data = self.reader.get_metrics_data()
        found: list[Any] = []
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for m in scope.metrics:
                    if m.name == metric:
                        found.extend(m.data.data_points)
        return found

    def total(self, metric: str, **attributes: str) -> float:
        """The sum of a counter's (or a histogram's count of) points matching ``attributes``."""
        total = 0.0
        for point in self.points(metric):
            if all(point.attributes.get(k) == v for k, v in attributes.items()):
                total += point.count if hasattr(point, "count") else point.value
        return total


def _providers() -> Recorded:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    return Recorded(spans, reader, tracer_provider, MeterProvider(metric_readers=[reader]))


@pytest.fixture
def recorded() -> Iterator[Recorded]:
    found = _providers()
    telemetry.instrument(found.tracer_provider, found.meter_provider)
    try:
        yield found
    finally:
        telemetry.uninstrument()


def _children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[str]:
    assert parent.context is not None
    return [
        s.name for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id
    ]


# -- spans -----------------------------------------------------------------------------


def test_an_sdk_append_is_a_span_tree_under_the_callers_span(
    recorded: Recorded, store: SQLFileStore, db_dialect: str
) -> None:
    from openhands.sdk.conversation.event_store import EventLog

    from tests.sdk_helpers import message_event

    log = EventLog(store, dir_path="events")
    log.append(message_event("first"))
    recorded.spans.clear()
    caller = recorded.tracer_provider.get_tracer("app")
    with caller.start_as_current_span("append") as outer:
        log.append(message_event("second"))

    spans = recorded.finished()
    (lock,) = [s for s in spans if s.name == "sqlstore.lock"]
    # The append is one lock block under the caller's span, and its store calls are the
    # block's children.
    assert lock.parent is not None and lock.parent.span_id == outer.get_span_context().span_id
    assert {s.context.trace_id for s in spans if s.context} == {outer.get_span_context().trace_id}
    inside = _children(spans, lock)
    assert inside.count("sqlstore.write") >= 1, inside
    assert len(inside) == len(spans) - 1  # every store call of the append is in the block
    for span in spans:
        assert span.attributes is not None
        assert span.attributes["db.system.name"] == db_dialect
        assert span.attributes["sqlstore.namespace.hash"] == telemetry.namespace_hash(
            store.namespace
        )
        assert span.status.status_code is StatusCode.UNSET
    assert lock.attributes is not None
    assert 0 < float(lock.attributes["sqlstore.lock.wait"]) < 5  # seconds
    assert lock.attributes["sqlstore.lock.nested"] is False

    # The metrics of that append: its lock wait and block, and the engine's pool.
    assert recorded.total("sqlstore.lock.wait.duration", **{"sqlstore.lock.outcome": "acquired"})
    assert recorded.total("sqlstore.lock.block.duration", **{"sqlstore.lock.outcome": "committed"})
    pool = {
        p.attributes["db.client.connection.state"]: p.value
        for p in recorded.points("db.client.connection.count")
        # Another engine on the same URL, if any, is told apart by a number after it.
        if str(p.attributes["db.client.connection.pool.name"]).startswith(pool_name(store.engine))
    }
    assert set(pool) == {"used", "idle"}
    assert pool["idle"] >= 1  # the append gave its connection back


def test_a_nested_lock_and_a_failed_call(recorded: Recorded, store: SQLFileStore) -> None:
    with store.lock("outer"), store.lock("inner"):
        store.write("file", "x")
    with pytest.raises(FileNotFoundError):
        store.read("missing")

    spans = recorded.finished()
    outer, inner = sorted(
        (s for s in spans if s.name == "sqlstore.lock"), key=lambda s: s.start_time or 0
    )
    assert outer.attributes and outer.attributes["sqlstore.lock.nested"] is False
    assert inner.attributes and inner.attributes["sqlstore.lock.nested"] is True
    assert _children(spans, outer) == ["sqlstore.lock"]
    assert _children(spans, inner) == ["sqlstore.write"]
    (read,) = [s for s in spans if s.name == "sqlstore.read"]
    assert read.status.status_code is StatusCode.ERROR
    assert read.attributes and read.attributes["error.type"] == "FileNotFoundError"
    assert read.status.description == "FileNotFoundError"  # not its message: it names the path
    assert not read.events


def test_paths_namespaces_and_content_stay_out_unless_asked_for(
    engine: sa.Engine,
) -> None:
    secret = f"secret-{uuid.uuid4().hex}"

    def use(found: Recorded) -> str:
        store = SQLFileStore(engine, f"ns-{secret}")
        with store.lock(f"{secret}.lock"):
            store.write(f"dir-{secret}/file-{secret}", f"content-{secret}")
        store.read(f"dir-{secret}/file-{secret}")
        store.exists(f"dir-{secret}")
        store.list(f"dir-{secret}")
        for failing in (
            lambda: store.read(f"missing-{secret}"),
            lambda: store.write(f"dir-{secret}/file-{secret}/below", "x"),  # refused
        ):
            with pytest.raises(OSError):
                failing()
        store.delete(f"dir-{secret}")
        return _everything(found)

    default = _providers()
    telemetry.instrument(default.tracer_provider, default.meter_provider)
    try:
        shown = use(default)
    finally:
        telemetry.uninstrument()
    assert "sqlstore.write" in shown  # the dump holds the spans...
    assert secret not in shown  # ...but none of what was stored, nor where

    asked = _providers()
    telemetry.instrument(asked.tracer_provider, asked.meter_provider, include_paths=True)
    try:
        shown = use(asked)
    finally:
        telemetry.uninstrument()
    assert f"dir-{secret}/file-{secret}" in shown and f"ns-{secret}" in shown
    assert f"content-{secret}" not in shown  # content never


def _everything(found: Recorded) -> str:
    """Every span's and metric's name, attributes, events and status, as text."""
    shown = []
    for span in found.spans.get_finished_spans():
        shown.append(repr((span.name, dict(span.attributes or {}), span.status.description)))
        shown.extend(repr((e.name, dict(e.attributes or {}))) for e in span.events)
    data = found.reader.get_metrics_data()
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points = [dict(p.attributes or {}) for p in metric.data.data_points]
                shown.append(repr((metric.name, points)))
    return "\n".join(shown)


# -- metrics ---------------------------------------------------------------------------


def test_contention_shows_in_the_lock_wait_histogram(
    recorded: Recorded, store: SQLFileStore
) -> None:
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store.lock("contended"):
            holding.set()
            release.wait(10)
            time.sleep(0.3)

    holder = threading.Thread(target=hold)
    holder.start()
    assert holding.wait(10)
    release.set()
    with store.lock("contended", timeout=10):  # waits ~0.3 s for the holder
        pass
    holder.join()

    (point,) = [
        p
        for p in recorded.points("sqlstore.lock.wait.duration")
        if p.attributes["sqlstore.lock.outcome"] == "acquired"
    ]
    assert point.count == 2
    assert point.max >= 0.25  # the waiter's wait
    assert point.min < 0.25  # the holder's, uncontended
    (held,) = recorded.points("sqlstore.lock.block.duration")
    assert held.max >= 0.25


def test_a_caller_waiting_for_a_pooled_connection_is_seen(
    recorded: Recorded, migrated_url: sa.URL
) -> None:
    name = f"pool-{uuid.uuid4().hex}"
    engine = sqlstore.create_engine(
        migrated_url, pool_size=1, max_overflow=0, pool_logging_name=name
    )
    try:
        store = SQLFileStore(engine, f"test-{uuid.uuid4().hex}")

        def gauge(metric: str, **attributes: str) -> float:
            return recorded.total(metric, **{"db.client.connection.pool.name": name, **attributes})

        store.exists("x")  # the pool's one connection exists now
        assert gauge("db.client.connection.max") == 1
        assert gauge("db.client.connection.pending_requests") == 0
        done = threading.Event()
        with store.lock("busy"):  # holds the pool's only connection
            assert gauge("db.client.connection.count", **{"db.client.connection.state": "used"})
            waiter = threading.Thread(target=lambda: (store.exists("x"), done.set()))
            waiter.start()
            deadline = time.monotonic() + 10
            while gauge("db.client.connection.pending_requests") != 1:
                assert time.monotonic() < deadline, "the waiting caller was never counted"
                time.sleep(0.02)
            assert not done.is_set()
        waiter.join(10)
        assert done.is_set()
        assert gauge("db.client.connection.pending_requests") == 0
    finally:
        engine.dispose()


def test_a_lock_timeout_is_counted(recorded: Recorded, store: SQLFileStore) -> None:
    with (
        held_by_another_thread(store, "taken"),
        pytest.raises(sqlstore.LockTimeoutError),
        store.lock("taken", timeout=0.2),
    ):
        pass
    assert recorded.total("sqlstore.timeouts", **{"sqlstore.timeout.kind": "lock"}) == 1
    assert recorded.total("sqlstore.lock.wait.duration", **{"sqlstore.lock.outcome": "timeout"})
    (failed,) = [
        s for s in recorded.finished("sqlstore.lock") if s.status.status_code is StatusCode.ERROR
    ]
    assert failed.attributes and failed.attributes["error.type"] == (
        "sqlstore.errors.LockTimeoutError"
    )


def test_a_pool_timeout_is_counted(recorded: Recorded, migrated_url: sa.URL) -> None:
    engine = sqlstore.create_engine(migrated_url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    try:
        store = SQLFileStore(engine, f"test-{uuid.uuid4().hex}")
        failed: list[BaseException] = []

        def exists() -> None:
            try:
                store.exists("x")
            except BaseException as exc:
                failed.append(exc)

        with store.lock("busy"):  # holds the pool's only connection
            waiter = threading.Thread(target=exists)
            waiter.start()
            waiter.join(10)
        assert [type(e) for e in failed] == [sqlstore.DatabaseTimeoutError]
        assert recorded.total("sqlstore.timeouts", **{"sqlstore.timeout.kind": "pool"}) == 1
        assert recorded.total("sqlstore.timeouts") == 1
    finally:
        engine.dispose()


@SERVERS
def test_a_statement_timeout_is_counted(
    recorded: Recorded, migrated_url: sa.URL, namespace: str
) -> None:
    engine = sqlstore.create_engine(migrated_url, read_timeout=1.0)
    blocker = sa.create_engine(migrated_url, poolclass=sa.pool.NullPool)
    store = SQLFileStore(engine, namespace)
    try:
        store.write("held", "before")
        with blocker.connect() as conn:
            conn.execute(  # holds the row's lock: the write below waits past read_timeout
                sa.text("UPDATE sqlstore_files SET size = size WHERE namespace = :ns"),
                {"ns": namespace},
            )
            with pytest.raises(sqlstore.DatabaseTimeoutError):
                store.write("held", "after")
            conn.rollback()
        timeouts = recorded.total("sqlstore.timeouts", **{"sqlstore.timeout.kind": "statement"})
        assert timeouts == 1
        assert recorded.total("sqlstore.retries") == 0  # a timeout is never retried
    finally:
        engine.dispose()
        blocker.dispose()


def test_a_refused_write_is_counted(recorded: Recorded, store: SQLFileStore) -> None:
    store.write("file", "x")
    with pytest.raises(FileExistsError):
        store.write("file/below", "y")
    with pytest.raises(IsADirectoryError), store.lock("l"):  # refused at the commit
        store.write("file", "z")
        store.write("dir/a", "z")
        store.write("dir", "z")
    assert recorded.total("sqlstore.refusals", **{"error.type": "FileExistsError"}) == 1
    assert recorded.total("sqlstore.refusals", **{"error.type": "IsADirectoryError"}) == 1
    (block,) = recorded.points("sqlstore.lock.block.duration")
    # Refused in the block, or at its commit where writes travel ahead of their answers.
    assert block.attributes["sqlstore.lock.outcome"] in {"rolled_back", "failed"}


@SERVERS
def test_a_retry_after_a_killed_session_is_counted(
    recorded: Recorded, store: SQLFileStore, backend: str
) -> None:
    store.list("")  # the pool now holds a live connection
    assert kill_other_sessions(store.engine, backend) >= 1
    store.write("after", "x")  # fails on the dead connection, then runs again
    assert recorded.total("sqlstore.retries") == 1
    (point,) = recorded.points("sqlstore.retries")
    assert point.attributes["db.system.name"] == backend
    assert point.attributes["error.type"]  # the driver's exception class
    (write,) = recorded.finished("sqlstore.write")
    assert write.status.status_code is StatusCode.UNSET  # the caller saw no error


# -- on and off ------------------------------------------------------------------------


def _methods() -> dict[str, Any]:
    return {name: SQLFileStore.__dict__[name] for name in STORE_METHODS}


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_uninstrument_puts_everything_back(store: SQLFileStore) -> None:
    original = _methods()
    assert hooks.recorder is None and not telemetry.is_instrumented()
    first = _providers()
    telemetry.instrument(first.tracer_provider, first.meter_provider)
    assert _methods()["write"] is not original["write"]
    second = _providers()
    telemetry.instrument(second.tracer_provider, second.meter_provider)  # replaces the first
    store.write("a", "x")
    assert not first.finished() and [s.name for s in second.finished()] == ["sqlstore.write"]
    telemetry.uninstrument()
    telemetry.uninstrument()  # a no-op when off

    # The class is exactly as it was: no wrapper left on any call, no database hook.
    now = _methods()
    assert all(now[name] is original[name] for name in STORE_METHODS)
    assert hooks.recorder is None and not telemetry.is_instrumented()
    store.write("b", "y")
    with store.lock("l"):
        store.read("b")
    assert [s.name for s in second.finished()] == ["sqlstore.write"]
    assert not second.points("db.client.connection.count")  # observed only while on


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_opentelemetry_instrument_finds_the_instrumentor(store: SQLFileStore) -> None:
    (found,) = [e for e in entry_points(group="opentelemetry_instrumentor") if e.name == "sqlstore"]
    instrumentor = found.load()()
    providers = _providers()
    instrumentor.instrument(
        tracer_provider=providers.tracer_provider, meter_provider=providers.meter_provider
    )
    try:
        assert telemetry.is_instrumented()
        store.exists("x")
    finally:
        instrumentor.uninstrument()
    assert not telemetry.is_instrumented()
    assert [s.name for s in providers.finished()] == ["sqlstore.exists"]


# Hides every opentelemetry module, as in an environment without the otel extra.
_WITHOUT_OPENTELEMETRY = """
import importlib.abc, sys

class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Hide())
"""


@pytest.mark.nodb
def test_without_opentelemetry_instrument_names_the_extra_and_the_rest_works(
    tmp_path: Path,
) -> None:
    script = _WITHOUT_OPENTELEMETRY + textwrap.dedent(
        f"""
        import sqlstore, sqlstore.telemetry
        url = "sqlite:///{tmp_path / "store.db"}"
        sqlstore.migrate(url)
        with sqlstore.SQLFileStore.from_url(url, "ns") as store:
            with store.lock("l"):
                store.write("a/b", "x")
            assert store.read("a/b") == "x" and store.list("a") == ["a/b"]
        try:
            sqlstore.telemetry.instrument()
        except ImportError as exc:
            print("ImportError:", exc)
        assert not sqlstore.telemetry.is_instrumented()
        assert not any(m.startswith("opentelemetry") for m in sys.modules)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "ImportError: sqlstore.telemetry needs the OpenTelemetry API" in done.stdout
    assert "sqlstore[otel]" in done.stdout
