"""The OpenTelemetry side of :mod:`sqlstore.telemetry`: imported only by ``instrument()``.

A :class:`Telemetry` is one ``instrument()`` call: its tracer and instruments, the store
methods it wrapped and the database hook it set. ``stop()`` undoes both.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from types import TracebackType
from typing import Any

import sqlalchemy
from opentelemetry import context, metrics, trace
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.trace import Span, Status, StatusCode
from sqlalchemy.engine import URL, Engine

from .. import database
from ..errors import LockTimeoutError
from ..store import SQLFileStore
from . import hooks, namespace_hash

SCOPE = "sqlstore"
#: Store methods traced, and their spans' names (``read`` goes through ``read_bytes``).
TRACED = {
    "write": "sqlstore.write",
    "read_bytes": "sqlstore.read",
    "exists": "sqlstore.exists",
    "list": "sqlstore.list",
    "delete": "sqlstore.delete",
}
#: Bucket bounds in seconds: a lock taken at once takes ~0.1-1 ms, a contended one up to
#: its timeout (30 s by default); a block lasts about as long as its few statements.
DURATION_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
_CACHE_LIMIT = 4096
OUTCOME = "sqlstore.lock.outcome"


class Telemetry:
    """One ``instrument()`` call: what it records with, and what it changed."""

    def __init__(self, tracer_provider: Any, meter_provider: Any, *, include_paths: bool) -> None:
        import sqlstore

        version = sqlstore.__version__
        self.include_paths = include_paths
        self.tracer = trace.get_tracer(SCOPE, version, tracer_provider)
        self.meter: Meter = metrics.get_meter(SCOPE, version, meter_provider)
        meter = self.meter
        self.lock_wait = meter.create_histogram(
            "sqlstore.lock.wait.duration",
            unit="s",
            description="Time from entering a lock block to holding its lock (or giving up).",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.lock_block = meter.create_histogram(
            "sqlstore.lock.block.duration",
            unit="s",
            description="Time a lock was held: from acquired to the block's commit or rollback.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.retries = meter.create_counter(
            "sqlstore.retries",
            unit="{retry}",
            description="Work run again on a fresh connection after a transient failure.",
        )
        self.timeouts = meter.create_counter(
            "sqlstore.timeouts",
            unit="{timeout}",
            description="Calls that ran out of time: a lock wait, a statement or a pool wait.",
        )
        self.refusals = meter.create_counter(
            "sqlstore.refusals",
            unit="{refusal}",
            description="Writes the database refused by the tree rules (a file's parent is "
            "a file, or the path is a directory).",
        )
        # Observed when the meter provider collects, never on a store call. An existing
        # instrument of the same name keeps its first callback, so that one reads whichever
        # Telemetry is active on this meter then (see _observe).
        meter.create_observable_up_down_counter(
            "db.client.connection.count",
            callbacks=[functools.partial(_observe, meter, _connections)],
            unit="{connection}",
            description="Pooled connections of sqlstore's engines, by state (used, idle).",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.pending_requests",
            callbacks=[functools.partial(_observe, meter, _pending)],
            unit="{request}",
            description="Callers waiting for a pooled connection to become free.",
        )
        meter.create_observable_up_down_counter(
            "db.client.connection.max",
            callbacks=[functools.partial(_observe, meter, _maximum)],
            unit="{connection}",
            description="The most connections a pool opens (its size plus its overflow).",
        )
        self._originals: dict[str, Any] = {}
        self._attributes: dict[tuple[str, str], Mapping[str, Any]] = {}
        self._systems: dict[tuple[Any, ...], Mapping[str, str]] = {}

    # -- switching on and off ----------------------------------------------------------

    def start(self) -> None:
        """Wrap the store's methods and set the database hook."""
        global _current
        for method, span in TRACED.items():
            self._wrap(method, _traced(self, span, SQLFileStore.__dict__[method]))
        self._wrap("lock", _traced_lock(self, SQLFileStore.__dict__["lock"]))
        hooks.recorder = self
        _current = self

    def stop(self) -> None:
        """Put the original methods back and clear the hook."""
        global _current
        hooks.recorder = None
        _current = None
        for method, original in self._originals.items():
            setattr(SQLFileStore, method, original)
        self._originals.clear()

    def _wrap(self, method: str, wrapper: Callable[..., Any]) -> None:
        self._originals[method] = SQLFileStore.__dict__[method]
        setattr(SQLFileStore, method, wrapper)

    # -- attributes --------------------------------------------------------------------

    def system(self, name: str, **more: str) -> Mapping[str, str]:
        """The attributes of a metric of database ``name``, with ``more`` (cached)."""
        key = (name, *more.items())
        found = self._systems.get(key)
        if found is None:
            found = self._systems[key] = {"db.system.name": name, **more}
        return found

    def attributes(self, store: SQLFileStore) -> Mapping[str, Any]:
        """The attributes of every span of ``store`` (cached: one per namespace)."""
        key = (store._db.name, store._namespace)
        found = self._attributes.get(key)
        if found is None:
            if len(self._attributes) >= _CACHE_LIMIT:
                self._attributes.clear()
            name, namespace = key
            found = {
                "db.system.name": name,
                "db.system": name,
                "sqlstore.namespace.hash": namespace_hash(namespace),
            }
            if self.include_paths:
                found["sqlstore.namespace"] = namespace
            self._attributes[key] = found
        return found

    def fail(self, span: Span, exc: BaseException) -> None:
        """Mark ``span`` failed by ``exc``; its message only if paths may be recorded."""
        kind = error_type(exc)
        span.set_attribute("error.type", kind)
        if self.include_paths:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{kind}: {exc}"))
        else:
            span.set_status(Status(StatusCode.ERROR, kind))

    def timeout(self, system: str, kind: str, error: BaseException) -> None:
        """Count a timeout of ``kind``."""
        more = {"sqlstore.timeout.kind": kind, "error.type": error_type(error)}
        self.timeouts.add(1, self.system(system, **more))

    # -- hooks.Recorder ----------------------------------------------------------------

    def retried(self, database: database.Database, error: BaseException) -> None:
        """Count a retry."""
        self.retries.add(1, self.system(database.name, **{"error.type": error_type(error)}))

    def failed(self, database: database.Database, cause: BaseException, error: Exception) -> None:
        """Count a timeout or a refusal."""
        if isinstance(error, TimeoutError):
            if isinstance(error, LockTimeoutError) and _acquiring.get():
                return  # the lock() that gave up counts it (dialects raise most themselves)
            if isinstance(cause, sqlalchemy.exc.TimeoutError):
                kind = "pool"
            elif isinstance(error, LockTimeoutError):
                kind = "lock"
            else:
                kind = "statement"
            self.timeout(database.name, kind, error)
        # The exceptions of statements.REFUSALS: the only OSErrors translate() makes.
        elif isinstance(error, FileExistsError | IsADirectoryError):
            self.refusals.add(1, self.system(database.name, **{"error.type": error_type(error)}))


def error_type(exc: BaseException) -> str:
    """``error.type``: the exception's class, with its module unless a builtin."""
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


# -- spans -------------------------------------------------------------------------------


def _traced(telemetry: Telemetry, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    tracer = telemetry.tracer
    include_paths = telemetry.include_paths

    @functools.wraps(method)
    def call(self: SQLFileStore, path: str, *args: Any, **kwargs: Any) -> Any:
        attributes = telemetry.attributes(self)
        if include_paths:
            attributes = {**attributes, "sqlstore.path": path}
        span = tracer.start_span(name, attributes=attributes)
        # A span nobody records (no SDK, or not sampled) need not be current: the
        # statements' spans, if any, then hang from the caller's span.
        token = context.attach(trace.set_span_in_context(span)) if span.is_recording() else None
        try:
            return method(self, path, *args, **kwargs)
        except BaseException as exc:
            telemetry.fail(span, exc)
            raise
        finally:
            if token is not None:
                context.detach(token)
            span.end()

    return call


def _traced_lock(telemetry: Telemetry, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def lock(self: SQLFileStore, path: str, *args: Any, **kwargs: Any) -> TracedLock:
        # The original checks the arguments (raising here, as without telemetry).
        return TracedLock(telemetry, self, path, method(self, path, *args, **kwargs))

    return lock


#: Set while a traced ``lock()`` acquires: a lock timeout then is the lock's to count.
_acquiring: ContextVar[bool] = ContextVar("sqlstore_telemetry_acquiring", default=False)


class TracedLock:
    """A lock block in a ``sqlstore.lock`` span, timing its wait and how long it held."""

    def __init__(self, telemetry: Telemetry, store: SQLFileStore, path: str, inner: Any) -> None:
        self._telemetry = telemetry
        self._store = store
        self._path = path
        self._inner = inner
        self._span: Span | None = None
        self._token: Any = None
        self._held = 0.0

    def __enter__(self) -> None:
        telemetry, store = self._telemetry, self._store
        attributes = dict(telemetry.attributes(store))
        attributes["sqlstore.lock.nested"] = store._db.block() is not None
        if telemetry.include_paths:
            attributes["sqlstore.path"] = self._path
        system = store._db.name
        span = telemetry.tracer.start_span("sqlstore.lock", attributes=attributes)
        token = context.attach(trace.set_span_in_context(span)) if span.is_recording() else None
        started = time.monotonic()
        acquiring = _acquiring.set(True)
        try:
            self._inner.__enter__()
        except BaseException as exc:
            waited = time.monotonic() - started
            outcome = "timeout" if isinstance(exc, LockTimeoutError) else "error"
            telemetry.lock_wait.record(waited, telemetry.system(system, **{OUTCOME: outcome}))
            if outcome == "timeout":
                telemetry.timeout(system, "lock", exc)
            span.set_attribute("sqlstore.lock.wait", waited)
            telemetry.fail(span, exc)
            if token is not None:
                context.detach(token)
            span.end()
            raise
        finally:
            _acquiring.reset(acquiring)
        self._held = time.monotonic()
        waited = self._held - started
        telemetry.lock_wait.record(waited, telemetry.system(system, **{OUTCOME: "acquired"}))
        span.set_attribute("sqlstore.lock.wait", waited)
        self._span, self._token = span, token

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        telemetry, span = self._telemetry, self._span
        assert span is not None
        outcome = "committed" if exc is None else "rolled_back"
        try:
            suppressed: bool | None = self._inner.__exit__(exc_type, exc, tb)
            if exc is not None:
                telemetry.fail(span, exc)
            return suppressed
        except BaseException as error:
            if error is not exc:
                outcome = "failed"  # the commit or the rollback itself failed
            telemetry.fail(span, error)
            raise
        finally:
            held = time.monotonic() - self._held
            system = telemetry.system(self._store._db.name, **{OUTCOME: outcome})
            telemetry.lock_block.record(held, system)
            if self._token is not None:
                context.detach(self._token)
            span.end()


# -- pool metrics --------------------------------------------------------------------------

_current: Telemetry | None = None

Observer = Callable[[database.Database, Mapping[str, str]], Iterable[Observation]]


def _observe(meter: Meter, observer: Observer, options: CallbackOptions) -> Iterable[Observation]:
    """What ``observer`` sees on every engine sqlstore knows, if telemetry on ``meter`` is on."""
    active = _current
    if active is None or active.meter is not meter:
        return []
    found: list[Observation] = []
    named: dict[str, int] = {}
    for db in list(database._databases.values()):
        if not _in_use(db.engine.pool):
            continue  # a disposed engine not yet collected, or one never used
        name = pool_name(db.engine)
        # Engines on one URL are told apart by their order of creation.
        same = named[name] = named.get(name, 0) + 1
        if same > 1:
            name = f"{name} ({same})"
        attributes = {"db.system.name": db.name, "db.client.connection.pool.name": name}
        found.extend(observer(db, attributes))
    return found


def _in_use(pool: Any) -> bool:
    """Whether ``pool`` holds or is asked for any connection.

    A pool that keeps no count (``NullPool``, as migrations use) has nothing to report.
    """
    if not hasattr(pool, "checkedout"):
        return False
    return bool(pool.checkedout() or pool.checkedin() or waiting(pool))


def pool_name(engine: Engine) -> str:
    """The pool's ``pool_logging_name``, else the engine's URL without user and password."""
    given = getattr(engine.pool, "logging_name", None)
    if given:
        return str(given)
    url: URL = engine.url
    return url.set(username=None, password=None).render_as_string(hide_password=True)


def _connections(db: database.Database, attributes: Mapping[str, str]) -> Iterable[Observation]:
    pool: Any = db.engine.pool
    return [
        Observation(pool.checkedout(), {**attributes, "db.client.connection.state": "used"}),
        Observation(pool.checkedin(), {**attributes, "db.client.connection.state": "idle"}),
    ]


def _pending(db: database.Database, attributes: Mapping[str, str]) -> Iterable[Observation]:
    return [Observation(waiting(db.engine.pool), attributes)]


def _maximum(db: database.Database, attributes: Mapping[str, str]) -> Iterable[Observation]:
    pool: Any = db.engine.pool
    size, overflow = getattr(pool, "size", None), getattr(pool, "_max_overflow", None)
    if not callable(size) or not isinstance(overflow, int) or overflow < 0:
        return []  # no fixed limit (an unbounded overflow, or no queue at all)
    return [Observation(size() + overflow, attributes)]


def waiting(pool: Any) -> int:
    """How many threads wait for a connection of ``pool`` to be given back.

    A ``QueuePool`` keeps its idle connections in a queue whose waiters block on one
    condition; the condition's list of waiters is the count, read without taking a lock
    (a gauge needs no more), so nothing is added to a checkout to count them.
    """
    queue = getattr(pool, "_pool", None)
    waiters = getattr(getattr(queue, "not_empty", None), "_waiters", None)
    return len(waiters) if waiters is not None else 0
