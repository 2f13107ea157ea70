"""Child processes: a fork server that has the SDK imported, and store specs to pass.

Importing the OpenHands SDK takes several seconds of CPU. Children are forked from a
fork server that imported it (and sqlstore, and the drivers) once, before anything
ran: each child is a new process with no store, engine, connection or cache, started
in milliseconds. Their setup is never inside a timed region anyway.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
from dataclasses import dataclass, field
from multiprocessing.context import ForkServerContext
from pathlib import Path
from typing import Any

_ctx: ForkServerContext | None = None


def context() -> ForkServerContext:
    """The fork-server context (its server preloads :mod:`bench.preload`)."""
    global _ctx
    if _ctx is None:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["bench.preload"])
        _ctx = ctx
    return _ctx


def start_server() -> None:
    """Start the fork server now; it imports the SDK while the parent does the same."""
    context()
    multiprocessing.forkserver.ensure_running()


@dataclass(frozen=True)
class StoreSpec:
    """How a child process opens the store a variant uses.

    Attributes:
        kind: ``local`` (a ``LocalFileStore`` on ``target``, a directory) or
            ``sqlstore`` (``SQLFileStore.from_url(target, namespace, **options)``).
        target: The directory or the database URL.
        namespace: The sqlstore namespace.
        options: Engine options for :func:`sqlstore.create_engine`.
    """

    kind: str
    target: str
    namespace: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    def open(self) -> Any:
        """Open the store (a fresh engine for sqlstore)."""
        if self.kind == "local":
            from openhands.sdk.io import LocalFileStore

            return LocalFileStore(self.target)
        import sqlstore

        return sqlstore.SQLFileStore.from_url(self.target, self.namespace, **self.options)

    @staticmethod
    def local(root: Path) -> StoreSpec:
        """A ``LocalFileStore`` rooted at ``root``."""
        return StoreSpec("local", str(root))

    @staticmethod
    def sql(url: str, namespace: str, options: dict[str, Any]) -> StoreSpec:
        """A sqlstore namespace."""
        return StoreSpec("sqlstore", url, namespace, dict(options))
