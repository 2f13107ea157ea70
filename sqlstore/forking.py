"""Staying correct across ``os.fork()``.

A forked child (``multiprocessing``'s default start method on Linux, gunicorn and
uvicorn pre-fork workers) inherits the parent's pooled connections: the same sockets.
Used from both sides, they mix two conversations' traffic on one server session, and
closed from the child they end the parent's session (psycopg's and PyMySQL's ``close``
tell the server goodbye). So a child must neither use nor close them.

Right after a fork, in the child, every object registered here gets
``after_fork()``: a :class:`~sqlstore.database.Database` replaces its engine's pool
without closing the old one, forgets locks other threads may have held, and drops a
lock block the forking thread had open. What the child inherited but must not close
goes to :func:`keep`, which holds it for the life of the process.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol


class ForkAware(Protocol):
    """An object that puts itself right in a forked child."""

    def after_fork(self) -> None:
        """Called in the child, right after the fork, before anything else runs."""


#: Incremented in each forked child; objects with per-process state compare it.
generation = 0
#: Set in a child once the process has forked (then pooled connections of unknown
#: origin may be the parent's).
forked = False

_registered: weakref.WeakSet[ForkAware] = weakref.WeakSet()
_kept: list[object] = []


def register(obj: ForkAware) -> None:
    """Call ``obj.after_fork()`` in every child forked from now on (while ``obj`` lives)."""
    _registered.add(obj)


def keep(obj: object) -> None:
    """Hold ``obj`` until the process ends, so no finalizer of the child ever closes it."""
    _kept.append(obj)


def _after_fork_in_child() -> None:
    global generation, forked
    generation += 1
    forked = True
    # Other threads do not exist in the child; no lock taken here can be held.
    for obj in list(_registered):
        obj.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
