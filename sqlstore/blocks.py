"""Which lock block a store call belongs to.

A lock block is a transaction that every store call of its owner joins, through any
store on the same engine. The owner is the caller that opened it: one thread and, when
an asyncio event loop runs in that thread, one task. Blocks are kept in a
``contextvars`` variable, so they follow the caller's context: another thread never
sees them, and neither does a task created before the block opened.

A context can also be copied *while* a block is open (``asyncio.create_task`` or
``asyncio.to_thread`` inside the block, or a ``fork``). The copy sees the block but is
not its owner, so its calls run on their own: never two callers on one connection. A
copy run by the owner's own thread after the block ended (``copy_context().run``, a
``loop.call_soon`` callback scheduled from outside any task) still sees the block, but
the block is over (:attr:`Block.done`), so its calls run on their own too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from contextvars import ContextVar, Token
from threading import get_ident
from types import MappingProxyType
from typing import TYPE_CHECKING

from . import forking

if TYPE_CHECKING:
    from .connection import PooledConnection

Owner = tuple[int, object]

_open: ContextVar[Mapping[object, Block]] = ContextVar(
    "sqlstore_lock_blocks", default=MappingProxyType({})
)


def owner() -> Owner:
    """The caller's identity: its thread, and its asyncio task if one is running."""
    # _get_running_loop answers None where no loop runs, without the cost of an
    # exception (asyncio.current_task raises then); this runs on every lock.
    loop = asyncio._get_running_loop()
    return get_ident(), None if loop is None else asyncio.current_task(loop)


class Block:
    """An open lock block: its connection (and transaction), and what it holds.

    A plain class with slots, not a dataclass: one is made on every lock.

    Attributes:
        conn: The connection carrying the block's transaction.
        held: The lock keys taken so far (the outermost block's and nested ones); the
            transaction holds them all until it ends.
        active: The keys of the blocks open now (the outermost and the nested ones
            not yet left): only these count as already locked by the caller.
        depth: How many blocks are nested inside the outermost one.
        owner: The thread and task that opened it.
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
        "owner",
        "when_done",
        "witness",
    )

    def __init__(
        self,
        conn: PooledConnection,
        held: set[bytes],
        active: set[bytes],
        *,
        witness: object = None,
    ) -> None:
        self.conn = conn
        self.held = held
        self.active = active
        self.depth = 0
        self.owner: Owner = owner()
        self.generation = forking.generation
        self.when_done: list[Callable[[], None]] = []
        self.failed: Exception | None = None
        self.witness = witness
        self.done = False

    @property
    def inherited(self) -> bool:
        """Whether this process only inherited the block across a fork."""
        return self.generation != forking.generation


def current(database: object) -> Block | None:
    """The caller's own open block on ``database``, if any."""
    blocks = _open.get()
    if not blocks:
        return None  # the common case: no block anywhere in this context
    block = blocks.get(database)
    # owner() and Block.inherited written out: this runs on every call inside a block.
    if block is None or block.done or block.generation != forking.generation:
        return None
    loop = asyncio._get_running_loop()
    if block.owner != (get_ident(), None if loop is None else asyncio.current_task(loop)):
        return None
    return block


Entered = tuple[Token[Mapping[object, Block]], Mapping[object, Block]]


def enter(database: object, block: Block) -> Entered:
    """Make ``block`` the caller's block on ``database`` until :func:`leave`."""
    before = _open.get()
    return _open.set({**before, database: block}), before


def leave(entered: Entered) -> None:
    """Undo :func:`enter`."""
    token, before = entered
    try:
        _open.reset(token)
    except ValueError:  # left in another context than it was entered in
        _open.set(before)
