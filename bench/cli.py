"""Command line and the order of the run."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import procs
from bench.databases import BACKENDS, DEFAULT_MYSQL_URL, DEFAULT_PG_URL
from bench.plan import FULL, QUICK

HERE = Path(__file__).resolve().parent


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="sqlstore against raw drivers and the OpenHands SDK's stores, interleaved.",
    )
    p.add_argument("--quick", action="store_true", help="fewer samples (under 2 minutes)")
    p.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help="comma-separated subset of postgresql,sqlite,mysql (default: all)",
    )
    p.add_argument("--pg-url", default=DEFAULT_PG_URL, help=f"default: {DEFAULT_PG_URL}")
    p.add_argument("--mysql-url", default=DEFAULT_MYSQL_URL, help=f"default: {DEFAULT_MYSQL_URL}")
    p.add_argument("--out", type=Path, default=HERE / "results", help="default: bench/results")
    args = p.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = set(args.backends) - set(BACKENDS)
    if unknown:
        p.error(f"unknown backends: {', '.join(sorted(unknown))}")
    return args


def log(message: str) -> None:
    """Progress goes to stderr; the tables go to stdout."""
    print(message, file=sys.stderr, flush=True)


@contextmanager
def section(results: Any, name: str) -> Iterator[None]:
    """Time a section of the run and log its start and end."""
    log(f"== {name}")
    started = time.perf_counter()
    try:
        yield
    finally:
        results.timings[name] = round(time.perf_counter() - started, 1)
        log(f"   ({results.timings[name]:.1f}s)")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the tables; write the result files."""
    args = parse(argv)
    plan = QUICK if args.quick else FULL
    started = time.perf_counter()
    load_before = _load()
    date = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    # The fork server imports the SDK while this process does the same.
    procs.start_server()
    log("importing the OpenHands SDK (quiet logging) ...")
    from bench import report
    from bench.databases import prepare
    from bench.machine import describe
    from bench.results import Results

    tmp = Path(tempfile.mkdtemp(prefix="sqlstore-bench-"))
    results = Results()
    dbs = prepare(args.backends, args.pg_url, args.mysql_url, tmp)
    for name, why in dbs.skipped.items():
        log(f"skipping {name}: {why}")
    if not dbs.backends:
        log("no backend runs")
        return 2
    machine = describe(dbs)
    run_id = f"bench-{datetime.now(UTC).strftime('%Y%m%d%H%M%S')}"
    failed: list[str] = []
    try:
        _run(dbs, plan, run_id, tmp, results, failed)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    meta = {
        "date": date,
        "mode": plan.name,
        "duration_s": round(time.perf_counter() - started, 1),
        "load_average": {"start": load_before, "end": _load()},
        "machine": machine,
        "plan": plan.__dict__,
        "failed_sections": failed,
    }
    items = report.targets(results, machine)
    print(report.markdown(results, meta, items))
    stem = "latest" if plan is FULL else "latest-quick"
    js, md = report.write(args.out, results, meta, items, stem)
    log(f"wrote {js} and {md}")
    default_out = args.out.resolve() == (HERE / "results").resolve()
    if plan is FULL and default_out and report.update_readme(HERE / "README.md", meta, items):
        log("updated the targets table in bench/README.md")
    log(f"total {meta['duration_s']:.0f}s")
    return 1 if failed else 0


def _load() -> list[float]:
    """The 1, 5 and 15-minute load averages (other work on the machine skews results)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _run(dbs: Any, plan: Any, run_id: str, tmp: Path, results: Any, failed: list[str]) -> None:
    from bench import logging_check, scale, sdk_workloads, subjects, workloads
    from bench.events import event_json
    from bench.procs import StoreSpec

    contents = {"1 KiB": event_json(1024), "64 KiB": event_json(64 * 1024)}
    engines = subjects.SqlstoreEngines()
    variants = subjects.sqlstore_variants(dbs)
    namespaces: list[str] = []

    def ns(suffix: str) -> str:
        name = f"{run_id}-{suffix}"
        namespaces.append(name)
        return name

    def attempt(name: str, work: Callable[[], None]) -> None:
        with section(results, name):
            try:
                work()
            except Exception:
                failed.append(name)
                log(f"!! {name} failed:\n{traceback.format_exc()}")

    subjects.create_raw_tables(dbs)
    try:
        per_call = subjects.build(dbs, engines, ns("calls"), tmp)
        attempt(
            "per-call workloads",
            lambda: workloads.run(per_call, contents, plan, results, log=log),
        )
        for s in per_call.values():
            s.close()
        attempt(
            "P2 EventLog.append, 1 writer",
            lambda: sdk_workloads.run_append(
                sdk_workloads.append_stores(engines, variants, ns("append"), tmp),
                plan,
                results,
                log=log,
            ),
        )
        mp_specs: dict[str, Callable[[int], StoreSpec]] = {
            "local:warm": lambda r: StoreSpec.local(tmp / f"mp-local-{r}")
        }

        def mp_spec(key: str) -> Callable[[int], StoreSpec]:
            url, options = variants[key]
            return lambda r: StoreSpec.sql(url, ns(f"mp-{key.split(':')[0]}-{r}"), options)

        for key in ("pg:sqlstore", "sqlite:sqlstore-full", "mysql:sqlstore"):
            if key in variants:
                mp_specs[key] = mp_spec(key)
        attempt(
            f"P3 EventLog.append, {plan.procs} processes",
            lambda: sdk_workloads.run_multiprocess(mp_specs, plan, results, log=log),
        )
        resume_specs = {"local:cold": StoreSpec.local(tmp / "resume-local")}
        for key in ("pg:sqlstore", "sqlite:sqlstore-full", "mysql:sqlstore"):
            if key in variants:
                url, options = variants[key]
                resume_specs[key] = StoreSpec.sql(url, ns(f"resume-{key.split(':')[0]}"), options)
        attempt(
            "P4 resume, cold",
            lambda: sdk_workloads.run_resume(resume_specs, plan, results, log=log),
        )
        attempt(
            "P5 list in a growing namespace",
            lambda: scale.run_namespace_growth(
                dbs,
                engines,
                {size: ns(f"p5-{size}") for size in plan.namespace_sizes},
                tmp,
                contents["1 KiB"],
                plan,
                results,
                log=log,
            ),
        )
        attempt(
            "P6 many stores, 8 threads",
            lambda: scale.run_many_stores(
                dbs, f"{run_id}-p6", contents["1 KiB"], plan, results, log=log
            ),
        )
        p7_namespace = f"{run_id}-p7"
        for mode in logging_check.MODES:
            ns(f"p7-{mode}")
        p7_targets: dict[str, tuple[str, dict[str, Any]]] = {
            k: variants[k]
            for k in ("pg:sqlstore", "sqlite:sqlstore-full", "mysql:sqlstore")
            if k in variants
        }
        attempt(
            "P7 SDK INFO logging",
            lambda: logging_check.run(
                p7_targets,
                p7_namespace,
                {"1 KiB": contents["1 KiB"]},
                plan,
                str(tmp / "p7-stderr.log"),
                results,
                log=log,
            ),
        )
    finally:
        with section(results, "cleanup"):
            _cleanup(engines, variants, namespaces)
            subjects.drop_raw_tables(dbs)
            engines.dispose()


def _cleanup(engines: Any, variants: dict[str, Any], namespaces: list[str]) -> None:
    """Delete the run's namespaces on the server databases (SQLite files go with tmp)."""
    import sqlstore

    for key in ("pg:sqlstore", "mysql:sqlstore"):
        if key not in variants:
            continue
        url, options = variants[key]
        store = sqlstore.SQLFileStore(engines.get(key, url, **options), namespaces[0])
        try:
            with store.lock("bench/.cleanup"):
                for name in namespaces:
                    store.with_namespace(name).delete("")
        except Exception as exc:
            log(f"cleanup of {key} failed: {exc}")
