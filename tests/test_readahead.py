"""Read-ahead: one query serves the next files of a listed directory, within its limits.

Each test changes files behind the store's back (through a second store) to see
whether a read came from read-ahead or from the database.
"""

from __future__ import annotations

import threading
import time
import tracemalloc

import pytest
import sqlalchemy as sa

from sqlstore import SQLFileStore


def _stores(
    engine: sa.Engine, namespace: str, **options: float
) -> tuple[SQLFileStore, SQLFileStore]:
    reader = SQLFileStore(engine, namespace, **options)  # type: ignore[arg-type]
    other = SQLFileStore(engine, namespace, read_ahead=0)
    for i in range(10):
        other.write(f"events/event-{i:05d}.json", f"v{i}")
    return reader, other


def _change_all(other: SQLFileStore) -> None:
    for i in range(10):
        other.write(f"events/event-{i:05d}.json", f"changed{i}")


def test_resume_pattern_reads_ahead(engine: sa.Engine, namespace: str) -> None:
    reader, other = _stores(engine, namespace)
    names = reader.list("events")
    assert reader.read(names[-1]) == "v9"  # the newest: fetches a batch going down
    _change_all(other)
    # Served from the batch: the values as they were when it was fetched.
    assert [reader.read(n) for n in reversed(names[:-1])] == [f"v{i}" for i in range(8, -1, -1)]
    # Each file is served once; reading again asks the database.
    assert reader.read(names[0]) == "changed0"


def test_reading_upwards_reads_ahead_upwards(engine: sa.Engine, namespace: str) -> None:
    reader, other = _stores(engine, namespace)
    names = reader.list("events")
    assert reader.read(names[0]) == "v0"
    assert reader.read(names[1]) == "v1"  # now going up: a batch from event 1 upwards
    _change_all(other)
    assert [reader.read(n) for n in names[2:]] == [f"v{i}" for i in range(2, 10)]


def test_nothing_older_than_max_age(engine: sa.Engine, namespace: str) -> None:
    reader, other = _stores(engine, namespace, read_ahead_max_age=0.2)
    names = reader.list("events")
    reader.read(names[-1])
    _change_all(other)
    time.sleep(0.3)
    assert reader.read(names[-2]) == "changed8"


def test_own_writes_drop_what_was_read_ahead(engine: sa.Engine, namespace: str) -> None:
    reader, other = _stores(engine, namespace)
    names = reader.list("events")
    reader.read(names[-1])
    _change_all(other)
    reader.write("base_state.json", "{}")  # any write of this store
    assert reader.read(names[-2]) == "changed8"
    reader.list("events")
    reader.read(names[-1])
    other.write(names[-3], "again")
    reader.delete("unrelated")  # deletes too
    assert reader.read(names[-3]) == "again"


def test_own_write_of_a_read_ahead_file_is_seen(engine: sa.Engine, namespace: str) -> None:
    reader, _ = _stores(engine, namespace)
    names = reader.list("events")
    reader.read(names[-1])
    reader.write(names[-2], "mine")
    assert reader.read(names[-2]) == "mine"


def test_no_read_ahead_without_a_listing_or_inside_a_lock_block(
    engine: sa.Engine, namespace: str
) -> None:
    reader, other = _stores(engine, namespace)
    reader.read("events/event-00009.json")  # not listed: a plain read
    _change_all(other)
    assert reader.read("events/event-00008.json") == "changed8"
    names = reader.list("events")
    with reader.lock("events/.eventlog.lock"):
        reader.read(names[-1])
        other_value = "in-block"
        other.write(names[-2], other_value)
        assert reader.read(names[-2]) == other_value


def test_read_ahead_off(engine: sa.Engine, namespace: str) -> None:
    reader, other = _stores(engine, namespace, read_ahead=0)
    names = reader.list("events")
    reader.read(names[-1])
    _change_all(other)
    assert reader.read(names[-2]) == "changed8"


def test_deleted_and_binary_files_through_read_ahead(engine: sa.Engine, namespace: str) -> None:
    reader, other = _stores(engine, namespace)
    other.write("events/binary.bin", b"\xff\x00")
    names = reader.list("events")
    assert names[0] == "events/binary.bin"
    assert reader.read(names[-1]) == "v9"
    other.delete(names[-2])
    assert reader.read(names[-2]) == "v8"  # read ahead before the delete, within max_age
    assert reader.read_bytes(names[0]) == b"\xff\x00"
    assert not reader.exists(names[-2])  # exists is never cached


def test_a_batch_fetched_while_a_block_was_open_does_not_outlive_its_commit(
    engine: sa.Engine, namespace: str
) -> None:
    store = SQLFileStore(engine, namespace)
    for name in ("f1", "f2", "f3"):
        store.write(f"d/{name}", "old")
    filled, committed = threading.Event(), threading.Event()

    def read_meanwhile() -> None:
        # Another thread, same store: lists and starts a batch from the committed state.
        assert store.list("d") == ["d/f1", "d/f2", "d/f3"]
        assert store.read("d/f3") == "old"
        filled.set()

    with store.lock("d.lock", timeout=5):
        store.write("d/f2", "new")
        store.delete("d/f1")
        reader = threading.Thread(target=read_meanwhile)
        reader.start()
        assert filled.wait(10)
        reader.join()
    committed.set()
    # After its own commit the store serves its own writes, never the older batch.
    assert store.read("d/f2") == "new"
    with pytest.raises(FileNotFoundError):
        store.read("d/f1")


def test_large_files_are_never_fetched_ahead(engine: sa.Engine, namespace: str) -> None:
    big = 2 << 20
    other = SQLFileStore(engine, namespace, read_ahead=0)
    for i in range(8):
        other.write(f"events/big-{i}", bytes([i]) * big)
    reader = SQLFileStore(engine, namespace)
    names = reader.list("events")
    tracemalloc.start()
    try:
        assert reader.read_bytes(names[-1]) == bytes([7]) * big
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # One file's worth (and the driver's copy of it), not eight.
    assert peak < 4 * big
    assert reader.read_bytes(names[-2]) == bytes([6]) * big
