"""The report: ratios, the targets, the tables, and two runs compared.

Everything here reads the result document (what ``latest.json`` holds), so a saved
run can be rendered or compared again without measuring anything.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.harness import Plan

if TYPE_CHECKING:  # comparing two saved runs needs neither the SDK nor the drivers
    from bench.subjects import Run

SCHEMA = 1
Doc = dict[str, Any]
#: A target's measure: (value, what to print, met?), or None when the run did not measure it.
Measure = Callable[[Doc], tuple[float, str, bool] | None]


def ratio_columns(run: Run) -> dict[str, tuple[str, str, str]]:
    """Ratio id to (title, numerator, denominator): each sqlstore over its floor and Local.

    ``local`` means the cache-cleared ``LocalFileStore`` on the rows that measure one.
    """
    out = {}
    for key, s in run.subjects.items():
        if s.kind != "sqlstore":
            continue
        if s.floor in run.subjects:
            floor = run.subjects[s.floor].title
            common = len(
                [a for a, b in zip(s.title.split(), floor.split(), strict=False) if a == b]
            )
            out[f"{key}/{s.floor}"] = (
                f"{s.title} ÷ {' '.join(floor.split()[common:])}",
                key,
                s.floor,
            )
        if s.vs_local:
            out[f"{key}/local"] = (f"{s.title} ÷ LocalFileStore", key, "local")
        out[f"{key}+info/{key}"] = (f"{s.title}, SDK INFO logging ÷ quiet", f"{key}+info", key)
    return out


def document(run: Run, meta: dict[str, Any]) -> Doc:
    """The whole result of a run, as ``latest.json`` holds it."""
    columns = ratio_columns(run)
    rows = {}
    for name, row in run.results.rows.items():
        ratios = {}
        for rid, (_title, num, den) in columns.items():
            if den == "local" and "local-cold" in row.cells:
                den = "local-cold"
            a, b = row.median(num), row.median(den)
            if a is not None and b:
                ratios[rid] = round(a / b, 4)
        rows[name] = {
            "group": row.group,
            "unit": row.unit,
            "higher_is_better": row.higher_is_better,
            "cells": {k: asdict(s) for k, s in row.cells.items()},
            "ratios": ratios,
        }
    titles = {k: s.title for k, s in run.subjects.items()}
    titles |= {f"{k}+info": f"{s.title}, SDK INFO logging" for k, s in run.subjects.items()}
    doc = {
        "schema": SCHEMA,
        **meta,
        "subjects": titles,
        "ratio_columns": {rid: title for rid, (title, _, _) in columns.items()},
        "rows": rows,
        "checks": run.results.checks,
        "failed": run.results.failed,
        "seconds": run.results.seconds,
    }
    doc["targets"] = [evaluate(sentence, measure, doc) for sentence, measure in targets(run.plan)]
    return doc


# -- targets --------------------------------------------------------------------------


def _ratio(doc: Doc, row: str, rid: str) -> float | None:
    value: float | None = doc["rows"].get(row, {}).get("ratios", {}).get(rid)
    return value


def at_most(bar: float, rid: str, *rows: str) -> Measure:
    """The worst of ``rows``' ratio ``rid`` is at most ``bar``."""

    def measure(doc: Doc) -> tuple[float, str, bool] | None:
        found = [(v, r) for r in rows if (v := _ratio(doc, r, rid)) is not None]
        if not found:
            return None
        worst, row = max(found)
        return worst, f"{worst:.2f}x" + (f" ({row})" if len(rows) > 1 else ""), worst <= bar

    return measure


def at_least(bar: float, rid: str, row: str) -> Measure:
    """Ratio ``rid`` on ``row`` is at least ``bar``, and no append went missing."""

    def measure(doc: Doc) -> tuple[float, str, bool] | None:
        value, facts = (
            _ratio(doc, row, rid),
            doc["checks"].get("appends", {}).get(rid[: rid.find("/")]),
        )
        if value is None or facts is None:
            return None
        wrong = {k: v for k, v in facts.items() if k not in ("rounds", "events") and v}
        said = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in wrong.items()) or "none lost"
        return value, f"{value:.2f}x, {said}", value >= bar and not wrong

    return measure


def flat(bar: float, key: str, first: str, last: str) -> Measure:
    """``key``'s median on row ``last`` is at most ``bar`` times its median on ``first``."""

    def measure(doc: Doc) -> tuple[float, str, bool] | None:
        a, b = (doc["rows"].get(r, {}).get("cells", {}).get(key) for r in (first, last))
        if a is None or b is None:
            return None
        growth = b["median"] / a["median"]
        return growth, f"{growth:.2f}x", growth <= bar

    return measure


def level(bar: float, key: str, ref: str) -> Measure:
    """Every ratio of ``key`` is within ``bar`` times ``ref``'s on the same row (worse side)."""

    def measure(doc: Doc) -> tuple[float, str, bool] | None:
        found = []
        for name, row in doc["rows"].items():
            for rid, value in row["ratios"].items():
                theirs = row["ratios"].get(rid.replace(key, ref))
                if rid.split("+")[0].split("/")[0] == key and theirs:
                    factor = theirs / value if row["higher_is_better"] else value / theirs
                    found.append((factor, name, doc["ratio_columns"][rid], value, theirs))
        if not found:
            return None
        worst, name, title, value, theirs = max(found)
        over = sum(f[0] > bar for f in found)
        said = f"{worst:.2f}x on {name}, {title}: {value:.2f}x vs {theirs:.2f}x"
        return worst, f"{said}; {over} of {len(found)} ratios over {bar}x", worst <= bar

    return measure


def pool(key: str) -> Measure:
    """Creating stores opened no connection; the threads used at most the pool's limit."""

    def measure(doc: Doc) -> tuple[float, str, bool] | None:
        f = doc["checks"].get("pool", {}).get(key)
        if f is None:
            return None
        quiet = f["opened_by_creating"] == f["out_after_creating"] == 0
        ok = quiet and max(f["opened"], f["most_checked_out"]) <= f["limit"]
        said = (f"{f['opened_by_creating']} opened by creating; threads: at most "
                f"{f['most_checked_out']} checked out, {f['opened']} opened")  # fmt: skip
        return f["opened"], said, ok

    return measure


def quiet_logging(key: str, rows: list[str]) -> Measure:
    """Under the SDK's INFO logging every call costs at most 1.1x, and no logger changed."""
    under = at_most(1.1, f"{key}+info/{key}", *rows)

    def measure(doc: Doc) -> tuple[float, str, bool] | None:
        found, facts = under(doc), doc["checks"].get("logging", {}).get("all")
        if found is None or facts is None:
            return None
        value, said, ok = found
        changed = facts["loggers_changed"]
        return value, f"{said}; loggers changed: {changed}", ok and changed == "none"

    return measure


def targets(plan: Plan) -> list[tuple[str, Measure]]:
    """The targets, as sentences a reader understands without the issue at hand."""
    from bench.workloads import APPEND_ONE, append_many_row, growth_rows, logging_rows, resume_row

    sizes = growth_rows(plan)
    few, many = f"{plan.namespace_sizes[0]:,}", f"{plan.namespace_sizes[-1]:,}"
    logged = logging_rows(plan)
    dbs = (("PostgreSQL", "pg"), ("SQLite (FULL)", "sqlite"), ("MariaDB", "mysql"))
    writes = ("write a new 1 KiB file", "overwrite a 1 KiB file", "delete a 1 KiB file")
    reads = ("read a 1 KiB file", "read a 1 KiB file as bytes", "exists, file present",
             "exists, file missing")  # fmt: skip
    return [
        ("On PostgreSQL, one SDK append takes at most 0.7x LocalFileStore's time.",
         at_most(0.7, "pg/local", APPEND_ONE)),
        ("On SQLite (FULL), one SDK append takes at most 0.3x LocalFileStore's time.",
         at_most(0.3, "sqlite/local", APPEND_ONE)),
        ("On PostgreSQL, writing, overwriting and deleting a 1 KiB file take at most 1.3x the "
         "time of raw psycopg.", at_most(1.3, "pg/pg-raw", *writes)),
        ("On PostgreSQL, reading a 1 KiB file and asking whether a file exists take at most 2x "
         "the time of raw psycopg.", at_most(2.0, "pg/pg-raw", *reads)),
        *[(f"On {db}, {plan.procs} processes appending to one conversation reach at least "
           "LocalFileStore's events per second, and lose no event.",
           at_least(1.0, f"{k}/local", append_many_row(plan))) for db, k in dbs],
        *[(f"On {db}, listing 100 children among {many} files takes at most 1.5x the raw "
           "range scan.", at_most(1.5, f"{k}/{k}-raw", sizes[-1])) for db, k in dbs[:2]],
        *[(f"On {db}, listing 100 children among {many} files takes at most 1.3x the time "
           f"among {few}.", flat(1.3, k, sizes[0], sizes[-1])) for db, k in dbs],
        *[(f"On {db}, resuming {plan.resume_events:,} events in a new process takes at most "
           "LocalFileStore's time.", at_most(1.0, f"{k}/local", resume_row(plan)))
          for db, k in dbs[:2]],
        ("On MariaDB, every ratio is within 1.5x of PostgreSQL's on the same row.",
         level(1.5, "mysql", "pg")),
        *[(f"On {db}, {plan.stores:,} stores on one engine open no connection, and "
           f"{plan.threads} threads using them need at most 10.", pool(k)) for db, k in dbs],
        *[(f"On {db}, under the SDK's INFO logging every call takes at most 1.1x its time "
           "with quiet logging, and sqlstore changes no other logger.", quiet_logging(k, logged))
          for db, k in dbs],
    ]  # fmt: skip


def evaluate(sentence: str, measure: Measure, doc: Doc) -> dict[str, Any]:
    """One target's line: the sentence, what was measured, PASS, MISS or NOT MEASURED."""
    found = measure(doc)
    if found is None:
        return {"target": sentence, "value": None, "measured": "", "result": "NOT MEASURED"}
    value, said, ok = found
    return {
        "target": sentence,
        "value": value,
        "measured": said,
        "result": "PASS" if ok else "MISS",
    }


# -- markdown -------------------------------------------------------------------------


def _number(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.1f}" if value < 10 else f"{value:,.0f}"


def _table(head: list[str], lines: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    return "\n".join(out + ["| " + " | ".join(cells) + " |" for cells in lines])


def group_tables(doc: Doc, group: str) -> str:
    """The medians and the ratios of one group's rows; only columns that have values."""
    rows = {n: r for n, r in doc["rows"].items() if r["group"] == group}
    keys = [k for k in doc["subjects"] if any(k in r["cells"] for r in rows.values())]
    rids = [c for c in doc["ratio_columns"] if any(c in r["ratios"] for r in rows.values())]

    def title(name: str, row: dict[str, Any]) -> str:
        return f"{name} ({row['unit']}{', higher is better' if row['higher_is_better'] else ''})"

    medians = _table(
        ["row", *(doc["subjects"][k] for k in keys)],
        [[title(n, r), *(_number(r["cells"].get(k, {}).get("median")) for k in keys)]
         for n, r in rows.items()],
    )  # fmt: skip
    ratios = _table(
        ["row", *(doc["ratio_columns"][c] for c in rids)],
        [[title(n, r), *(f"{r['ratios'][c]:.2f}x" if c in r["ratios"] else "—" for c in rids)]
         for n, r in rows.items() if r["ratios"]],
    )  # fmt: skip
    return f"Medians:\n\n{medians}\n\nRatios:\n\n{ratios}" if rids else f"Medians:\n\n{medians}"


def markdown(doc: Doc) -> str:
    """The printed report, also written to ``latest.md``."""
    m, load = doc["machine"], doc["load_average"]
    start, end = (f"{load[w][0]:.2f}" if load[w] else "unknown" for w in ("start", "end"))
    header = [
        f"Run: {doc['date']}, mode `{doc['mode']}`"
        + (f", label `{doc['label']}`" if doc["label"] else "")
        + (f", only rows matching `{doc['only']}`" if doc["only"] else "")
        + f", {doc['duration_s']:.0f} s; load average {start} at start, {end} at end (1 minute).",
        f"Machine: {m['platform']}, {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; "
        f"Python {m['python']}.",
        f"Databases: {', '.join(m['databases'].values())}.",
        f"Packages: {', '.join(f'{k} {v}' for k, v in m['packages'].items())}.",
        f"sqlstore commit: {m['sqlstore_commit']}{' (with changes)' * m['sqlstore_dirty']}.",
    ]
    if doc["failed"]:
        header.append(f"Workloads that failed: {', '.join(doc['failed'])}.")
    if doc["skipped"]:
        skipped = (f"{k} ({v.removeprefix('skipped: ')})" for k, v in doc["skipped"].items())
        header.append(f"Skipped: {'; '.join(skipped)}.")
    measured = [t for t in doc["targets"] if t["result"] != "NOT MEASURED"]
    unmet = len(measured) < len(doc["targets"])  # a database skipped, or rows left out
    parts = [
        f"# sqlstore benchmark ({doc['mode']})",
        "  \n".join(header),
        "## Targets",
        "\n".join(
            [f"- **{t['result']}**: {t['target']} Measured: {t['measured']}." for t in measured]
            + [f"- {len(doc['targets']) - len(measured)} more not measured in this run."] * unmet
        ),
        "A ratio is sqlstore's median over the other's, in the same run; below 1.00x sqlstore "
        "is faster, except on rows where higher is better. Against LocalFileStore, rows that "
        "clear its cache (cold reads, resume in a new process) compare with the cleared one.",
    ]
    for group in dict.fromkeys(r["group"] for r in doc["rows"].values()):
        parts += [f"## {group}", group_tables(doc, group)]
    parts.append("## Checks")
    lines = []
    for what, facts in doc["checks"].items():
        for key, said in facts.items():
            who = doc["subjects"].get(key, "all subjects")
            lines.append(
                f"- {what}, {who}: "
                + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in said.items())
            )
    parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def write(doc: Doc, out: Path, stem: str) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / f"{stem}.json", out / f"{stem}.md"
    js.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    md.write_text(markdown(doc), encoding="utf-8")
    return js, md


def compare(before: Doc, after: Doc) -> str:
    """Every ratio and target of two runs side by side, and how each ratio moved."""

    def name(doc: Doc) -> str:
        commit = doc["machine"]["sqlstore_commit"]
        return f"{doc.get('label') or doc['mode']} ({doc['date']}, {commit})"

    lines = []
    for row, b in after["rows"].items():
        a = before["rows"].get(row, {}).get("ratios", {})
        for rid, value in b["ratios"].items():
            if rid in a:
                change = value / a[rid] - 1 if a[rid] else 0.0
                title = after["ratio_columns"][rid]
                lines.append([row, title, f"{a[rid]:.2f}x", f"{value:.2f}x", f"{change:+.0%}"])
    goals = {t["target"]: t for t in before["targets"]}
    met = [
        [
            t["target"],
            f"{goals[t['target']]['result']} {goals[t['target']]['measured']}",
            f"{t['result']} {t['measured']}",
        ]
        for t in after["targets"]
        if t["target"] in goals and "MEASURED" not in t["result"] + goals[t["target"]]["result"]
    ]
    return (
        f"# {name(before)} → {name(after)}\n\n"
        + _table(["row", "ratio", "before", "after", "change"], lines)
        + "\n\n"
        + _table(["target", "before", "after"], met)
        + "\n"
    )
