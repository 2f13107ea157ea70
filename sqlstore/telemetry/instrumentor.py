"""sqlstore as an OpenTelemetry instrumentor, for ``opentelemetry-instrument``.

The ``opentelemetry_instrumentor`` entry point names :class:`SQLStoreInstrumentor`, so
auto-instrumentation turns sqlstore's telemetry on with the global providers. In code,
:func:`sqlstore.telemetry.instrument` does the same without needing the
``opentelemetry-instrumentation`` package this module imports.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

# The package ships py.typed, yet mypy sees no BaseInstrumentor in it (its module is
# untyped inside): the base class is Any to mypy.
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)

from . import instrument, uninstrument

__all__ = ["SQLStoreInstrumentor"]


class SQLStoreInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """``SQLStoreInstrumentor().instrument(tracer_provider=..., meter_provider=...)``.

    Takes the keyword arguments of :func:`sqlstore.telemetry.instrument`.
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        """None beyond sqlstore itself, which is installed wherever this is found."""
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        instrument(
            kwargs.get("tracer_provider"),
            kwargs.get("meter_provider"),
            include_paths=bool(kwargs.get("include_paths", False)),
        )

    def _uninstrument(self, **kwargs: Any) -> None:
        uninstrument()
