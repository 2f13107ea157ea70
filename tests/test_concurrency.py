"""Concurrency: many writers, one conversation; many conversations, no serialisation."""

from __future__ import annotations

import threading
import time
import uuid

import sqlalchemy as sa

from sqlstore import SQLFileStore
from tests.sdk_helpers import event_processes, threaded_append_worker
from tests.test_sdk import _assert_log

PROCESSES = 8
THREADS = 2
PER_THREAD = 125  # 8 processes x 2 threads x 125 = 2,000 appends


def test_many_processes_and_threads_append_to_one_conversation(
    migrated_url: sa.URL, engine: sa.Engine
) -> None:
    """8 processes x 250 appends through the SDK's EventLog: every event once, in order."""
    namespace = uuid.uuid4().hex
    url = migrated_url.render_as_string(hide_password=False)
    started = time.monotonic()
    with event_processes().Pool(PROCESSES) as pool:
        results = pool.starmap(
            threaded_append_worker,
            [(url, namespace, w, THREADS, PER_THREAD) for w in range(PROCESSES)],
        )
    elapsed = time.monotonic() - started
    ids = [i for worker_ids in results for i in worker_ids]
    total = PROCESSES * THREADS * PER_THREAD
    assert len(ids) == total
    _assert_log(SQLFileStore(engine, namespace), ids, total)
    print(f"\n{engine.dialect.name}: {total} appends, 0 lost, {total / elapsed:.0f} events/s")


def test_namespaces_do_not_serialise(engine: sa.Engine, backend: str) -> None:
    """Lock blocks on different conversations run side by side (SQLite: one writer)."""
    hold, workers = 0.4, 4
    barrier = threading.Barrier(workers)
    errors: list[BaseException] = []

    def conversation(i: int) -> None:
        store = SQLFileStore(engine, f"parallel-{uuid.uuid4().hex}")
        try:
            barrier.wait(10)
            with store.lock("events/.eventlog.lock", timeout=30):
                store.write(f"events/event-00000-{i}.json", "{}")
                time.sleep(hold)
            assert store.list("events") == [f"events/event-00000-{i}.json"]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=conversation, args=(i,)) for i in range(workers)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    assert errors == []
    if backend == "sqlite":
        # Documented: one writer per database file, so the blocks take turns.
        assert elapsed >= workers * hold * 0.95
    else:
        assert elapsed < workers * hold * 0.6


def test_a_large_file_read_in_a_lock_block_is_never_torn_by_an_overwrite(
    engine: sa.Engine, namespace: str
) -> None:
    """On MariaDB a file over 1 MiB is several rows; a read must see one version whole."""
    size = 3 << 20  # three chunks where contents are chunked
    versions = [bytes([ord("a")]) * size, bytes([ord("b")]) * (size + 1)]
    writer_store = SQLFileStore(engine, namespace)
    writer_store.write("big", versions[0])
    stop = threading.Event()

    def overwrite() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            writer_store.write("big", versions[n % 2])

    writer = threading.Thread(target=overwrite)
    writer.start()
    reader = SQLFileStore(engine, namespace)
    reads, deadline = 0, time.monotonic() + 3
    try:
        while time.monotonic() < deadline:
            with reader.lock("big.lock", timeout=10):
                got = reader.read_bytes("big")
            assert got in versions, f"torn read after {reads} reads"
            got = reader.read_bytes("big")  # and outside a block
            assert got in versions, f"torn read after {reads} reads"
            reads += 1
    finally:
        stop.set()
        writer.join()
    assert reads > 0
