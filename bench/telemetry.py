"""What sqlstore's telemetry costs a store call: off, on with no SDK, on with the SDK.

    uv run python -m bench.telemetry [--url URL] [--calls 2000]

Times each call on its own, interleaved in batches (:func:`bench.harness.interleave`), in
one process; every batch first puts telemetry in its variant's state:

* ``off``: never instrumented, or uninstrumented (the same: the original methods);
* ``api``: ``instrument()`` with OpenTelemetry's no-op providers (the API installed, no
  SDK configured);
* ``sdk``: ``instrument()`` with the SDK's providers: every span recorded and handed to a
  batch processor (its exporter drops them), metrics aggregated for a reader.

Prints the median per call and each variant's ratio to ``off``. ``--count N --state S``
instead runs N ``exists`` calls in state S and nothing else, for an instruction count
under ``valgrind --tool=callgrind`` (the difference of two counts over the calls).
"""

from __future__ import annotations

import argparse
import tempfile
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import bench  # noqa: F401  (prepares the process as every bench run)
import sqlstore
from bench.harness import Variant, interleave, summarize
from sqlstore import telemetry

STATES = ("off", "api", "sdk")


def _switch(state: str) -> Callable[[], None]:
    """A function that puts telemetry into ``state``."""
    if state == "off":
        return telemetry.uninstrument
    if state == "api":
        from opentelemetry.metrics import NoOpMeterProvider
        from opentelemetry.trace import NoOpTracerProvider

        tracer: Any = NoOpTracerProvider()
        meter: Any = NoOpMeterProvider()
    else:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

        class Drop(SpanExporter):
            def export(self, spans: Sequence[Any]) -> Any:
                from opentelemetry.sdk.trace.export import SpanExportResult

                return SpanExportResult.SUCCESS

        tracer = TracerProvider()
        tracer.add_span_processor(BatchSpanProcessor(Drop()))
        meter = MeterProvider(metric_readers=[InMemoryMetricReader()])
    return lambda: telemetry.instrument(tracer, meter)


def _rows(store: sqlstore.SQLFileStore) -> dict[str, Callable[[int], object]]:
    event = "x" * 1024
    store.write("events/e", event)
    store.write("events/f", event)
    # read_ahead=0 elsewhere would change nothing here: every read is of one named file.

    def lock_block(i: int) -> None:
        with store.lock("events/.lock"):
            pass

    def append(i: int) -> None:  # the SDK's append: a lock block, a check, a write
        with store.lock("events/.lock"):
            store.exists(f"events/n-{i}")
            store.write(f"events/n-{i}", event)

    return {
        "exists": lambda i: store.exists("events/e"),
        "read": lambda i: store.read("events/e"),
        "write 1 KiB": lambda i: store.write(f"events/w-{i % 50}", event),
        "list (3 files)": lambda i: store.list("events"),
        "lock block (empty)": lock_block,
        "append-like block": append,
    }


def measure(url: str, calls: int, batch: int) -> None:
    """Print the per-call table for ``url``."""
    engine = sqlstore.create_engine(url)
    store = sqlstore.SQLFileStore(engine, f"bench-telemetry-{uuid.uuid4().hex}")
    switches = {state: _switch(state) for state in STATES}
    try:
        print(f"\n{engine.dialect.name}: median µs per call, ratio to off ({calls} calls each)")
        print(f"{'row':<22}" + "".join(f"{s:>10}" for s in STATES) + "    api/off  sdk/off")
        for row, call in _rows(store).items():
            variants = {
                state: Variant(call, prepare=lambda ids, s=switches[state]: s()) for state in STATES
            }
            samples = interleave(variants, calls, batch)
            medians = {state: summarize(samples[state]).median for state in STATES}
            ratios = [medians[s] / medians["off"] for s in ("api", "sdk")]
            print(
                f"{row:<22}"
                + "".join(f"{medians[s]:>10.1f}" for s in STATES)
                + "".join(f"{r:>9.2f}x" for r in ratios)
            )
    finally:
        telemetry.uninstrument()
        store.delete("")
        engine.dispose()


def count(url: str, calls: int, state: str) -> None:
    """Run ``calls`` ``exists`` calls in ``state`` (for callgrind)."""
    engine = sqlstore.create_engine(url)
    store = sqlstore.SQLFileStore(engine, "bench-telemetry-count")
    store.exists("warm")  # connect, check the schema, prepare: outside the difference
    _switch(state)()
    for _ in range(calls):
        store.exists("events/e")
    telemetry.uninstrument()
    engine.dispose()


def main(argv: list[str] | None = None) -> None:
    """Run the table, or the callgrind workload."""
    parser = argparse.ArgumentParser(prog="python -m bench.telemetry", description=__doc__)
    parser.add_argument("--url", action="append", help="default: a SQLite file")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--count", type=int, help="only run this many calls (callgrind)")
    parser.add_argument("--state", choices=STATES, default="off")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        urls = args.url or [f"sqlite:///{tmp}/bench.db"]
        for url in urls:
            sqlstore.migrate(url)
            if args.count is not None:
                count(url, args.count, args.state)
            else:
                measure(url, args.calls, args.batch)


if __name__ == "__main__":
    main()
