"""Tables (markdown), targets (PASS/MISS) and the result files of a run."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.results import Results, Row
from bench.subjects import COLUMNS

UNITS = {"us": "µs", "ms": "ms", "events/s": "events/s", "ops/s": "ops/s"}
README_BEGIN = "<!-- targets:begin -->"
README_END = "<!-- targets:end -->"

#: Ratio columns: (title, numerator variant, denominator variant). ``local`` means the
#: row's cold LocalFileStore where it has one, else the warm one.
RATIOS = (
    ("PG sqlstore ÷ raw psycopg", "pg:sqlstore", "pg:raw"),
    ("PG sqlstore ÷ Local", "pg:sqlstore", "local"),
    ("SQLite FULL sqlstore ÷ raw FULL", "sqlite:sqlstore-full", "sqlite:raw-full"),
    ("SQLite NORMAL sqlstore ÷ raw NORMAL", "sqlite:sqlstore-normal", "sqlite:raw-normal"),
    ("SQLite FULL sqlstore ÷ Local", "sqlite:sqlstore-full", "local"),
    ("{db} sqlstore ÷ raw PyMySQL", "mysql:sqlstore", "mysql:raw"),
    ("{db} sqlstore ÷ Local", "mysql:sqlstore", "local"),
)


@dataclass
class Target:
    """One line of the targets table."""

    target: str
    backend: str
    measured: str
    bar: str
    ok: bool | None
    binding: bool = True

    @property
    def result(self) -> str:
        """PASS, MISS or n/a; informational lines say so."""
        word = "n/a" if self.ok is None else ("PASS" if self.ok else "MISS")
        return word if self.binding else f"{word} (info)"


def _db_label(machine: dict[str, Any]) -> str:
    version = str(machine.get("databases", {}).get("mysql", ""))
    return "MySQL" if version.startswith("MySQL") else "MariaDB"


def column_titles(machine: dict[str, Any]) -> dict[str, str]:
    """Variant key to column title."""
    db = _db_label(machine)
    return {key: title.format(db=db) for key, title in COLUMNS.items()}


def _fmt(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if unit in ("events/s", "ops/s"):
        return f"{value:,.0f}"
    if value < 10:
        return f"{value:.1f}"
    return f"{value:,.0f}"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}x"


def _local_key(row: Row) -> str:
    return "local:cold" if "local:cold" in row.cells else "local:warm"


def ratio(row: Row, num: str, den: str) -> float | None:
    """``num``'s median over ``den``'s on ``row`` (``den`` may be ``local``)."""
    if den == "local":
        den = _local_key(row)
    a, b = row.median(num), row.median(den)
    if a is None or b is None or b == 0:
        return None
    return a / b


def _row_title(row: Row) -> str:
    arrow = "↑" if row.better == "higher" else ""
    return f"{row.name} ({UNITS.get(row.unit, row.unit)}{arrow})"


def medians_table(results: Results, machine: dict[str, Any]) -> str:
    """Rows = workloads, columns = variants that ran; cells are medians."""
    titles = column_titles(machine)
    rows = [r for r in results.rows.values() if r.group != "P7"]
    used = [k for k in titles if any(k in r.cells for r in rows)]
    lines = [
        "| workload | " + " | ".join(titles[k] for k in used) + " |",
        "|---|" + "---:|" * len(used),
    ]
    for row in rows:
        cells = [_fmt(row.median(k), row.unit) for k in used]
        lines.append(f"| {_row_title(row)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ratio_rows(results: Results) -> dict[str, dict[str, float]]:
    """Every ratio that can be computed, per row (for the JSON file)."""
    out: dict[str, dict[str, float]] = {}
    for row in results.rows.values():
        values = {}
        for title, num, den in RATIOS:
            r = ratio(row, num, den)
            if r is not None:
                values[title.replace("{db}", "MySQL-family")] = round(r, 4)
        if values:
            out[row.name] = values
    return out


def ratios_table(results: Results, machine: dict[str, Any]) -> str:
    """Rows = workloads, columns = sqlstore ÷ baseline."""
    db = _db_label(machine)
    cols = [
        (t.format(db=db), n, d)
        for t, n, d in RATIOS
        if any(ratio(r, n, d) is not None for r in results.rows.values())
    ]
    lines = [
        "| workload | " + " | ".join(t for t, _, _ in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for row in results.rows.values():
        if row.group == "P7":
            continue
        cells = [_ratio(ratio(row, n, d)) for _, n, d in cols]
        if all(c == "—" for c in cells):
            continue
        lines.append(f"| {_row_title(row)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def logging_table(results: Results, machine: dict[str, Any]) -> str:
    """P7: each sqlstore's median under quiet and SDK INFO logging, and the ratio."""
    p7 = results.checks.get("P7")
    if not p7:
        return "(not run)"
    titles = column_titles(machine)
    keys = [
        k
        for k in ("pg:sqlstore", "sqlite:sqlstore-full", "mysql:sqlstore")
        if any(results.median(f"{w}, quiet logging", k) is not None for w in p7["workloads"])
    ]
    head = ["workload"]
    for k in keys:
        head += [f"{titles[k]} quiet", "INFO", "ratio"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for w in p7["workloads"]:
        cells = [f"{w} (µs)"]
        for k in keys:
            q = results.median(f"{w}, quiet logging", k)
            i = results.median(f"{w}, SDK INFO logging", k)
            r = None if q is None or i is None or q == 0 else i / q
            cells += [_fmt(q, "us"), _fmt(i, "us"), _ratio(r)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- targets -------------------------------------------------------------------------

_BACKENDS = (
    ("PostgreSQL", "pg:sqlstore", "pg:raw", True),
    ("SQLite", "sqlite:sqlstore-full", "sqlite:raw-full", True),
    ("{db}", "mysql:sqlstore", "mysql:raw", False),
)
_READS = ("read 1 KiB", "read_bytes 1 KiB", "exists hit", "exists miss")
_WRITES = ("write new 1 KiB", "overwrite 1 KiB", "delete 1 KiB")


def _worst(results: Results, names: tuple[str, ...], num: str, den: str) -> tuple[float, str]:
    worst, which = -math.inf, ""
    for name in names:
        row = results.rows.get(name)
        r = None if row is None else ratio(row, num, den)
        if r is not None and r > worst:
            worst, which = r, name
    return worst, which


def targets(results: Results, machine: dict[str, Any]) -> list[Target]:
    """Evaluate P1-P7 from the run's rows and checks."""
    db = _db_label(machine)
    out: list[Target] = []
    ran = {k for r in results.rows.values() for k in r.cells}
    backends = [(b.format(db=db), s, r, bind) for b, s, r, bind in _BACKENDS if s in ran]
    for label, store, raw, bind in backends:
        floor = {"pg:raw": "raw psycopg", "sqlite:raw-full": "raw sqlite3 FULL"}.get(
            raw, "raw PyMySQL"
        )
        groups = ((_READS, 2.0, "read/exists"), (_WRITES, 1.3, "write/overwrite/delete"))
        for names, bar, what in groups:
            worst, which = _worst(results, names, store, raw)
            ok = None if worst == -math.inf else worst <= bar
            out.append(
                Target(
                    f"P1 {what} (1 KiB, worst of {len(names)})",
                    label,
                    "—" if ok is None else f"{worst:.2f}x ({which})",
                    f"≤ {bar}x {floor}",
                    ok,
                    bind and raw == "pg:raw",
                )
            )
    p2 = results.rows.get("SDK EventLog.append, 1 writer")
    for label, store, _raw, bind in backends:
        bar = 0.3 if store.startswith("sqlite") else 0.7
        r = None if p2 is None else ratio(p2, store, "local:warm")
        out.append(
            Target(
                "P2 EventLog.append, 1 writer",
                label + (" FULL" if store.startswith("sqlite") else ""),
                _ratio(r) + " Local",
                f"≤ {bar}x Local",
                None if r is None else r <= bar,
                bind,
            )
        )
    p3 = next((r for n, r in results.rows.items() if n.endswith(" processes")), None)
    checks3 = results.checks.get("P3", {})
    for label, store, _raw, bind in backends:
        r = None if p3 is None else ratio(p3, store, "local:warm")
        c = checks3.get(store, {})
        lost = c.get("lost")
        sound = lost == 0 and c.get("duplicate_ids") == 0 and c.get("all_contiguous") is True
        out.append(
            Target(
                "P3 8 processes append (events/s), 0 lost",
                label,
                f"{_ratio(r)} Local, lost {lost}",
                "≥ 1.5x Local, 0 lost",
                None if r is None else (r >= 1.5 and sound),
                bind,
            )
        )
    p4 = next((r for n, r in results.rows.items() if n.startswith("SDK resume")), None)
    for label, store, _raw, bind in backends:
        r = None if p4 is None else ratio(p4, store, "local:cold")
        out.append(
            Target(
                "P4 resume, cold" if p4 is None else f"P4 {p4.name.removeprefix('SDK ')}",
                label,
                _ratio(r) + " Local cold",
                "≤ 1.0x Local cold",
                None if r is None else r <= 1.0,
                bind,
            )
        )
    p5 = [r for n, r in results.rows.items() if n.startswith("list 100 children, namespace")]
    for label, store, raw, bind in backends:
        if not p5 or store not in p5[-1].cells:
            continue
        r = ratio(p5[-1], store, raw)
        first, last = p5[0].median(store), p5[-1].median(store)
        growth = None if not first or last is None else last / first
        ok = r is not None and growth is not None and r <= 1.5 and growth <= 1.3
        out.append(
            Target(
                f"P5 list 100 in {p5[-1].name.split('of ')[1]}",
                label,
                f"{_ratio(r)} raw scan; growth {_ratio(growth)} from {p5[0].name.split('of ')[1]}",
                "≤ 1.5x raw scan; growth ≤ 1.3x",
                ok,
                bind,
            )
        )
    checks6 = results.checks.get("P6", {})
    for label, store, _raw, bind in backends:
        c = checks6.get(store)
        if c is None:
            continue
        created = c["after_create"]
        ok = (
            created["connections_opened"] == 0
            and created["checked_out"] == 0
            and c["max_checked_out"] <= c["pool_limit"]
            and c["connections_opened"] <= c["pool_limit"]
        )
        out.append(
            Target(
                f"P6 {c['stores']:,} stores, {c['ops_per_s']:,} ops/s from 8 threads",
                label,
                f"{created['connections_opened']} conns at creation; "
                f"max {c['max_checked_out']} checked out, {c['connections_opened']} opened",
                f"0 at creation; ≤ {c['pool_limit']} pooled",
                ok,
                bind,
            )
        )
    checks7 = results.checks.get("P7", {})
    for label, store, _raw, bind in backends:
        worst, which = -math.inf, ""
        for name in checks7.get("workloads", []):
            q = results.median(f"{name}, quiet logging", store)
            i = results.median(f"{name}, SDK INFO logging", store)
            if q and i is not None and i / q > worst:
                worst, which = i / q, name
        if worst == -math.inf:
            continue
        touched = checks7.get("touched_loggers", [])
        out.append(
            Target(
                "P7 SDK INFO logging vs quiet",
                label,
                f"{worst:.2f}x ({which}); loggers touched: {', '.join(touched) or 'none'}",
                "≤ 1.1x; none touched",
                worst <= 1.1 and not touched,
                bind,
            )
        )
    return out


def targets_table(items: list[Target]) -> str:
    """The targets as a markdown table."""
    lines = ["| target | backend | measured | bar | result |", "|---|---|---|---|---|"]
    for t in items:
        lines.append(f"| {t.target} | {t.backend} | {t.measured} | {t.bar} | {t.result} |")
    return "\n".join(lines)


def checks_section(results: Results) -> str:
    """Facts that are not timings: log integrity, pools, logging."""
    lines = []
    for key, c in results.checks.get("P3", {}).items():
        lines.append(
            f"- P3 {key}: {c['rounds']} round(s) of {c['events_per_round']} events; lost "
            f"{c['lost']}, duplicate ids {c['duplicate_ids']}, duplicate indices "
            f"{c['duplicate_indices']}, contiguous {c['all_contiguous']}, SDK length ok "
            f"{c['sdk_len_ok']}"
        )
    for key, c in results.checks.get("P4", {}).items():
        lines.append(f"- P4 {key}: list+index {c['index_ms']} ms, reads {c['read_ms']} ms")
    for key, c in results.checks.get("P6", {}).items():
        lines.append(
            f"- P6 {key}: {c['bytes_per_store']} bytes/store; after creating {c['stores']:,}: "
            f"{c['after_create']}; 8 threads: {c['ops']} ops, max checked out "
            f"{c['max_checked_out']}, connections opened {c['connections_opened']}"
        )
    p7 = results.checks.get("P7")
    if p7:
        c = p7["control"]
        lines.append(
            f"- P7: root level {p7['root_level']}; loggers touched by sqlstore: "
            f"{p7['touched_loggers'] or 'none'}; {p7['log_bytes_written']:,} bytes logged "
            f"during sqlstore's INFO batches. Control ({c['what']}, {c['variant']}): "
            f"{c['quiet_us']} µs quiet, {c['info_us']} µs under INFO, {c['ratio']}x"
        )
    return "\n".join(lines)


def header(meta: dict[str, Any]) -> str:
    """Date, mode, duration, machine and versions, as markdown."""
    m = meta["machine"]
    dbs = ", ".join(m["databases"].values())
    pk = ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v)
    skipped = "; ".join(f"{k}: {v}" for k, v in m["skipped"].items())
    dirty = " (with uncommitted changes)" if m["sqlstore_dirty"] else ""
    lines = [
        f"Run: {meta['date']}, mode `{meta['mode']}`, {meta['duration_s']:.0f} s; load "
        f"average {_loads(meta)}.",
        f"Machine: {m['platform']}, {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; "
        f"Python {m['python']}.",
        f"Databases: {dbs}. Packages: {pk}.",
        f"sqlstore commit: {m['sqlstore_commit'] or 'unknown'}{dirty}.",
    ]
    if skipped:
        lines.append(f"Skipped: {skipped}.")
    return "  \n".join(lines)


def _loads(meta: dict[str, Any]) -> str:
    load = meta.get("load_average", {})
    start, end = load.get("start") or [], load.get("end") or []
    if not start or not end:
        return "unknown"
    return f"{start[0]:.2f} at start, {end[0]:.2f} at end (1 min)"


def markdown(results: Results, meta: dict[str, Any], items: list[Target]) -> str:
    """The whole report."""
    m = meta["machine"]
    return (
        "\n\n".join(
            [
                f"# sqlstore benchmark ({meta['mode']})",
                header(meta),
                "## Medians\n\nPer call unless the row says otherwise; ↑ marks rows where "
                "higher is better. p10/p90 are in the JSON file.",
                medians_table(results, m),
                "## Ratios\n\nsqlstore's median over a baseline's, same run. Below 1.00x "
                "sqlstore is faster, except on ↑ rows (events/s, ops/s), where above 1.00x "
                "it is. *Local* is `LocalFileStore`: cold (cache cleared) on rows that "
                "measure cold reads, else warm.",
                ratios_table(results, m),
                "## P7: per call under the SDK's INFO logging\n\nMeasured in a child process "
                "that applied the SDK's default logging configuration after importing sqlstore "
                "(see bench/README.md); quiet and INFO batches interleaved in that process.",
                logging_table(results, m),
                "## Targets",
                targets_table(items),
                "## Checks",
                checks_section(results),
            ]
        )
        + "\n"
    )


def to_json(results: Results, meta: dict[str, Any], items: list[Target]) -> dict[str, Any]:
    """Everything, for ``latest.json``."""
    return {
        **meta,
        "rows": {
            name: {
                "unit": row.unit,
                "better": row.better,
                "group": row.group,
                "results": {k: s.as_dict() for k, s in row.cells.items()},
            }
            for name, row in results.rows.items()
        },
        "ratios": ratio_rows(results),
        "targets": [
            {
                "target": t.target,
                "backend": t.backend,
                "measured": t.measured,
                "bar": t.bar,
                "result": t.result,
                "binding": t.binding,
            }
            for t in items
        ],
        "checks": results.checks,
        "section_seconds": results.timings,
    }


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write(
    out_dir: Path, results: Results, meta: dict[str, Any], items: list[Target], stem: str
) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    _atomic_write(js, json.dumps(to_json(results, meta, items), indent=2, default=str) + "\n")
    _atomic_write(md, markdown(results, meta, items))
    return js, md


def update_readme(readme: Path, meta: dict[str, Any], items: list[Target]) -> bool:
    """Replace the targets table between the README's markers; False if none."""
    if not readme.is_file():
        return False
    text = readme.read_text(encoding="utf-8")
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        return False
    m = meta["machine"]
    block = (
        f"{README_BEGIN}\n"
        f"Latest full run: {meta['date']} on {m['cpu']} ({m['cores']} cores), "
        f"{', '.join(m['databases'].values())}; sqlstore {m['sqlstore_commit']}"
        f"{' + uncommitted changes' if m['sqlstore_dirty'] else ''}. "
        f"Details: [results/latest.md](results/latest.md).\n\n"
        f"{targets_table(items)}\n"
    )
    _atomic_write(readme, text[:begin] + block + text[end:])
    return True
