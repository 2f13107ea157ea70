"""sqlstore's own spans and metrics, through the OpenTelemetry API (the ``otel`` extra).

Off until :func:`instrument` is called, and then free of cost again after
:func:`uninstrument`: instrumenting wraps the public methods of
:class:`~sqlstore.SQLFileStore` and sets the database layer's hook
(:mod:`sqlstore.telemetry.hooks`); uninstrumenting puts the original methods back.
Nothing here imports OpenTelemetry until :func:`instrument` runs, so sqlstore works the
same without it.

Spans (one per store call, a child of the caller's current span):

========================  ============================================================
``sqlstore.write``        :meth:`~sqlstore.SQLFileStore.write`
``sqlstore.read``         :meth:`~sqlstore.SQLFileStore.read` and ``read_bytes``
``sqlstore.exists``       :meth:`~sqlstore.SQLFileStore.exists`
``sqlstore.list``         :meth:`~sqlstore.SQLFileStore.list`
``sqlstore.delete``       :meth:`~sqlstore.SQLFileStore.delete`
``sqlstore.lock``         a lock block, from the wait to its commit; the calls made
                          inside it are its children
========================  ============================================================

Their attributes: ``db.system.name`` and ``db.system`` (``postgresql``, ``mysql``,
``sqlite``), ``sqlstore.namespace.hash`` (:func:`namespace_hash`), on a lock span
``sqlstore.lock.wait`` (seconds until the lock was held) and ``sqlstore.lock.nested``,
on a failed call ``error.type``. Paths, namespaces, content and error messages (which
name paths) are left out unless ``include_paths=True``, which adds ``sqlstore.path``
and ``sqlstore.namespace`` and records exceptions.

Metrics:

==========================================  ===========  ===============================
``db.client.connection.count``              {connection} pooled connections by
                                                         ``db.client.connection.state``
                                                         (``used``, ``idle``)
``db.client.connection.pending_requests``   {request}    callers waiting for a pooled
                                                         connection
``db.client.connection.max``                {connection} the pool's limit (size + overflow)
``sqlstore.lock.wait.duration``             s            from ``lock()`` entered to the
                                                         lock held (or not), by
                                                         ``sqlstore.lock.outcome``
``sqlstore.lock.block.duration``            s            from the lock held to the block
                                                         ended, by ``sqlstore.lock.outcome``
``sqlstore.retries``                        {retry}      work run again after a transient
                                                         failure, by ``error.type``
``sqlstore.timeouts``                       {timeout}    by ``sqlstore.timeout.kind``
                                                         (``lock``, ``statement``, ``pool``)
``sqlstore.refusals``                       {refusal}    writes the database refused by
                                                         the tree rules, by ``error.type``
==========================================  ===========  ===============================

Every metric carries ``db.system.name``; the pool metrics also
``db.client.connection.pool.name`` (the engine's URL without user and password).

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
