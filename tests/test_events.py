"""SQLAlchemy's cursor events and echo logging see every statement sqlstore runs.

Checked with the tools people attach: OpenTelemetry's SQLAlchemy instrumentation with
the SDK's in-memory exporter (one span per statement, ``db.system`` right, nested under
the caller's span), plain ``before_cursor_execute``/``after_cursor_execute``/
``handle_error`` listeners, and ``echo=True``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy.engine import URL

import sqlstore
from sqlstore import observing


@pytest.fixture
def fresh_engine(migrated_url: URL) -> Iterator[sa.Engine]:
    """An engine of its own: listeners added to it never reach other tests."""
    engine = sqlstore.create_engine(migrated_url)
    yield engine
    engine.dispose()


def _statements(engine: sa.Engine) -> list[tuple[str, str, Any]]:
    """Every cursor event on ``engine``, as (event, SQL, parameters), in order."""
    seen: list[tuple[str, str, Any]] = []

    @sa.event.listens_for(engine, "before_cursor_execute")
    def before(conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: bool) -> None:
        assert isinstance(conn, sa.Connection) and conn.engine is engine
        context.sqlstore_test = sql  # listeners keep state on the context
        seen.append(("before", sql, params))

    @sa.event.listens_for(engine, "after_cursor_execute")
    def after(conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: bool) -> None:
        assert context.sqlstore_test == sql
        seen.append(("after", sql, params))

    @sa.event.listens_for(engine, "handle_error")
    def failed(context: Any) -> None:
        seen.append(("error", context.statement, context.parameters))

    return seen


def test_cursor_listeners_see_every_statement_of_each_call(
    fresh_engine: sa.Engine, namespace: str
) -> None:
    seen = _statements(fresh_engine)
    store = sqlstore.SQLFileStore(fresh_engine, namespace)
    assert not store.exists("x")
    assert "sqlstore_alembic_version" in seen[0][1]  # the engine's one schema check
    seen.clear()
    store.write("events/a.json", "one")
    writes = [s for s in seen if s[0] == "before"]
    assert len(writes) == 1
    assert "sqlstore_files" in writes[0][1]
    assert b"one" in [bytes(v) for v in _values(writes[0][2]) if isinstance(v, bytes | bytearray)]
    assert [e for e, _, _ in seen] == ["before", "after"]

    seen.clear()
    assert store.read("events/a.json") == "one"
    assert store.list("events") == ["events/a.json"]
    assert store.exists("events/a.json")
    assert [e for e, _, _ in seen] == ["before", "after"] * 3

    seen.clear()
    with store.lock("events/.lock"):
        store.write("events/b.json", "two")
        assert store.read("events/b.json") == "two"
    events = [e for e, _, _ in seen]
    assert events == ["before", "after"] * (len(events) // 2)
    sqls = [sql for e, sql, _ in seen if e == "before"]
    assert any("BEGIN" in sql.upper() or "START TRANSACTION" in sql.upper() for sql in sqls)
    assert sqls[-1].upper().startswith(("COMMIT", "SELECT RELEASE"))
    written = [i for i, sql in enumerate(sqls) if "INSERT" in sql.upper()]
    read = [i for i, sql in enumerate(sqls) if sql.startswith("SELECT sqlstore_files.content")]
    assert len(written) == 1 and len(read) == 1
    assert written[0] < read[0] < len(sqls) - 1  # in the order the block ran them
    store.delete("")


def test_handle_error_sees_a_refused_write(fresh_engine: sa.Engine, namespace: str) -> None:
    seen = _statements(fresh_engine)
    store = sqlstore.SQLFileStore(fresh_engine, namespace)
    store.write("a", "file")
    seen.clear()
    with pytest.raises(FileExistsError):
        store.write("a/b", "below a file")
    assert [e for e, _, _ in seen] == ["before", "error"]
    store.delete("")


def _values(params: Any) -> list[Any]:
    return list(params.values()) if isinstance(params, dict) else list(params)


@pytest.fixture
def exporter(fresh_engine: sa.Engine) -> Iterator[tuple[InMemorySpanExporter, TracerProvider]]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    # The instrumentor as an application runs it. It declares SQLAlchemy < 2.1, so on
    # SQLAlchemy 2.1 it must be told to skip that check (skip_dep_check); it then also
    # patches the asyncio extension, hence greenlet among the dev dependencies.
    instrumentor = SQLAlchemyInstrumentor()
    instrumentor.instrument(engine=fresh_engine, tracer_provider=provider, skip_dep_check=True)
    try:
        yield memory, provider
    finally:
        instrumentor.uninstrument()
        provider.shutdown()


def test_opentelemetry_gets_one_span_per_statement_under_the_callers_span(
    fresh_engine: sa.Engine,
    namespace: str,
    db_dialect: str,
    exporter: tuple[InMemorySpanExporter, TracerProvider],
) -> None:
    memory, provider = exporter
    counted = _statements(fresh_engine)
    store = sqlstore.SQLFileStore(fresh_engine, namespace)
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("caller") as caller:
        store.write("events/a.json", "one")
        store.read("events/a.json")
        store.list("events")
        with store.lock("events/.lock"):
            store.write("events/b.json", "two")
    statements = [sql for e, sql, _ in counted if e == "before"]
    spans = [s for s in memory.get_finished_spans() if s.name != "caller"]
    assert len(spans) == len(statements) >= 6
    caller_id = caller.get_span_context().span_id
    for span in spans:
        assert span.parent is not None and span.parent.span_id == caller_id
        assert span.attributes is not None
        assert span.attributes["db.system"] == db_dialect
        assert span.attributes["db.statement"] in statements
    store.delete("")


def test_echo_logs_every_statement(
    migrated_url: URL, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    engine = sqlstore.create_engine(migrated_url, echo=True)
    try:
        store = sqlstore.SQLFileStore(engine, namespace)
        store.write("f", "x")  # the first call also checks the schema
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="sqlalchemy.engine.Engine"):
            store.write("f", "logged")
            assert store.read("f") == "logged"
            store.list("")
        logged = [r.getMessage() for r in caplog.records if r.name.startswith("sqlalchemy.engine")]
        statements = [m for m in logged if "sqlstore_files" in m]
        assert len(statements) == 3
        store.delete("")
    finally:
        engine.dispose()


def test_the_engine_logger_at_info_logs_every_statement(
    migrated_url: URL, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLAlchemy's documented switch: ``sqlalchemy.engine`` set to INFO, no ``echo``."""
    engine = sqlstore.create_engine(migrated_url)
    try:
        store = sqlstore.SQLFileStore(engine, namespace)
        store.write("f", "x")
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="sqlalchemy.engine"):
            store.write("f", "logged")
            assert store.read("f") == "logged"
        logged = [r.getMessage() for r in caplog.records if r.name.startswith("sqlalchemy.engine")]
        assert len([m for m in logged if "sqlstore_files" in m]) == 2
        store.delete("")
    finally:
        engine.dispose()


def test_inherited_info_logs_nothing(
    migrated_url: URL, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """INFO only inherited (the OpenHands SDK raises ``sqlalchemy`` and the root to INFO)
    logs no statement and keeps the plain path: that logging set-up would otherwise log
    every statement of every call."""
    engine = sqlstore.create_engine(migrated_url)
    parent = logging.getLogger("sqlalchemy")
    before = parent.level
    try:
        store = sqlstore.SQLFileStore(engine, namespace)
        store.write("f", "x")
        caplog.clear()
        parent.setLevel(logging.INFO)
        with caplog.at_level(logging.INFO):  # the root logger
            assert engine.logger.isEnabledFor(logging.INFO)  # plain SQLAlchemy would log
            store.write("f", "quiet")
            assert store.read("f") == "quiet"
            with store.lock("l"):
                store.write("g", "in a block")
        assert not [r for r in caplog.records if r.name.startswith("sqlalchemy.engine")]
        store.delete("")
    finally:
        parent.setLevel(before)
        engine.dispose()


def test_no_listener_no_observer(fresh_engine: sa.Engine, namespace: str) -> None:
    """Without listeners or logging, statements go straight to the driver's cursor."""
    store = sqlstore.SQLFileStore(fresh_engine, namespace)
    store.write("f", "x")
    db = sqlstore.database.database_for(fresh_engine)
    conn = db._acquire()
    try:
        assert conn.observer is None
        _statements(fresh_engine)
    finally:
        db.release(conn)
    conn = db._acquire()
    try:
        assert conn.observer is not None  # a listener added since is seen at once
    finally:
        db.release(conn)
    store.delete("")


def test_inherited_info_logs_nothing_whatever_the_logger_class(migrated_url: URL) -> None:
    """An application's logger class (``logging.setLoggerClass``) is not an echo flag."""

    class AppLogger(logging.Logger):
        pass

    logging.setLoggerClass(AppLogger)
    try:  # an engine with a logging_name gets a logger of its own, made now
        engine = sqlstore.create_engine(migrated_url, logging_name=f"app{id(AppLogger):x}")
    finally:
        logging.setLoggerClass(logging.Logger)
    parent = logging.getLogger("sqlalchemy")
    before = parent.level
    try:
        assert type(engine.logger) is AppLogger
        parent.setLevel(logging.INFO)
        assert engine.logger.isEnabledFor(logging.INFO)  # plain SQLAlchemy would log
        assert not observing.wanted(engine)
        engine.echo = True  # SQLAlchemy's own switch still counts
        assert observing.wanted(engine)
    finally:
        parent.setLevel(before)
        engine.dispose()
