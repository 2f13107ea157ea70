"""The benchmark runs end to end and reports every row, ratio and target.

Its figures are not checked (speed is the benchmark's business, not a test's): the
``smoke`` plan takes a few samples on SQLite only, to prove the machinery works —
interleaving, child processes from the fork server, the SDK's EventLog, the logging
child, the report and the result files.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow  # a child process imports the SDK: 15-30 s on 2 cores
REPO = Path(__file__).resolve().parent.parent
RAWS, STORES, SDK = (
    ["sqlite-normal-raw", "sqlite-raw"],
    ["sqlite-normal", "sqlite"],
    ["local", "memory"],
)
ALL = [*RAWS, *STORES, *SDK]
#: Every row of a smoke run on SQLite, and the subjects measured on it.
ROWS = {
    "write a new 1 KiB file": ALL,
    "overwrite a 1 KiB file": ALL,
    "read a 1 KiB file": [*ALL, "local-cold"],
    "read a 1 KiB file as bytes": RAWS + STORES,
    "write a new 64 KiB file": ALL,
    "overwrite a 64 KiB file": ALL,
    "read a 64 KiB file": [*ALL, "local-cold"],
    "read a 64 KiB file as bytes": RAWS + STORES,
    "exists, file present": ALL,
    "exists, file missing": ALL,
    "list 100 children": ALL,
    "list 300 children": ALL,
    "delete a 1 KiB file": ALL,
    "delete a 64 KiB file": ALL,
    "lock and unlock": ALL,
    "SDK append (EventLog.append), one writer": [*STORES, *SDK],
    "SDK append, 3 processes on one conversation": ["sqlite", "local"],
    "SDK resume of 30 events in a new process": ["sqlite", "local-cold"],
    "list 100 children among 100 files": ["sqlite-raw", "sqlite"],
    "list 100 children among 300 files": ["sqlite-raw", "sqlite"],
    "create a store (200 on one engine)": ["sqlite"],
    "3 threads on 200 stores: writes and reads": ["sqlite"],
    "3 threads on 200 stores: one call": ["sqlite"],
}
LOGGED = ["write a new 1 KiB file", "overwrite a 1 KiB file", "read a 1 KiB file",
          "read a 1 KiB file as bytes", "exists, file present", "exists, file missing",
          "list 100 children", "delete a 1 KiB file", "lock and unlock"]  # fmt: skip
ROWS |= {f"logging check: {name}": ["sqlite", "sqlite+info"] for name in LOGGED}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, str, Path]:
    out = tmp_path_factory.mktemp("bench")
    argv = ["--plan", "smoke", "--backends", "sqlite", "--label", "test", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "bench", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    doc = json.loads((out / "latest-smoke.json").read_text(encoding="utf-8"))
    return doc, (out / "latest-smoke.md").read_text(encoding="utf-8"), done.stdout, out


def test_the_run_measures_every_row_on_every_subject_it_concerns(run: Any) -> None:
    doc = run[0]
    assert {name: sorted(row["cells"]) for name, row in doc["rows"].items()} == {
        name: sorted(keys) for name, keys in ROWS.items()
    }
    assert list(doc["rows"]) == list(ROWS)  # in report order
    for name, row in doc["rows"].items():
        for key, cell in row["cells"].items():
            assert cell["n"] > 0, (name, key)
            assert 0 < cell["p10"] <= cell["median"] <= cell["p90"], (name, key)
        assert row["unit"] in ("µs", "ms", "events/s", "ops/s")
    assert doc["failed"] == []


def test_every_sqlstore_has_its_ratios_to_its_floor_and_to_local(run: Any) -> None:
    doc = run[0]
    expected = {
        "sqlite/sqlite-raw": "SQLite FULL sqlstore ÷ raw sqlite3",
        "sqlite/local": "SQLite FULL sqlstore ÷ LocalFileStore",
        "sqlite+info/sqlite": "SQLite FULL sqlstore, SDK INFO logging ÷ quiet",
        "sqlite-normal/sqlite-normal-raw": "SQLite NORMAL sqlstore ÷ raw sqlite3",
        "sqlite-normal+info/sqlite-normal": "SQLite NORMAL sqlstore, SDK INFO logging ÷ quiet",
    }
    assert doc["ratio_columns"] == expected
    for name, row in doc["rows"].items():
        cells = set(row["cells"])
        for rid in expected:
            num, den = rid.split("/")
            den = "local-cold" if den == "local" and "local-cold" in cells else den
            assert (rid in row["ratios"]) == ({num, den} <= cells), (name, rid)
            if rid in row["ratios"]:
                assert row["ratios"][rid] > 0


def test_every_target_is_a_sentence_with_a_verdict(run: Any) -> None:
    doc, markdown = run[0], run[1]
    assert len(doc["targets"]) == 21
    for target in doc["targets"]:
        measured = "SQLite" in target["target"]
        assert target["result"] in (("PASS", "MISS") if measured else ("NOT MEASURED",)), target
        assert (target["value"] is not None) == measured
        assert (target["target"] in markdown) == measured
        assert "P2" not in target["target"] and "(info)" not in target["target"]


def test_the_appends_and_the_pool_check_out(run: Any) -> None:
    checks = run[0]["checks"]
    for key in ("sqlite", "local"):
        appends = checks["appends"][key]
        assert appends["events"] == 9
        assert {k: v for k, v in appends.items() if k not in ("rounds", "events")} == dict.fromkeys(
            ["lost", "duplicate_ids", "duplicate_indices", "gaps_in_indices", "sdk_length_wrong"], 0
        )
    assert checks["pool"]["sqlite"]["opened_by_creating"] == 0
    assert checks["logging"]["all"]["loggers_changed"] == "none"


def test_the_run_prints_the_report_it_writes_and_records_how_it_ran(run: Any) -> None:
    doc, markdown, stdout = run[0], run[1], run[2]
    assert stdout == markdown
    for name in ROWS:
        assert f"| {name} (" in markdown
    assert doc["schema"] == 1
    assert (doc["label"], doc["mode"], doc["only"]) == ("test", "smoke", None)
    assert doc["plan"]["calls"] == 6
    assert doc["machine"]["databases"] == {"sqlite": doc["machine"]["databases"]["sqlite"]}
    assert doc["duration_s"] > 0 and len(doc["load_average"]["start"]) in (0, 3)


def test_compare_prints_each_ratio_of_two_runs_and_its_change(run: Any) -> None:
    out: Path = run[3]
    path = str(out / "latest-smoke.json")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "compare", path, path],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    ratios = sum(len(row["ratios"]) for row in run[0]["rows"].values())
    assert done.stdout.count("| +0% |") == ratios
    for target in run[0]["targets"]:  # those measured in either run
        assert (target["target"] in done.stdout) == (target["result"] != "NOT MEASURED")
