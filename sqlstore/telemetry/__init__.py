"""sqlstore's own spans and metrics, through the OpenTelemetry API (the ``otel`` extra).

Off until :func:`instrument` is called, and then free of cost again after
:func:`uninstrument`: instrumenting wraps the public methods of
:class:`~sqlstore.SQLFileStore` and sets the database layer's hook
(:mod:`sqlstore.telemetry.hooks`); uninstrumenting puts the original methods back.
Nothing here imports OpenTelemetry until :func:`instrument` runs, so sqlstore works the
same without it.

Spans, one per store call, each a child of the caller's current span:

- `sqlstore.write`, `sqlstore.read` (also for `read_bytes`), `sqlstore.exists`,
  `sqlstore.list`, `sqlstore.delete`: the [`SQLFileStore`][sqlstore.SQLFileStore] call.
- `sqlstore.lock`: a lock block, from its wait to its commit; the calls made inside it
  are its children.

Their attributes: `db.system.name` and `db.system` (`postgresql`, `mysql`, `sqlite`),
`sqlstore.namespace.hash` ([`namespace_hash`][sqlstore.telemetry.namespace_hash]); on a
lock span `sqlstore.lock.wait` (seconds until the lock was held) and
`sqlstore.lock.nested`; on a failed call `error.type` and an error status. Paths,
namespaces and exception messages (which name paths) are left out unless
`include_paths=True`, which adds `sqlstore.path` and `sqlstore.namespace` and records
exceptions. Content is never recorded.

Metrics, each with `db.system.name`:

- `db.client.connection.count` ({connection}): pooled connections by
  `db.client.connection.state` (`used`, `idle`).
- `db.client.connection.pending_requests` ({request}): callers waiting for a pooled
  connection.
- `db.client.connection.max` ({connection}): the most connections the pool opens.
- `sqlstore.lock.wait.duration` (s): from entering a lock block to holding its lock or
  giving up, by `sqlstore.lock.outcome` (`acquired`, `timeout`, `error`).
- `sqlstore.lock.block.duration` (s): from the lock held to the block's end, by
  `sqlstore.lock.outcome` (`committed`, `rolled_back`, `failed`).
- `sqlstore.retries` ({retry}): work run again on a fresh connection after a transient
  failure, by `error.type`.
- `sqlstore.timeouts` ({timeout}): by `sqlstore.timeout.kind`: `lock` (not acquired in
  time), `statement` (no answer within `read_timeout`), `pool` (no pooled connection
  became free).
- `sqlstore.refusals` ({refusal}): writes the database refused by the tree rules, by
  `error.type` (`FileExistsError`, `IsADirectoryError`).

The pool metrics also carry `db.client.connection.pool.name`: the pool's
`pool_logging_name`, else the engine's URL without user and password (engines on one
URL are numbered in the order they were made). They are observed when the meter
provider collects, never on a store call.

Example:
    >>> from opentelemetry.sdk.trace import TracerProvider
    >>> import sqlstore.telemetry
    >>> sqlstore.telemetry.instrument(tracer_provider=TracerProvider())
    >>> sqlstore.telemetry.uninstrument()
"""

from __future__ import annotations

import hashlib
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._otel import Telemetry

__all__ = ["instrument", "is_instrumented", "namespace_hash", "uninstrument"]

_lock = threading.Lock()
_active: Telemetry | None = None

#: What :func:`instrument` says when OpenTelemetry is not installed.
MISSING_API = (
    "sqlstore.telemetry needs the OpenTelemetry API, which is not installed: install "
    "sqlstore with the otel extra (`uv add 'sqlstore[otel]'` or "
    "`pip install 'sqlstore[otel]'`), plus an OpenTelemetry SDK to export what it records"
)


def instrument(
    tracer_provider: Any = None,
    meter_provider: Any = None,
    *,
    include_paths: bool = False,
) -> None:
    """Turn sqlstore's spans and metrics on, process-wide, for every store and engine.

    Calling it again replaces the providers and options of the previous call.

    Args:
        tracer_provider: An OpenTelemetry ``TracerProvider``; ``None`` takes the global one.
        meter_provider: An OpenTelemetry ``MeterProvider``; ``None`` takes the global one.
        include_paths: Also record paths, namespaces and exception messages (which name
            paths). Off by default: spans carry only :func:`namespace_hash`.

    Raises:
        ImportError: the OpenTelemetry API is not installed (the ``otel`` extra).
    """
    global _active
    try:
        from ._otel import Telemetry
    except ImportError as exc:
        if not (exc.name or "").startswith("opentelemetry"):
            raise
        raise ImportError(MISSING_API, name=exc.name) from exc
    with _lock:
        if _active is not None:
            _active.stop()
        _active = Telemetry(tracer_provider, meter_provider, include_paths=include_paths)
        _active.start()


def uninstrument() -> None:
    """Turn telemetry off: the original store methods and no database hook (no cost).

    A no-op if telemetry is off. Metrics already recorded stay with the meter provider.
    """
    global _active
    with _lock:
        if _active is not None:
            _active.stop()
            _active = None


def is_instrumented() -> bool:
    """Whether :func:`instrument` is in effect."""
    return _active is not None


def namespace_hash(namespace: str) -> str:
    """The ``sqlstore.namespace.hash`` attribute of a namespace's spans: 16 hex digits.

    Lets an operator find a conversation's spans from its id without the spans carrying
    the id itself: ``namespace_hash(sqlstore.sdk.namespace_for(conversation_id))``.
    """
    digest = hashlib.blake2b(namespace.encode("utf-8"), digest_size=8, person=b"sqlstore-ns")
    return digest.hexdigest()
