"""Starts agent server processes quickly: imports the heavy libraries once, then forks.

A server process spends ~17 s of CPU importing the SDK and litellm before it serves
anything. This process imports them once; for each line of JSON on stdin
(``{"env": {...}, "argv": [...], "cwd": ..., "log": ...}``) it forks a child that sets
that environment and runs the agent server's real entry point
(``python -m openhands.agent_server`` with those arguments: the same ``__main__``,
``--import-modules sqlstore.agent_server`` included), and prints the child's pid.
Neither sqlstore.agent_server nor the server's app is imported before the fork: each
child builds its own from its own environment.

    python -m tests.agent_server_zygote
"""

from __future__ import annotations

import importlib
import json
import os
import runpy
import signal
import sys

#: What a server imports before it serves (and the server's tool check imports the
#: browser tool's implementation); neither sqlstore.agent_server nor the app.
PRELOAD = (
    "openhands.sdk",
    "openhands.agent_server.conversation_service",
    "openhands.tools.browser_use.impl",
    "fastapi",
    "uvicorn",
    "alembic.command",
    "sqlalchemy",
    "psycopg",
    "pymysql",
)


def _preload() -> None:
    os.environ.setdefault("OPENHANDS_SUPPRESS_BANNER", "1")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    for module in PRELOAD:
        importlib.import_module(module)


def _become_server(spec: dict[str, object]) -> None:
    """In the child: detach from the zygote's pipes, then run the server's ``__main__``."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the server waits for its own children
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    log = os.open(str(spec["log"]), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.chdir(str(spec["cwd"]))
    os.environ.update({str(k): str(v) for k, v in dict(spec["env"]).items()})  # type: ignore[call-overload]
    sys.argv = ["openhands.agent_server", *[str(a) for a in spec["argv"]]]  # type: ignore[attr-defined]
    runpy.run_module("openhands.agent_server", run_name="__main__", alter_sys=True)
    sys.exit(0)


def main() -> None:
    _preload()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped automatically
    print("ready", flush=True)
    for line in sys.stdin:
        spec = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _become_server(spec)  # raises SystemExit: the child never loops again
        print(pid, flush=True)


if __name__ == "__main__":
    main()
