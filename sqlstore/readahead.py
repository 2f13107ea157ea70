"""Bounded read-ahead for reading a listed directory file by file.

The SDK resumes a conversation by listing ``events/`` and then reading every event
file on its own, newest first. One query per file costs a round trip each; instead,
the first read of a file in a directory this store listed fetches the next
``size`` files of that directory, in the direction the reads travel, in one query.

Freshness: each file read ahead is served once, to the first read of it; the file that
started the batch is not kept at all, so reading a file twice always asks the database
the second time. A read served from read-ahead is never older than this store's own last
write or delete (both drop everything read ahead), and never older than ``max_age``
seconds; another store or process may have changed that file within that window. A
write inside a lock block drops everything read ahead again when the block ends, so a
batch fetched while the block was open never outlives its commit. Reads inside a lock
block never use it. Files over
:data:`~sqlstore.statements.READ_AHEAD_MAX_SIZE` bytes are never fetched ahead (the
query leaves them out). ``size=0`` turns read-ahead off.
"""

from __future__ import annotations

import posixpath
import threading
import time

from . import forking


class ReadAhead:
    """The read-ahead state of one store. Thread-safe."""

    def __init__(self, size: int, max_age: float) -> None:
        if size < 0 or max_age < 0:
            raise ValueError("read-ahead size and max age must not be negative")
        self.size = size
        self.max_age = max_age
        self._forks = forking.generation
        self._lock = threading.Lock()
        self._generation = 0
        self._listed: dict[str, float] = {}
        self._files: dict[str, tuple[bytes, float]] = {}
        self._last_read: dict[str, str] = {}
        self._pending = 0  # batches planned and not yet filled or cancelled

    def _in_this_process(self) -> threading.Lock:
        """The lock, new (with nothing read ahead) in a forked child."""
        if self._forks != forking.generation:
            # Another thread of the parent may have held the old lock at the fork.
            self._forks = forking.generation
            self._lock = threading.Lock()
            self._generation += 1
            self._listed, self._files, self._last_read = {}, {}, {}
            self._pending = 0
        return self._lock

    @property
    def enabled(self) -> bool:
        """Whether read-ahead is on."""
        return self.size > 0 and self.max_age > 0

    @property
    def idle(self) -> bool:
        """Whether nothing was listed or read ahead: reads need not look.

        A read-ahead needs a listed directory, and the record of listed ones never
        empties (but in a forked child, which starts a new generation): with none, no
        batch can be on its way either.
        """
        return not self._listed and not self._files

    def listed(self, directory: str) -> None:
        """Record that ``directory`` was just listed: its files are about to be read."""
        if not self.enabled:
            return
        with self._in_this_process():
            self._listed[directory] = time.monotonic()
            if len(self._listed) > 16:  # a handful of directories is all a resume needs
                oldest = min(self._listed, key=self._listed.__getitem__)
                del self._listed[oldest]

    def get(self, path: str) -> bytes | None:
        """The content of ``path`` if it was read ahead less than ``max_age`` ago (once)."""
        if not self._files:
            return None
        with self._in_this_process():
            found = self._files.pop(path, None)
            if found is None or time.monotonic() - found[1] > self.max_age:
                return None
            directory, name = posixpath.split(path)
            self._last_read[directory] = name
            return found[0]

    def plan(self, path: str) -> tuple[int, bool] | None:
        """Whether to read ahead for ``path``: ``(generation, descending)`` or ``None``.

        Only files directly in a directory listed within ``max_age`` qualify. The
        direction follows the previous read in that directory; the first read goes
        down, as the SDK's resume does.
        """
        if not self.enabled:
            return None
        directory, _, name = path.rpartition("/")
        if directory not in self._listed:  # most reads: not in a listed directory
            return None
        with self._in_this_process():
            listed = self._listed.get(directory)
            if listed is None or time.monotonic() - listed > self.max_age:
                return None
            previous = self._last_read.get(directory)
            if previous == name:
                return None  # the same file again: not a scan, read just it
            descending = previous is None or name < previous
            self._last_read[directory] = name
            self._pending += 1
            return self._generation, descending

    def cancel(self) -> None:
        """The batch :meth:`plan` planned was not fetched (the query failed)."""
        with self._in_this_process():
            self._pending = max(0, self._pending - 1)

    def fill(
        self,
        directory: str,
        rows: list[tuple[str, bytes]],
        requested: str,
        generation: int,
        fetched: float,
    ) -> None:
        """Keep a batch fetched at ``fetched`` (monotonic), unless a write came since.

        ``requested``, the file whose read fetched the batch, is served at once, not kept.
        """
        with self._in_this_process():
            self._pending = max(0, self._pending - 1)
            if generation != self._generation:
                return  # this store wrote meanwhile: the batch may predate it
            self._files = {
                posixpath.join(directory, name): (content, fetched)
                for name, content in rows
                if name != requested
            }

    def invalidate(self) -> None:
        """Forget everything read ahead (this store wrote or deleted something)."""
        if not self._files and not self._pending and self._forks == forking.generation:
            # Nothing kept and no batch on its way: one planned after this test was
            # planned after the write that calls this, so it reads what it wrote.
            return
        with self._in_this_process():
            self._generation += 1
            self._files = {}
