"""Benchmark of sqlstore against raw drivers and the OpenHands SDK's own stores.

Run ``uv run python -m bench`` (full) or ``uv run python -m bench --quick``; see
``bench/README.md``. Importing this package prepares the process environment:

* the OpenHands SDK is imported quietly (``LOG_AUTO_CONFIG=false``), so the main
  numbers are taken under Python's default logging; the P7 workload applies the
  SDK's default logging configuration itself, in a child process;
* LiteLLM uses its bundled model cost map instead of fetching one over the network,
  and the SDK's banner is suppressed;
* compiled bytecode goes to a cache outside the repository
  (``~/.cache/sqlstore-bench/pycache``), because importing the SDK without it costs
  10-20 s per process.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def _configure_environment() -> None:
    os.environ["LOG_AUTO_CONFIG"] = "false"
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("OPENHANDS_SUPPRESS_BANNER", "1")
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    prefix = str(cache_home / "sqlstore-bench" / "pycache")
    os.environ["PYTHONPYCACHEPREFIX"] = prefix
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    sys.pycache_prefix = prefix
    sys.dont_write_bytecode = False


_configure_environment()
