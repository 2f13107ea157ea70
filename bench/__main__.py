"""``uv run python -m bench``: measure and report; ``python -m bench compare A.json B.json``."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from bench.harness import PLANS, describe_machine, load_average, log

RESULTS = Path(__file__).resolve().parent / "results"
BACKENDS = ("postgresql", "sqlite", "mysql")
PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/sqlstore_bench"
MYSQL_URL = "mysql+pymysql://root@127.0.0.1:3306/sqlstore_bench"


def parse(argv: list[str]) -> argparse.Namespace:
    """The command line of a run."""
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="sqlstore against raw drivers and the OpenHands SDK's stores, interleaved. "
        "`python -m bench compare A.json B.json` prints how each ratio moved between two runs.",
    )
    p.add_argument("--quick", action="store_const", const="quick", dest="plan", default="full",
                   help="fewer samples, smaller conversations and namespaces")  # fmt: skip
    p.add_argument("--plan", choices=PLANS, help="full (default), quick, or smoke (seconds; "
                   "proves the machinery, its figures mean nothing)")  # fmt: skip
    p.add_argument("--backends", default=",".join(BACKENDS), help="default: all three")
    p.add_argument("--pg-url", default=PG_URL)
    p.add_argument("--mysql-url", default=MYSQL_URL)
    p.add_argument("--only", type=lambda s: re.compile(s, re.I), metavar="REGEX",
                   help="run only the rows whose name matches (case-insensitive)")  # fmt: skip
    p.add_argument("--instructions", action="store_true",
                   help="count client instructions per call with callgrind (sqlstore against the "
                   "raw drivers) instead of timing; writes instructions.json/.md")  # fmt: skip
    p.add_argument("--label", default="", help="a name for this run, kept in the results")
    p.add_argument("--out", type=Path, default=RESULTS, help="default: bench/results")
    args = p.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if unknown := set(args.backends) - set(BACKENDS):
        p.error(f"unknown backends: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the report, write the result files. 1 if a workload failed."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compare"]:
        return compare(argv[1:])
    args = parse(argv)
    if args.instructions:
        from bench import instructions

        return instructions.main(args)
    started, load_start = time.perf_counter(), load_average()
    date = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    from bench.harness import start_children_server

    start_children_server()  # it imports the SDK while this process does the same
    log("importing the OpenHands SDK (quiet logging) ...")
    from bench import report, workloads
    from bench.subjects import Run, prepare

    tmp = Path(tempfile.mkdtemp(prefix="sqlstore-bench-"))
    try:
        urls = {"postgresql": args.pg_url, "mysql": args.mysql_url, "sqlite": ""}
        subjects, versions = prepare(args.backends, urls, tmp)
        subjects_run = {s.backend for s in subjects.values()}
        for what, said in versions.items():
            if said.startswith("skipped"):
                log(f"{what} {said}")
        if not any(s.kind == "sqlstore" for s in subjects.values()):
            log("no database to measure sqlstore on")
            return 2
        run_id = "bench-" + date.replace("-", "").replace(":", "")  # names its namespaces
        run = Run(PLANS[args.plan], subjects, tmp, run_id, args.only)
        try:
            workloads.run_all(run)
        finally:
            run.cleanup()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    meta = {
        "label": args.label,
        "mode": args.plan,
        "only": args.only.pattern if args.only else None,
        "date": date,
        "duration_s": round(time.perf_counter() - started, 1),
        "load_average": {"start": load_start, "end": load_average()},
        "machine": describe_machine({b: v for b, v in versions.items() if b in subjects_run}),
        "skipped": {k: v for k, v in versions.items() if v.startswith("skipped")},
        "plan": asdict(run.plan),
    }
    doc = report.document(run, meta)
    print(report.markdown(doc), end="")
    # A partial run never stands in for a whole one.
    stem = ("latest" if args.plan == "full" else f"latest-{args.plan}") + (
        "-only" * bool(args.only)
    )
    log("wrote {} and {}".format(*report.write(doc, args.out, stem)))
    log(f"total {meta['duration_s']:.0f} s")
    return 1 if run.results.failed else 0


def compare(argv: list[str]) -> int:
    """Print how every ratio and target moved between two result files."""
    p = argparse.ArgumentParser(prog="python -m bench compare")
    p.add_argument("before", type=Path)
    p.add_argument("after", type=Path)
    args = p.parse_args(argv)
    from bench.report import compare as side_by_side

    docs = [json.loads(path.read_text(encoding="utf-8")) for path in (args.before, args.after)]
    print(side_by_side(*docs), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
