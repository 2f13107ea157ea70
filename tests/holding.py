"""A lock held by another thread, for tests of what waits on it and what does not."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlstore import SQLFileStore


@contextmanager
def held_by_another_thread(
    store: SQLFileStore, path: str, *, timeout: float = 30.0
) -> Iterator[None]:
    """``store``'s lock on ``path``, taken by another thread and held until the block ends."""
    inside, leave = threading.Event(), threading.Event()

    def hold() -> None:
        with store.lock(path, timeout=timeout):
            inside.set()
            leave.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert inside.wait(10), f"another thread could not take the lock on {path}"
        yield
    finally:
        leave.set()
        holder.join()
