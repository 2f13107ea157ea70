"""Telemetry of one agent server replica, for ``agent_server_replicas.py`` to print.

Imported by a replica through ``--import-modules`` when ``SQLSTORE_DEMO_TELEMETRY``
names a directory: sets up the OpenTelemetry SDK with exporters that write into that
directory (every finished span as a line of JSON in ``spans-<pid>.jsonl``, the metrics
every second into ``metrics-<pid>.json``), then turns sqlstore's telemetry on. A
deployment would export to its collector instead (OTLP); the files keep the demo offline.

:func:`summary` reads such a directory back as lines of text.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: The environment variable naming the directory a replica writes its telemetry into.
DIRECTORY = "SQLSTORE_DEMO_TELEMETRY"


def _install(directory: Path) -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import (
        MetricExporter,
        MetricExportResult,
        MetricsData,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    import sqlstore.telemetry

    directory.mkdir(parents=True, exist_ok=True)
    spans_file = directory / f"spans-{os.getpid()}.jsonl"
    metrics_file = directory / f"metrics-{os.getpid()}.json"

    class Spans(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            with spans_file.open("a") as out:
                for span in spans:
                    out.write(span.to_json(indent=None) + "\n")
            return SpanExportResult.SUCCESS

    class Metrics(MetricExporter):
        def export(
            self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
        ) -> MetricExportResult:
            # Cumulative: the latest snapshot holds everything so far.
            temporary = metrics_file.with_suffix(".tmp")
            temporary.write_text(metrics_data.to_json(indent=None))
            temporary.replace(metrics_file)
            return MetricExportResult.SUCCESS

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return True

        def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
            pass

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(Spans()))
    reader = PeriodicExportingMetricReader(Metrics(), export_interval_millis=1000)
    sqlstore.telemetry.instrument(tracer_provider, MeterProvider(metric_readers=[reader]))


if os.environ.get(DIRECTORY):
    _install(Path(os.environ[DIRECTORY]))


# -- reading it back ---------------------------------------------------------------------


def summary(directory: Path) -> list[str]:
    """What the replicas that wrote below ``directory`` recorded, as lines to print."""
    spans = [
        json.loads(line)
        for path in sorted(directory.rglob("spans-*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    lines = []
    names = Counter(span["name"] for span in spans)
    lines.append("spans: " + ", ".join(f"{name} {count}" for name, count in sorted(names.items())))
    tree = _one_append(spans)
    if tree:
        lines.append("the last lock block that wrote (an append), as a span tree:")
        lines.extend(f"  {line}" for line in tree)
    lines.extend(_metrics(directory))
    return lines


def _micros(span: dict[str, Any]) -> float:
    from datetime import datetime

    start = datetime.fromisoformat(span["start_time"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(span["end_time"].replace("Z", "+00:00"))
    return (end - start).total_seconds() * 1e6


def _one_append(spans: list[dict[str, Any]]) -> list[str]:
    """The last lock block that wrote something, with its children, indented."""
    children: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        if span.get("parent_id"):
            children.setdefault(span["parent_id"], []).append(span)
    blocks = [
        span
        for span in spans
        if span["name"] == "sqlstore.lock"
        and any(c["name"] == "sqlstore.write" for c in children.get(span["context"]["span_id"], []))
    ]
    if not blocks:
        return []

    def show(span: dict[str, Any], depth: int) -> list[str]:
        attributes = span["attributes"]
        extra = ""
        if "sqlstore.lock.wait" in attributes:
            extra = f"  (waited {attributes['sqlstore.lock.wait'] * 1e3:.2f} ms for the lock)"
        line = f"{'  ' * depth}{span['name']:<18} {_micros(span):8.0f} µs{extra}"
        below = sorted(children.get(span["context"]["span_id"], []), key=lambda s: s["start_time"])
        return [line] + [shown for child in below for shown in show(child, depth + 1)]

    last = blocks[-1]
    hashed = last["attributes"].get("sqlstore.namespace.hash")
    return [*show(last, 0), f"attributes: db.system.name={last['attributes']['db.system.name']}"
            f" sqlstore.namespace.hash={hashed}"]  # fmt: skip


def _metrics(directory: Path) -> list[str]:
    """Lock contention and the rare events, summed over the replicas' last snapshots."""
    waits: dict[str, list[float]] = {}
    held: list[float] = []
    counts: Counter[str] = Counter()
    pool: Counter[str] = Counter()
    for path in sorted(directory.rglob("metrics-*.json")):
        data = json.loads(path.read_text())
        for resource in data["resource_metrics"]:
            for scope in resource["scope_metrics"]:
                for metric in scope["metrics"]:
                    name = metric["name"]
                    for point in metric["data"]["data_points"]:
                        attributes = point["attributes"]
                        if name == "sqlstore.lock.wait.duration":
                            outcome = attributes["sqlstore.lock.outcome"]
                            stats = waits.setdefault(outcome, [0, 0.0, 0.0])
                            stats[0] += point["count"]
                            stats[1] += point["sum"]
                            stats[2] = max(stats[2], point["max"])
                        elif name == "sqlstore.lock.block.duration":
                            held.append(point["max"])
                        elif name in ("sqlstore.retries", "sqlstore.timeouts", "sqlstore.refusals"):
                            counts[name] += point["value"]
                        elif name == "db.client.connection.count":
                            pool[attributes["db.client.connection.state"]] += point["value"]
    lines = []
    for outcome, (count, total, most) in sorted(waits.items()):
        lines.append(
            f"lock waits ({outcome}): {count:.0f}, mean {total / count * 1e3:.2f} ms,"
            f" longest {most * 1e3:.2f} ms  (sqlstore.lock.wait.duration)"
        )
    if held:
        longest = max(held) * 1e3
        lines.append(f"longest lock block: {longest:.2f} ms  (sqlstore.lock.block.duration)")
    lines.append(
        "retries {:.0f}, timeouts {:.0f}, refusals {:.0f}".format(
            *(counts[n] for n in ("sqlstore.retries", "sqlstore.timeouts", "sqlstore.refusals"))
        )
    )
    if pool:
        lines.append(
            f"pooled connections (each replica's last snapshot): {pool['used']} used,"
            f" {pool['idle']} idle  (db.client.connection.count)"
        )
    return lines
