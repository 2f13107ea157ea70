"""Which lock block a store call belongs to.

A lock block is a transaction that every store call of its owner joins, through any
store on the same engine. The owner is the caller that opened it: one thread and, when
an asyncio event loop runs in that thread, one task. Each database keeps its blocks in a
``contextvars`` variable of its own (:class:`Blocks`), so they follow the caller's
context: another thread never sees them, and neither does a task created before the
block opened.

A context can also be copied *while* a block is open (``asyncio.create_task`` or
``asyncio.to_thread`` inside the block, or a ``fork``). The copy sees the block but is
not its owner, so its calls run on their own: never two callers on one connection. A
copy run by the owner's own thread after the block ended (``copy_context().run``, a
``loop.call_soon`` callback scheduled from outside any task) still sees the block, but
the block is over (:attr:`Block.done`), so its calls run on their own too.
"""

from __future__ import annotations

from asyncio import current_task
from asyncio.events import _get_running_loop
from collections.abc import Callable
from contextvars import ContextVar, Token
from threading import get_ident
from typing import TYPE_CHECKING

from . import forking

if TYPE_CHECKING:
    from .connection import PooledConnection


class Block:
    """An open lock block: its connection (and transaction), and what it holds.

    A plain class with slots, not a dataclass: one is made on every lock, as the lock's
    context manager itself (a subclass), and filled in by :meth:`open`.

    Attributes:
        conn: The connection carrying the block's transaction.
        held: The lock keys taken so far (the outermost block's and nested ones); the
            transaction holds them all until it ends.
        active: The keys of the blocks open now (the outermost and the nested ones
            not yet left): only these count as already locked by the caller.
        depth: How many blocks are nested inside the outermost one.
        thread: The thread that opened it (``threading.get_ident``).
        task: The asyncio task that opened it; ``None`` where no event loop ran.
        generation: The fork generation of the process that opened it
            (:data:`sqlstore.forking.generation`; cheaper to compare than a pid, which
            is a system call each time).
        when_done: Callbacks to run once the block has committed or rolled back.
        failed: The error of a statement that failed in the block, if one did: the
            block then rolls back when it ends, whatever the caller made of the error.
        witness: What the dialect took at the block's start to find out later whether
            its commit landed (PostgreSQL: the transaction id), if anything.
        done: Whether the block has ended (a copied context may still hold it).
    """

    __slots__ = (
        "active",
        "conn",
        "depth",
        "done",
        "failed",
        "generation",
        "held",
        "task",
        "thread",
        "when_done",
        "witness",
    )

    def open(self, conn: PooledConnection, key: bytes, witness: object = None) -> None:
        """Start the block on ``conn``, which holds the lock ``key`` now."""
        self.conn = conn
        self.held = {key}
        self.active = {key}
        self.depth = 0
        self.thread = get_ident()
        # _get_running_loop answers None where no loop runs, without the cost of the
        # exception asyncio.current_task raises then.
        loop = _get_running_loop()
        self.task = None if loop is None else current_task(loop)
        self.generation = forking.generation
        self.when_done: list[Callable[[], None]] = []
        self.failed: Exception | None = None
        self.witness = witness
        self.done = False

    @property
    def inherited(self) -> bool:
        """Whether this process only inherited the block across a fork."""
        return self.generation != forking.generation


class Blocks:
    """The caller's open lock block on one database, kept in a context variable.

    One variable per database, not one shared mapping: opening a block sets it, with
    no mapping to copy, and a call finds its block with no lookup by database.
    """

    __slots__ = ("_open", "enter", "leave")

    def __init__(self, name: str) -> None:
        # Made once per engine (not per call), so the context variables stay few.
        self._open: ContextVar[Block | None] = ContextVar(name, default=None)
        #: Make a block the caller's until :meth:`leave` (the variable's own ``set``,
        #: called with no Python frame between).
        self.enter: Callable[[Block | None], Token[Block | None]] = self._open.set
        #: Undo :meth:`enter` (the variable's own ``reset``); it raises ``ValueError``
        #: where the block is left in another context than it was entered in: then
        #: :meth:`leave_elsewhere`.
        self.leave: Callable[[Token[Block | None]], None] = self._open.reset

    def current(self) -> Block | None:
        """The caller's own open block, if any."""
        block = self._open.get()
        # Block.inherited written out: this runs on every call.
        if (
            block is None
            or block.done
            or block.generation != forking.generation
            or block.thread != get_ident()
        ):
            return None  # None at once: no block open in this context (most calls)
        loop = _get_running_loop()
        if block.task is not (None if loop is None else current_task(loop)):
            return None
        return block

    def leave_elsewhere(self, entered: Token[Block | None]) -> None:
        """Undo :meth:`enter` in a context other than the one it was entered in."""
        before = entered.old_value
        self._open.set(None if before is Token.MISSING else before)
