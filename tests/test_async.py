"""asyncio: a lock block belongs to the task that opened it, never to its neighbours."""

from __future__ import annotations

import asyncio
import contextvars
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

import sqlstore
from sqlstore import SQLFileStore

pytestmark = pytest.mark.timeout(60)


class Boom(Exception):
    pass


async def _block_that_fails(store: SQLFileStore, opened: asyncio.Event, go: asyncio.Event) -> None:
    with store.lock("events/.eventlog.lock", timeout=5):
        store.write("events/half-done", "x")
        opened.set()
        await go.wait()  # other tasks run while the block is open
        raise Boom


def test_another_tasks_write_is_not_part_of_an_open_block(
    engine: sa.Engine, db_dialect: str, migrated_url: URL
) -> None:
    if db_dialect == "sqlite":
        # One writer per database file: the other task's write waits for the block's
        # lock, which it cannot get while the block's task waits on it. It must fail
        # with a named timeout, not join the block.
        engine = sqlstore.create_engine(migrated_url, sqlite_busy_timeout=0.5)
    blocked = SQLFileStore(engine, "async-a-" + _suffix())
    other = SQLFileStore(engine, "async-b-" + _suffix())

    async def main() -> BaseException | None:
        opened, go = asyncio.Event(), asyncio.Event()
        failing = asyncio.create_task(_block_that_fails(blocked, opened, go))
        await opened.wait()
        outcome: BaseException | None = None
        try:
            other.write("base_state.json", "kept")  # returns normally: must persist
        except sqlstore.LockTimeoutError as exc:
            outcome = exc
        go.set()
        with pytest.raises(Boom):
            await failing
        return outcome

    outcome = asyncio.run(main())
    assert not blocked.exists("events/half-done")
    if db_dialect == "sqlite":
        assert isinstance(outcome, TimeoutError)
        assert not other.exists("base_state.json")
    else:
        assert outcome is None
        assert other.read("base_state.json") == "kept"


# On SQLite the child task's write would wait for its parent's writer lock.
@pytest.mark.parametrize("backend", ["postgresql", "mysql"], indirect=True)
def test_a_task_started_inside_a_block_runs_on_its_own(engine: sa.Engine) -> None:
    parent = SQLFileStore(engine, "async-p-" + _suffix())
    child = SQLFileStore(engine, "async-c-" + _suffix())

    async def write_from_child() -> None:
        child.write("mine", "child")

    async def main() -> None:
        with pytest.raises(Boom), parent.lock("l", timeout=5):
            parent.write("mine", "parent")
            # The new task copies this context, block included, yet is not its owner.
            await asyncio.create_task(write_from_child())
            raise Boom

    asyncio.run(main())
    assert not parent.exists("mine")
    assert child.read("mine") == "child"


def test_the_owning_task_joins_its_own_block_across_awaits(engine: sa.Engine) -> None:
    store = SQLFileStore(engine, "async-o-" + _suffix())

    async def main() -> None:
        with pytest.raises(Boom), store.lock("l", timeout=5):
            store.write("a", "1")
            await asyncio.sleep(0)
            store.write("b", "2")
            assert store.read("a") == "1"
            raise Boom
        with store.lock("l", timeout=5):
            store.write("a", "1")
            await asyncio.sleep(0)
            with pytest.raises(sqlstore.LockTimeoutError):
                store.lock("l", timeout=5).__enter__()  # not re-entrant, also across awaits

    asyncio.run(main())
    assert store.read("a") == "1"
    assert not store.exists("b")


def _suffix() -> str:
    return uuid.uuid4().hex


def test_a_context_copied_before_a_block_and_run_in_it_by_its_thread_joins_it(
    store: SQLFileStore,
) -> None:
    """The caller is the thread (no loop runs): a context it runs is the caller too."""
    store.write("before", "0")  # a block was open and closed in this context before
    with store.lock("l", timeout=5):
        pass
    copied = contextvars.copy_context()
    with pytest.raises(Boom), store.lock("l", timeout=5):
        store.write("in", "1")
        copied.run(store.write, "copied", "2")  # joins the block: no second writer
        assert copied.run(store.read, "in") == "1"  # sees the block's own write
        raise Boom
    assert not store.exists("in")
    assert not store.exists("copied")  # rolled back with the block
    assert store.read("before") == "0"


def test_a_context_copied_in_a_block_and_run_after_it_calls_on_its_own(
    store: SQLFileStore,
) -> None:
    """The owner's thread runs a copy of the block's context once the block is over."""
    with store.lock("l", timeout=5):
        store.write("in", "1")
        copied = contextvars.copy_context()
    copied.run(store.write, "copied", "2")
    assert store.read("copied") == "2"

    errors: list[BaseException] = []

    def write_soon() -> None:
        try:
            store.write("soon", "3")
        except BaseException as exc:  # a callback's error would only be logged
            errors.append(exc)

    loop = asyncio.new_event_loop()
    try:
        with store.lock("l", timeout=5):
            store.write("in", "4")
            loop.call_soon(write_soon)  # from outside any task: the context is copied
        loop.run_until_complete(asyncio.sleep(0))  # runs it, outside any task too
    finally:
        loop.close()
    assert errors == []
    assert store.read("soon") == "3"
    assert store.read("in") == "4"
