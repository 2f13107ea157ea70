"""Which lock block a store call belongs to.

A lock block is a transaction that every store call of its owner joins, through any
store on the same engine. The owner is the caller that opened it: one thread and, when
an asyncio event loop runs in that thread, one task. Each database keeps its blocks in a
``contextvars`` variable of its own (:class:`Blocks`), so they follow the caller's
context: another thread never sees them, and neither does a task created before the
block opened.

The variable holds a :class:`Slot` per owner and context, and the slot holds the open
block, so that opening a block sets no variable once the owner has a slot. A context
copied from the owner's (``asyncio.create_task`` or ``asyncio.to_thread`` inside the
block, a task or a ``copy_context()`` made before it, or a ``fork``) shares the slot
and may see the block, but only its owner joins it: another thread or task, or a
forked child, runs its calls on their own, never two callers on one connection. A
copy run by the owner's own thread is the owner (its calls join a block open then);
once the block is over its slot no longer holds it (and :attr:`Block.done` says so to
whatever still refers to it).
"""

from __future__ import annotations

from asyncio import current_task
from asyncio.events import _get_running_loop
from collections.abc import Callable
from contextvars import ContextVar
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
        # Lists, not sets: a block holds one key or a few (a set costs more to make).
        self.held = [key]
        self.active = [key]
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


class Slot:
    """Where one owner's open block is kept, in the contexts that owner runs in.

    The context variable holds a slot, not the block: opening and closing a block sets
    and clears the slot's :attr:`block`, and the variable is set only when an owner
    first opens a block in a context (a set and its reset cost more than the rest of
    the bookkeeping). A context copied from the owner's shares its slot, and sees what
    is open in it now, as it sees the block now; a caller that is not the slot's owner
    (another thread, another task) never writes into it: it sets a slot of its own in
    its context.

    Attributes:
        thread: The owner's thread (``threading.get_ident``).
        task: The owner's asyncio task; ``None`` where no event loop ran.
        block: The owner's open outermost block, if any.
    """

    __slots__ = ("block", "task", "thread")

    def __init__(self, thread: int, task: object) -> None:
        self.thread = thread
        self.task = task
        self.block: Block | None = None


class Blocks:
    """The callers' open lock blocks on one database, kept in a context variable.

    One variable per database, not one shared mapping: a call finds its block with no
    lookup by database.
    """

    __slots__ = ("_open",)

    def __init__(self, name: str) -> None:
        # Made once per engine (not per call), so the context variables stay few.
        self._open: ContextVar[Slot | None] = ContextVar(name, default=None)

    def current(self) -> Block | None:
        """The caller's own open block, if any."""
        slot = self._open.get()
        if slot is None:
            return None  # None at once: no block ever opened in this context
        block = slot.block
        # Block.inherited written out: this runs on every call.
        if (
            block is None
            or block.done
            or block.generation != forking.generation
            or block.thread != get_ident()
        ):
            return None  # no block open (most calls), or not the caller's
        loop = _get_running_loop()
        if block.task is not (None if loop is None else current_task(loop)):
            return None
        return block

    def enter(self, block: Block) -> tuple[Slot, Block | None]:
        """Make ``block``, just opened by the caller, the caller's until it is left.

        Returns:
            What leaving it takes: the slot it is kept in, and the slot's block before
            (restore it with ``slot.block = before``, in any context).
        """
        slot = self._open.get()
        if slot is None or slot.thread != block.thread or slot.task is not block.task:
            # This owner's first block in this context (a copied context keeps the
            # slot of the owner it was copied from, which only that owner writes).
            slot = Slot(block.thread, block.task)
            self._open.set(slot)
        before = slot.block
        slot.block = block
        return slot, before
