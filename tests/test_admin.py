"""The library beneath the ``sqlstore`` command (:mod:`sqlstore.admin`), called directly.

Every function runs on every backend here and is judged by what it returns and raises;
``test_cli.py`` checks what the command line makes of it (parsing, printing, exit codes).
"""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

import sqlstore
from sqlstore import SQLFileStore, admin
from sqlstore.catalog import path_of, prefix_range
from sqlstore.progress import Progress
from sqlstore.schema import SCHEMA_REVISION, files

OLD = datetime(2020, 1, 1, 12, 0, 0)
NOW_SLACK = timedelta(minutes=5)  # between this machine's clock and the server's


def _unique(prefix: str = "adm") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _age(engine: sa.Engine, namespace: str) -> None:
    """Make every file of ``namespace`` look last written on 2020-01-01."""
    with engine.begin() as conn:
        conn.execute(
            sa.update(files)
            .where(files.c.namespace == namespace)
            .values(created_at=OLD, updated_at=OLD)
        )


def _tables(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(sa.inspect(conn).get_table_names())


def _recent(value: datetime) -> bool:
    """An aware UTC time within a few minutes of now."""
    return value.tzinfo is not None and abs(value - datetime.now(UTC)) < NOW_SLACK


@pytest.fixture
def empty_engine(empty_url: URL) -> Iterator[sa.Engine]:
    """An engine on a fresh database of the backend, with no sqlstore schema."""
    engine = sqlstore.create_engine(empty_url)
    yield engine
    engine.dispose()


# -- schema ----------------------------------------------------------------------------


def test_upgrade_stamp_downgrade_and_current_revision(
    empty_engine: sa.Engine, tmp_path: Path
) -> None:
    engine = empty_engine
    head = admin.head_revision()
    assert head == SCHEMA_REVISION
    assert admin.current_revision(engine) is None

    # Unmigrated: every operation refuses with SchemaError, and creates nothing.
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f").write_bytes(b"x")
    refusals = [
        lambda: admin.require_schema(engine),
        lambda: admin.namespaces(engine),
        lambda: admin.ls(engine, "ns"),
        lambda: admin.du(engine, "ns"),
        lambda: admin.cat(engine, "ns", "f"),
        lambda: admin.put(engine, "ns", "f", b"x"),
        lambda: admin.rm(engine, "ns", "f"),
        lambda: admin.import_directory(engine, tree, "ns"),
        lambda: admin.export_namespace(engine, "ns", tmp_path / "out"),
        lambda: admin.purge(engine, timedelta(days=1)),
    ]
    for refuse in refusals:
        with pytest.raises(sqlstore.SchemaError, match="no sqlstore schema"):
            refuse()
    assert not {"sqlstore_files", "sqlstore_chunks"} & _tables(engine)
    assert not (tmp_path / "out").exists()

    assert admin.upgrade(engine) is None
    assert admin.current_revision(engine) == head
    admin.require_schema(engine)
    admin.upgrade(engine)  # at head already: nothing changes
    assert admin.current_revision(engine) == head
    admin.put(engine, "ns", "f", b"kept")

    # stamp changes the record only: the tables and their rows stay.
    admin.stamp(engine, "base")
    assert admin.current_revision(engine) is None
    assert {"sqlstore_files", "sqlstore_chunks"} <= _tables(engine)
    with pytest.raises(sqlstore.SchemaError):
        admin.cat(engine, "ns", "f")
    admin.stamp(engine, "head")
    assert admin.cat(engine, "ns", "f") == b"kept"

    with pytest.raises(Exception, match="nosuchrevision"):
        admin.downgrade(engine, "nosuchrevision")
    assert admin.current_revision(engine) == head

    admin.downgrade(engine, "base")  # drops sqlstore's tables and their data
    assert admin.current_revision(engine) is None
    assert not {"sqlstore_files", "sqlstore_chunks"} & _tables(engine)
    admin.upgrade(engine, head)
    assert admin.current_revision(engine) == head
    with pytest.raises(FileNotFoundError):
        admin.cat(engine, "ns", "f")


# -- inspection ------------------------------------------------------------------------


def test_namespaces_totals_by_name(engine: sa.Engine) -> None:
    prefix = _unique("ns") + "-"
    SQLFileStore(engine, prefix + "b").write("f", b"\x00\xff")
    a = SQLFileStore(engine, prefix + "a")
    a.write("base_state.json", "abc")
    a.write("events/event-00000-x.json", "12345")
    _age(engine, prefix + "b")

    found = admin.namespaces(engine, prefix=prefix)
    assert [(s.namespace, s.files, s.size) for s in found] == [
        (prefix + "a", 2, 8),
        (prefix + "b", 1, 2),
    ]
    assert _recent(found[0].updated_at)
    assert found[1].updated_at == OLD.replace(tzinfo=UTC)  # UTC on every backend
    everything = {s.namespace for s in admin.namespaces(engine)}
    assert {prefix + "a", prefix + "b"} <= everything
    # A prefix is a prefix: no LIKE wildcards, no case folding.
    assert admin.namespaces(engine, prefix=prefix.upper()) == []
    assert admin.namespaces(engine, prefix=prefix[:-1] + "_") == []
    assert admin.namespaces(engine, prefix=prefix[:-1] + "%") == []
    for ns in (prefix + "a", prefix + "b"):
        SQLFileStore(engine, ns).delete("")
    assert admin.namespaces(engine, prefix=prefix) == []  # no files, no namespace


def test_ls_and_du(engine: sa.Engine) -> None:
    ns = _unique()
    store = SQLFileStore(engine, ns)
    store.write("base_state.json", "{}")
    store.write("events/event-00000-a.json", "12345")
    store.write("events/event-00001-b.json", "1234567")
    store.write("events/sub/deep.json", "1")
    store.write("eventsx", "sibling sharing a prefix")

    top = admin.ls(engine, ns)
    assert [(e.path, e.is_dir, e.files, e.size) for e in top] == [
        ("base_state.json", False, 1, 2),
        ("events/", True, 3, 13),
        ("eventsx", False, 1, 24),
    ]
    assert all(_recent(e.updated_at) for e in top)
    assert admin.ls(engine, ns, "/events/") == admin.ls(engine, ns, "events")
    assert [(e.path, e.is_dir, e.files) for e in admin.ls(engine, ns, "events")] == [
        ("events/event-00000-a.json", False, 1),
        ("events/event-00001-b.json", False, 1),
        ("events/sub/", True, 1),
    ]
    assert [e.path for e in admin.ls(engine, ns, "events", recursive=True)] == [
        "events/event-00000-a.json",
        "events/event-00001-b.json",
        "events/sub/deep.json",
    ]
    (one,) = admin.ls(engine, ns, "events/event-00000-a.json", recursive=True)
    assert (one.path, one.is_dir, one.size) == ("events/event-00000-a.json", False, 5)

    whole = admin.du(engine, ns)
    assert (whole.namespace, whole.path, whole.files, whole.size) == (ns, "", 5, 39)
    assert whole.updated_at is not None and _recent(whole.updated_at)
    events = admin.du(engine, ns, "/events/")
    assert (events.path, events.files, events.size) == ("events", 3, 13)
    assert admin.du(engine, ns, "eventsx").files == 1

    with pytest.raises(FileNotFoundError, match=f"no such file or directory: {ns}/nope"):
        admin.ls(engine, ns, "nope")
    with pytest.raises(FileNotFoundError, match=f"no such file or directory: {ns}/event"):
        admin.du(engine, ns, "event")  # a prefix of a name is not a path
    with pytest.raises(FileNotFoundError, match="no such namespace"):
        admin.ls(engine, _unique())
    with pytest.raises(FileNotFoundError, match="no such namespace"):
        admin.du(engine, _unique())
    with pytest.raises(ValueError, match="escapes"):
        admin.ls(engine, ns, "../x")
    store.delete("")


# -- single files ----------------------------------------------------------------------


def test_put_cat_rm(engine: sa.Engine) -> None:
    ns = _unique()
    binary = bytes(range(256)) * 4 + b"\x00"
    large = random.Random(5).randbytes(3 * 1024 * 1024 + 7)  # chunked on MySQL
    assert admin.put(engine, ns, "dir/blob.bin", binary) is None
    admin.put(engine, ns, "dir/empty", b"")
    admin.put(engine, ns, "/dir/sub/large", large)
    assert admin.cat(engine, ns, "dir/blob.bin") == binary
    assert admin.cat(engine, ns, "dir/empty") == b""
    assert admin.cat(engine, ns, "dir/sub/large") == large
    admin.put(engine, ns, "dir/blob.bin", b"overwritten")
    assert admin.cat(engine, ns, "dir/blob.bin") == b"overwritten"
    assert SQLFileStore(engine, ns).read_bytes("dir/blob.bin") == b"overwritten"

    before = admin.du(engine, ns)
    refused = [
        (IsADirectoryError, lambda: admin.put(engine, ns, "dir", b"x")),
        (IsADirectoryError, lambda: admin.put(engine, ns, "", b"x")),
        (FileExistsError, lambda: admin.put(engine, ns, "dir/empty/below", b"x")),
        (ValueError, lambda: admin.put(engine, ns, "../escape", b"x")),
        (IsADirectoryError, lambda: admin.cat(engine, ns, "dir")),
        (IsADirectoryError, lambda: admin.rm(engine, ns, "dir")),
        (FileNotFoundError, lambda: admin.rm(engine, ns, "dir/missing")),
    ]
    for error, call in refused:
        with pytest.raises(error):
            call()
    assert admin.du(engine, ns) == before  # nothing changed
    with pytest.raises(FileNotFoundError, match=f"no such file: {ns}/missing"):
        admin.cat(engine, ns, "missing")

    assert admin.rm(engine, ns, "dir/blob.bin") == 1
    with pytest.raises(FileNotFoundError):
        admin.cat(engine, ns, "dir/blob.bin")
    assert admin.rm(engine, ns, "dir/empty", recursive=True) == 1  # -r on a file: the file
    admin.put(engine, ns, "top", b"1")
    assert admin.rm(engine, ns, "dir", recursive=True) == 1
    assert [e.path for e in admin.ls(engine, ns)] == ["top"]
    admin.put(engine, ns, "a/b/c", b"1")
    assert admin.rm(engine, ns, "/", recursive=True) == 2  # empties the namespace
    with pytest.raises(FileNotFoundError, match="no such namespace"):
        admin.rm(engine, ns, "/", recursive=True)


# -- import and export -----------------------------------------------------------------


def _persistence_dir(root: Path) -> dict[str, dict[str, bytes]]:
    """Two conversations as the SDK's LocalFileStore leaves them, with its litter."""
    conversations = {
        uuid.uuid4().hex: {
            "base_state.json": b'{"id": 1}',
            "events/event-00000-a.json": b'{"kind": "MessageEvent"}',
            "events/.eventlog-len-1.marker": b"",
        },
        uuid.uuid4().hex: {
            "base_state.json": b'{"id": 2}',
            "events/event-00000-b.json": "é".encode() + b"\x00",
        },
    }
    for ns, tree in conversations.items():
        for rel, data in tree.items():
            (root / ns / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / ns / rel).write_bytes(data)
        (root / ns / "events" / ".eventlog.lock").write_bytes(b"")
    first = next(iter(conversations))
    (root / first / "events" / ".base_state.json.x1y2.tmp").write_bytes(b"half")
    (root / "notes.txt").write_text("not a conversation")
    return conversations


def test_import_directory(engine: sa.Engine, tmp_path: Path) -> None:
    root = tmp_path / "conversations"
    conversations = _persistence_dir(root)
    first = next(iter(conversations))
    month_ago = (datetime.now(UTC) - timedelta(days=30)).timestamp()
    os.utime(root / first / "base_state.json", (month_ago, month_ago))

    report = admin.import_directory(engine, root)
    assert report.namespaces == sorted(conversations)
    files_in = [data for tree in conversations.values() for data in tree.values()]
    assert (report.written, report.bytes_written, report.unchanged) == (
        len(files_in),
        sum(len(d) for d in files_in),
        0,
    )
    assert report.skipped == 4 == len(report.skipped_paths)
    assert sorted(report.skipped_paths) == sorted(
        [
            f"{first}/events/.base_state.json.x1y2.tmp (temporary file)",
            f"{first}/events/.eventlog.lock (lock file)",
            f"{list(conversations)[1]}/events/.eventlog.lock (lock file)",
            "notes.txt (not a conversation directory)",
        ]
    )
    for ns, tree in conversations.items():
        store = SQLFileStore(engine, ns)
        for rel, data in tree.items():
            assert store.read_bytes(rel) == data
        assert not store.exists("events/.eventlog.lock")
    # Each file keeps its modification time on disk.
    (state,) = admin.ls(engine, first, "base_state.json")
    assert abs(state.updated_at.timestamp() - month_ago) < 1

    again = admin.import_directory(engine, root)
    assert (again.written, again.unchanged, again.bytes_written) == (0, len(files_in), 0)
    (root / first / "base_state.json").write_bytes(b'{"id": 1, "changed": true}')
    changed = admin.import_directory(engine, root)
    assert (changed.written, changed.unchanged) == (1, len(files_in) - 1)

    # One tree into a namespace of its choosing.
    ns = _unique()
    tree = admin.import_directory(engine, root / first, ns)
    assert tree.namespaces == [ns]
    assert tree.written == len(conversations[first])
    assert admin.cat(engine, ns, "events/event-00000-a.json") == b'{"kind": "MessageEvent"}'

    with pytest.raises(NotADirectoryError):
        admin.import_directory(engine, tmp_path / "nowhere")
    with pytest.raises(NotADirectoryError):
        admin.import_directory(engine, root / "notes.txt", ns)
    with pytest.raises(ValueError, match="no conversation directories"):
        admin.import_directory(engine, root / first / "events")
    with pytest.raises(ValueError, match="namespace"):
        admin.import_directory(engine, root / first, "")
    for name in [*conversations, ns]:
        SQLFileStore(engine, name).delete("")


def test_export_namespace(engine: sa.Engine, tmp_path: Path) -> None:
    ns = _unique()
    store = SQLFileStore(engine, ns)
    content = {
        "base_state.json": b"{}",
        "events/event-00000-a.json": bytes(range(256)),
        "dir with space/ü.json": "ü".encode(),
        "empty": b"",
    }
    for rel, data in content.items():
        store.write(rel, data)
    _age(engine, ns)
    out = tmp_path / "out"
    (out / "events").mkdir(parents=True)
    (out / "events" / "local-only").write_bytes(b"mine")

    report = admin.export_namespace(engine, ns, out)
    assert report.namespaces == [ns]
    assert (report.written, report.bytes_written, report.unchanged, report.skipped) == (
        len(content),
        sum(len(d) for d in content.values()),
        0,
        0,
    )
    for rel, data in content.items():
        assert (out / rel).read_bytes() == data
        assert (out / rel).stat().st_mtime == pytest.approx(OLD.replace(tzinfo=UTC).timestamp())
    assert (out / "events" / "local-only").read_bytes() == b"mine"  # left alone
    assert not list(out.rglob("*.tmp"))

    again = admin.export_namespace(engine, ns, out)
    assert (again.written, again.unchanged) == (0, len(content))
    (out / "empty").write_bytes(b"changed on disk")
    assert admin.export_namespace(engine, ns, out).written == 1
    assert (out / "empty").read_bytes() == b""

    with pytest.raises(FileNotFoundError, match="no such namespace"):
        admin.export_namespace(engine, _unique(), tmp_path / "none")
    assert not (tmp_path / "none").exists()
    store.delete("")


# -- copy ------------------------------------------------------------------------------


def test_copy_every_namespace_from_sqlite_and_back(empty_engine: sa.Engine, tmp_path: Path) -> None:
    """From a SQLite file to this backend and back: bytes, names and times travel."""
    source = sqlstore.create_engine(make_url(f"sqlite:///{tmp_path / 'source.db'}"))
    back = sqlstore.create_engine(make_url(f"sqlite:///{tmp_path / 'back.db'}"))
    try:
        admin.upgrade(source)
        admin.upgrade(back)
        content = {
            ("conv-1", "base_state.json"): b"{}",
            ("conv-1", "events/event-00000-a.json"): bytes(range(256)),
            ("conv-é", "CASE"): b"upper",
            ("conv-é", "case"): b"lower",
            ("conv-é", "big.bin"): random.Random(3).randbytes(2 * 1024 * 1024 + 1),
            ("old", "f"): b"old",
        }
        for (ns, rel), data in content.items():
            SQLFileStore(source, ns).write(rel, data)
        _age(source, "old")

        with pytest.raises(sqlstore.SchemaError):
            admin.copy(source, empty_engine)
        admin.upgrade(empty_engine)
        SQLFileStore(empty_engine, "conv-1").write("only-here", b"stays")

        report = admin.copy(source, empty_engine)
        assert report.namespaces == ["conv-1", "conv-é", "old"]
        assert (report.written, report.unchanged, report.skipped) == (len(content), 0, 0)
        assert report.bytes_written == sum(len(d) for d in content.values())
        assert admin.copy(empty_engine, back).written == len(content) + 1
        for engine in (empty_engine, back):
            for (ns, rel), data in content.items():
                assert admin.cat(engine, ns, rel) == data
            assert admin.cat(engine, "conv-1", "only-here") == b"stays"
            (old,) = admin.namespaces(engine, prefix="old")
            assert old.updated_at == OLD.replace(tzinfo=UTC)

        again = admin.copy(source, empty_engine, ["old", "conv-1", "old"])
        assert again.namespaces == ["conv-1", "old"]  # by name, each once
        assert (again.written, again.unchanged) == (0, 3)
        with pytest.raises(FileNotFoundError, match="not in the source database: nope"):
            admin.copy(source, empty_engine, ["conv-1", "nope"])
    finally:
        source.dispose()
        back.dispose()


# -- purge -----------------------------------------------------------------------------


class _WriteWhenStarted(Progress):
    """A progress report that writes to a namespace once the purge has scanned."""

    def __init__(self, store: SQLFileStore) -> None:
        super().__init__(enabled=False)
        self.store = store

    def start(self, total: int, label: str) -> None:
        super().start(total, label)
        self.store.write("late", "written after the scan")


def test_purge(engine: sa.Engine) -> None:
    prefix = _unique("purge") + "-"
    names = [prefix + key for key in ("a-old", "b-old", "c-late", "d-fresh")]
    for ns in names:
        SQLFileStore(engine, ns).write("events/event-00000-a.json", "12345")
    for ns in names[:3]:
        _age(engine, ns)
    outsider = _unique("keep")  # old, but outside the prefix
    SQLFileStore(engine, outsider).write("f", "x")
    _age(engine, outsider)

    dry = admin.purge(engine, timedelta(days=30), prefix=prefix, dry_run=True)
    assert dry.dry_run
    assert [s.namespace for s in dry.removed] == names[:3]
    assert (dry.files, dry.size, dry.kept) == (3, 15, [])
    assert abs(dry.cutoff - (datetime.now(UTC) - timedelta(days=30))) < NOW_SLACK
    assert len(admin.namespaces(engine, prefix=prefix)) == 4  # nothing deleted
    one_by_one = admin.purge(engine, timedelta(days=30), prefix=prefix, dry_run=True, batch=1)
    assert one_by_one.removed == dry.removed

    late = SQLFileStore(engine, names[2])
    done = admin.purge(engine, timedelta(days=30), prefix=prefix, progress=_WriteWhenStarted(late))
    assert not done.dry_run
    assert [s.namespace for s in done.removed] == names[:2]
    assert done.kept == [names[2]]  # written between the scan and its turn
    assert [s.namespace for s in admin.namespaces(engine, prefix=prefix)] == [names[2], names[3]]
    assert SQLFileStore(engine, names[0]).list("") == []
    assert admin.namespaces(engine, prefix=outsider)  # outside the prefix: kept
    assert admin.purge(engine, timedelta(days=30), prefix=prefix).removed == []

    for bad in (timedelta(0), timedelta(seconds=-1)):
        with pytest.raises(ValueError, match="positive"):
            admin.purge(engine, bad)
    for ns in [*names, outsider]:
        SQLFileStore(engine, ns).delete("")


# -- helpers that need no database -----------------------------------------------------


def test_parse_age() -> None:
    assert admin.parse_age("30d") == timedelta(days=30)
    assert admin.parse_age("1d12h") == timedelta(hours=36)
    assert admin.parse_age("2w") == timedelta(weeks=2)
    assert admin.parse_age("90m") == timedelta(minutes=90)
    assert admin.parse_age("45s") == timedelta(seconds=45)
    for bad in ("", "30", "d", "0d", "-1d", "1y", "1.5d"):
        with pytest.raises(ValueError, match="invalid age"):
            admin.parse_age(bad)


def test_catalog_helpers() -> None:
    assert path_of(b"", "base_state.json") == "base_state.json"
    assert path_of(sqlstore.paths.dir_key("events/sub"), "a.json") == "events/sub/a.json"
    assert prefix_range("ab") == ("ab", "ac")
    assert prefix_range("a\U0010ffff") == ("a\U0010ffff", "b")
    assert prefix_range("\U0010ffff") == ("\U0010ffff", None)
    assert prefix_range("\ud7ff") == ("\ud7ff", "\ue000")
