"""Where and on what a run happened: machine, versions, sqlstore commit."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.databases import Databases

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("sqlalchemy", "psycopg", "pymysql", "openhands-sdk", "alembic")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def describe(dbs: Databases) -> dict[str, Any]:
    """Machine, Python, package and database versions, and the sqlstore commit."""
    packages: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    dirty = _git("status", "--porcelain", "--", "sqlstore", "migrations")
    return {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "python": sys.version.split()[0],
        "packages": packages,
        "databases": {name: b.version for name, b in dbs.backends.items()},
        "skipped": dict(dbs.skipped),
        "sqlstore_commit": _git("rev-parse", "--short", "HEAD"),
        "sqlstore_dirty": bool(dirty),
    }
