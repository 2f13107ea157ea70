"""A store in another process, driven line by line over a pipe (used by ``test_locks``).

Run as ``python -m tests.lock_worker URL NAMESPACE``. The worker opens
``SQLFileStore.from_url(URL, NAMESPACE)``, prints ``{"ok": true, "op": "ready"}`` and
then answers one JSON command per stdin line with one JSON line on stdout, which
carries ``ok`` and the ``elapsed`` seconds the command took:

* ``{"op": "acquire", "path": p, "timeout": t}`` enters ``store.lock(p, t)`` and keeps
  it open (blocks may nest).
* ``{"op": "release", "commit": bool}`` leaves the innermost open block, normally or by
  raising inside it (so its writes roll back).
* ``{"op": "write", "path": p, "data": s}``, ``{"op": "read", "path": p}`` (``value``
  is ``null`` for a missing file), ``{"op": "exists", ...}``, ``{"op": "list", ...}``.
* ``{"op": "increment", "lock": l, "path": p, "cycles": n}`` runs ``n`` locked
  read-increment-write cycles.
* ``{"op": "reset", "namespace": ns}`` leaves every open block by an exception and
  moves the worker to another namespace (so one worker can serve many tests).
* ``{"op": "exit"}`` (or end of input) leaves every open block normally and exits.

A failed command answers ``{"ok": false, "error": <class name>, "timeout": <is a
TimeoutError>, "lock_timeout": <is a LockTimeoutError>, "message": ...}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import AbstractContextManager
from typing import Any

from sqlstore import LockTimeoutError, SQLFileStore


class _Rollback(Exception):
    """Raised inside a lock block to leave it by an exception."""


class Worker:
    """Carries out the commands on one store; lock blocks stay open between commands."""

    def __init__(self, url: str, namespace: str) -> None:
        self.base = SQLFileStore.from_url(url, namespace)
        self.store = self.base
        self.blocks: list[AbstractContextManager[None]] = []

    def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        op, store = cmd["op"], self.store
        if op == "acquire":
            block = store.lock(cmd["path"], timeout=cmd.get("timeout", 30.0))
            block.__enter__()
            self.blocks.append(block)
        elif op == "release":
            self._leave(commit=cmd.get("commit", True))
        elif op == "write":
            store.write(cmd["path"], cmd["data"])
        elif op == "read":
            try:
                return {"value": store.read(cmd["path"])}
            except FileNotFoundError:
                return {"value": None}
        elif op == "exists":
            return {"value": store.exists(cmd["path"])}
        elif op == "list":
            return {"value": store.list(cmd["path"])}
        elif op == "increment":
            for _ in range(cmd["cycles"]):
                with store.lock(cmd["lock"]):
                    n = int(store.read(cmd["path"]))
                    store.write(cmd["path"], str(n + 1))
        elif op == "reset":
            while self.blocks:
                self._leave(commit=False)
            self.store = self.base.with_namespace(cmd["namespace"])
        else:
            raise ValueError(f"unknown op {op!r}")
        return {}

    def _leave(self, *, commit: bool) -> None:
        block = self.blocks.pop()
        if commit:
            block.__exit__(None, None, None)
            return
        exc = _Rollback()
        if block.__exit__(type(exc), exc, exc.__traceback__):
            raise AssertionError("the lock block swallowed the exception")

    def close(self) -> None:
        while self.blocks:
            self._leave(commit=True)
        self.base.close()


def _reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("namespace")
    args = parser.parse_args(argv)
    worker = Worker(args.url, args.namespace)
    worker.store.exists("")  # connect and check the schema before reporting ready
    _reply({"ok": True, "op": "ready"})
    try:
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd["op"] == "exit":
                break
            start = time.monotonic()
            try:
                result = worker.handle(cmd)
            except Exception as exc:
                _reply(
                    {
                        "ok": False,
                        "op": cmd["op"],
                        "elapsed": time.monotonic() - start,
                        "error": type(exc).__name__,
                        "timeout": isinstance(exc, TimeoutError),
                        "lock_timeout": isinstance(exc, LockTimeoutError),
                        "message": str(exc),
                    }
                )
                continue
            _reply({"ok": True, "op": cmd["op"], "elapsed": time.monotonic() - start, **result})
    finally:
        worker.close()


if __name__ == "__main__":
    main()
