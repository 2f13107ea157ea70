"""sqlstore's benchmark: ``uv run python -m bench``; see ``bench/README.md``.

Importing it prepares the process and the children it forks: the SDK is imported
quietly (``LOG_AUTO_CONFIG=false``: the rows are measured under Python's default
logging, and the logging rows apply the SDK's configuration on purpose), LiteLLM uses
its bundled price list instead of fetching one, the SDK's banner is off, and bytecode
goes to a cache outside the repository (without it each SDK import costs 10-20 s).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["LOG_AUTO_CONFIG"] = "false"
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("OPENHANDS_SUPPRESS_BANNER", "1")
_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
sys.pycache_prefix = os.environ["PYTHONPYCACHEPREFIX"] = str(_cache / "sqlstore-bench" / "pycache")
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False
