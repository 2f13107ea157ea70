"""The test run explains itself: every test it deselects on its own is accounted for in
the "sqlstore: backends and disruptive tests" summary."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_test_the_suite_deselects_is_explained_in_its_summary() -> None:
    # test_contract runs on every backend; the variant backends run it, and not
    # test_admin, whose tests on them are deselected.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_admin.py",
            "tests/test_contract.py",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (deselected,) = re.findall(r"\((\d+) deselected\)", done.stdout)
    assert int(deselected) > 0
    summary = done.stdout.split("sqlstore: backends and disruptive tests", 1)[1]
    explained = re.findall(r"^\w+: (\d+) tests? deselected, as ", summary, re.M)
    assert sum(map(int, explained)) == int(deselected), done.stdout
