"""P7: per-call cost under the SDK's default logging, in a child process.

The parent measures everything under Python's default logging (root WARNING). This
child then applies the SDK's default configuration exactly as ``import openhands.sdk``
does when ``LOG_AUTO_CONFIG`` is not disabled (``setup_logging()``: root INFO, a Rich
handler on stderr, and INFO on every logger that was at the root's old level). That
happens after SQLAlchemy and sqlstore are imported: the order in which SQLAlchemy's
``sqlalchemy`` logger, set to WARNING on import, is raised to INFO with the root.

The same engines are then timed under both configurations, interleaved (each
configuration on a namespace of its own): before each batch the child restores the
logger levels and root handlers of one or the other (loggers whose name contains
``sqlstore`` are left alone: they are sqlstore's own).
It also reports whether sqlstore changed any logger that is not its own. stderr goes
to a file, as it would to a log collector.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import sqlalchemy

import sqlstore
from bench.plan import Plan
from bench.procs import context
from bench.results import Results
from bench.subjects import Subject, from_sqlstore
from bench.timing import Variant, interleave, summarize
from bench.workloads import build, setup

LoggerState = tuple[int, bool, bool, tuple[logging.Handler, ...]]
#: The per-call workloads repeated under both logging configurations (1 KiB).
WORKLOADS = (
    "write new 1 KiB",
    "overwrite 1 KiB",
    "read 1 KiB",
    "read_bytes 1 KiB",
    "exists hit",
    "exists miss",
    "list 100 children",
    "delete 1 KiB",
    "lock+unlock",
)
CONTROL = "SELECT 1 on a plain SQLAlchemy engine"
MODES = ("quiet", "info")


def is_sqlstore_logger(name: str) -> bool:
    """Whether a logger is sqlstore's own (sqlstore may configure those as it likes)."""
    return "sqlstore" in name


def snapshot() -> dict[str, LoggerState]:
    """Level, propagate, disabled and handlers of the root and every existing logger."""
    root = logging.getLogger()
    state = {"": (root.level, root.propagate, root.disabled, tuple(root.handlers))}
    for name, lg in logging.Logger.manager.loggerDict.items():
        if isinstance(lg, logging.Logger):
            state[name] = (lg.level, lg.propagate, lg.disabled, tuple(lg.handlers))
    return state


def apply(state: dict[str, LoggerState]) -> None:
    """Restore a snapshot (sqlstore's own loggers excepted); only what differs is set."""
    current = snapshot()
    for name, wanted in state.items():
        if is_sqlstore_logger(name) or current.get(name) == wanted:
            continue
        level, propagate, disabled, handlers = wanted
        lg = logging.getLogger(name or None)
        lg.setLevel(level)  # also clears the loggers' isEnabledFor caches
        lg.propagate = propagate
        lg.disabled = disabled
        lg.handlers = list(handlers)


def touched(before: dict[str, LoggerState], after: dict[str, LoggerState]) -> list[str]:
    """Loggers not sqlstore's own that changed, or appeared configured, between snapshots."""
    out = []
    for name, state in after.items():
        if is_sqlstore_logger(name):
            continue
        old = before.get(name)
        if old is None:
            level, propagate, _disabled, handlers = state
            if level != logging.NOTSET or handlers or not propagate:
                out.append(name or "root")
        elif old != state:
            out.append(name or "root")
    return sorted(out)


def logging_worker(
    targets: dict[str, tuple[str, dict[str, Any]]],
    namespace: str,
    contents: dict[str, str],
    plan: Plan,
    log_path: str,
    out: Any,
) -> None:
    """Child: time sqlstore calls under quiet and SDK INFO logging, interleaved."""
    try:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd, 2)
        os.close(fd)
        quiet = snapshot()
        from openhands.sdk.logger import setup_logging

        setup_logging()
        info = snapshot()
        # One engine per backend; each logging mode gets its own namespace on it, so
        # "write new" under one mode never overwrites the other's files.
        subjects: dict[tuple[str, str], Subject] = {}
        for key, (url, options) in targets.items():
            engine = sqlstore.create_engine(url, **options)
            for mode in MODES:
                store = sqlstore.SQLFileStore(engine, f"{namespace}-{mode}")
                store.write("w/probe", "{}")
                store.read("w/probe")
                subjects[key, mode] = from_sqlstore(key, store)
        changed = touched(info, snapshot())
        apply(quiet)
        for subject in subjects.values():
            setup(subject, contents, (100,))
        apply(info)
        size_before = os.fstat(2).st_size
        samples: dict[str, list[float]] = {}
        for workload in build(contents, plan):
            if workload.name not in WORKLOADS:
                continue
            variants: dict[str, Variant] = {}
            for (key, mode), subject in subjects.items():
                state = quiet if mode == "quiet" else info
                variants[f"{workload.name}|{key}|{mode}"] = _with_state(
                    workload.make(subject), state
                )
            samples.update(interleave(variants, plan.logging_calls, plan.batch))
        apply(info)
        logged = os.fstat(2).st_size - size_before
        control = _control(targets, plan, quiet, info)
        apply(info)
        out.put(
            {
                "samples": samples,
                "control": control,
                "touched": changed,
                "log_bytes": logged,
                "root_level": logging.getLevelName(logging.getLogger().level),
                "error": None,
            }
        )
    except BaseException as exc:
        out.put({"error": f"{type(exc).__name__}: {exc}"})


def _control(
    targets: dict[str, tuple[str, dict[str, Any]]],
    plan: Plan,
    quiet: dict[str, LoggerState],
    info: dict[str, LoggerState],
) -> dict[str, Any]:
    """The trap itself, to show this harness sees it: a default SQLAlchemy engine."""
    key, (url, _options) = next(iter(targets.items()))
    engine = sqlalchemy.create_engine(url)
    stmt = sqlalchemy.text("SELECT 1")

    def call(_i: int) -> None:
        with engine.connect() as conn:
            conn.execute(stmt).scalar()

    variants = {
        mode: _with_state(Variant(call), state)
        for mode, state in (("quiet", quiet), ("info", info))
    }
    samples = interleave(variants, plan.logging_calls, plan.batch)
    engine.dispose()
    q, i = summarize(samples["quiet"], "us"), summarize(samples["info"], "us")
    return {
        "what": CONTROL,
        "variant": key,
        "quiet_us": round(q.median, 1),
        "info_us": round(i.median, 1),
        "ratio": round(i.median / q.median, 2),
    }


def _with_state(variant: Variant, state: dict[str, LoggerState]) -> Variant:
    inner = variant.prepare

    def prepare(ids: range) -> None:
        apply(state)
        if inner is not None:
            inner(ids)

    return Variant(variant.call, prepare, variant.before_each)


def run(
    targets: dict[str, tuple[str, dict[str, Any]]],
    namespace: str,
    contents: dict[str, str],
    plan: Plan,
    log_path: str,
    results: Results,
    log: Callable[[str], None] = print,
) -> None:
    """Run the P7 child and record its rows (``<workload>, quiet`` and ``..., SDK INFO``)."""
    ctx = context()
    out = ctx.Queue()
    proc = ctx.Process(
        target=logging_worker, args=(targets, namespace, contents, plan, log_path, out)
    )
    proc.start()
    report = out.get(timeout=600)
    proc.join(60)
    if report.get("error"):
        raise RuntimeError(f"logging child failed: {report['error']}")
    for label, values in report["samples"].items():
        workload, key, mode = label.split("|")
        suffix = "quiet logging" if mode == "quiet" else "SDK INFO logging"
        results.add(f"{workload}, {suffix}", key, summarize(values, "us"), "P7")
    results.checks["P7"] = {
        "control": report["control"],
        "touched_loggers": report["touched"],
        "log_bytes_written": report["log_bytes"],
        "root_level": report["root_level"],
        "workloads": list(WORKLOADS),
    }
    log(
        f"  touched loggers: {report['touched'] or 'none'}; "
        f"{report['log_bytes']} bytes logged under INFO; control: {report['control']}"
    )
