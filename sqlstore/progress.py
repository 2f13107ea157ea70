"""A minimal progress bar for long-running commands, drawn on a terminal only.

Library functions accept any object with :meth:`Progress.start`,
:meth:`Progress.advance` and :meth:`Progress.finish`; :data:`QUIET` draws nothing.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["QUIET", "Progress"]

_WIDTH = 30
_INTERVAL = 0.1


class Progress:
    """A one-line bar such as ``import [#########.....] 312/500``, redrawn in place.

    Args:
        stream: Where to draw (default: ``sys.stderr``).
        enabled: Whether to draw at all; by default only when ``stream`` is a terminal.
    """

    def __init__(self, stream: TextIO | None = None, *, enabled: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self.label = ""
        self.total = 0
        self.done = 0
        self._drawn = 0.0
        self._active = False

    def start(self, total: int, label: str) -> None:
        """Begin a bar of ``total`` steps named ``label``."""
        self.total, self.label, self.done = max(0, total), label, 0
        self._active = True
        self._draw(force=True)

    def advance(self, count: int = 1) -> None:
        """Record ``count`` more steps done."""
        self.done += count
        self._draw()

    def finish(self) -> None:
        """Draw the final state and end the line."""
        if not self._active:
            return
        self._draw(force=True)
        self._active = False
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()

    def render(self) -> str:
        """The bar as text, e.g. ``copy [###...] 3/10``."""
        total = max(self.total, self.done)
        filled = _WIDTH if total == 0 else _WIDTH * self.done // total
        bar = "#" * filled + "." * (_WIDTH - filled)
        return f"{self.label} [{bar}] {self.done}/{total}"

    def _draw(self, *, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._drawn < _INTERVAL:
            return
        self._drawn = now
        self.stream.write("\r" + self.render())
        self.stream.flush()


#: A progress object that draws nothing.
QUIET = Progress(enabled=False)
