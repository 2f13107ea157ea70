"""The FileStore contract (shared/docs/filestore-contract.md), clause by clause."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Callable

import pytest
import sqlalchemy as sa

import sqlstore
from sqlstore import SQLFileStore, paths
from tests.faults import kill_other_sessions

# -- namespaces ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "a\x00b", "x" * 256])
def test_invalid_namespace_is_a_value_error(engine: sa.Engine, bad: str) -> None:
    with pytest.raises(ValueError):
        SQLFileStore(engine, bad)


def test_namespace_must_be_a_string(engine: sa.Engine) -> None:
    with pytest.raises(TypeError):
        SQLFileStore(engine, 42)  # type: ignore[arg-type]


def test_longest_namespace_works(engine: sa.Engine) -> None:
    store = SQLFileStore(engine, "ü" * 255)
    store.write("f", "x")
    assert store.read("f") == "x"
    store.delete("")


def test_namespaces_are_isolated(new_store: Callable[[], SQLFileStore]) -> None:
    a, b = new_store(), new_store()
    a.write("events/one.json", "a")
    b.write("events/two.json", "b")
    b.write("only-b", "b")
    assert a.list("events") == ["events/one.json"]
    assert a.list("") == ["events/"]
    assert not a.exists("only-b")
    with pytest.raises(FileNotFoundError):
        a.read("only-b")
    a.delete("")
    assert a.list("") == []
    assert b.list("") == ["events/", "only-b"]
    assert b.read("events/two.json") == "b"


def test_a_namespace_that_is_a_prefix_of_another_sees_nothing_of_it(
    engine: sa.Engine, namespace: str
) -> None:
    short, long = SQLFileStore(engine, namespace), SQLFileStore(engine, namespace + "x")
    long.write("f", "1")
    assert short.list("") == []
    short.delete("")
    assert long.read("f") == "1"


def test_creating_stores_opens_no_connection(engine: sa.Engine) -> None:
    before = engine.pool.checkedout()
    stores = [SQLFileStore(engine, f"conversation-{i}") for i in range(1000)]
    assert engine.pool.checkedout() == before
    assert len({s.namespace for s in stores}) == 1000


def test_with_namespace_shares_the_engine(store: SQLFileStore) -> None:
    other = store.with_namespace(store.namespace + "-2")
    assert other.engine is store.engine
    other.write("x", "1")
    assert not store.exists("x")
    other.delete("")


# -- paths --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spelling", ["a/b.json", "/a/b.json", "a\\b.json", "./a/b.json", "a/x/../b.json", "a//b.json"]
)
def test_paths_are_normalised_like_local_file_store(store: SQLFileStore, spelling: str) -> None:
    store.write(spelling, "v")
    assert store.read("a/b.json") == "v"
    assert store.list("a") == ["a/b.json"]


@pytest.mark.parametrize("bad", ["..", "../x", "a/../../b", "..\\x", "//etc/passwd", "\\abs"])
def test_escaping_paths_are_value_errors_and_change_nothing(store: SQLFileStore, bad: str) -> None:
    store.write("keep", "1")
    for call in (
        lambda: store.write(bad, "x"),
        lambda: store.read(bad),
        lambda: store.read_bytes(bad),
        lambda: store.list(bad),
        lambda: store.exists(bad),
        lambda: store.delete(bad),
        lambda: store.get_absolute_path(bad),
    ):
        with pytest.raises(ValueError, match="escapes filestore root"):
            call()
    with pytest.raises(ValueError), store.lock(bad):
        pass
    assert store.list("") == ["keep"]


def test_nul_in_a_path_is_a_value_error(store: SQLFileStore) -> None:
    with pytest.raises(ValueError):
        store.write("a\x00b", "x")
    with pytest.raises(ValueError):
        store.delete("a\x00")
    assert store.list("") == []


def test_path_length_limit(store: SQLFileStore) -> None:
    longest = (
        "/".join(["d" * 99] * 10) + "/" + "😀" * 24
    )  # 1024 characters, 4-byte UTF-8 at the end
    assert len(longest) == paths.MAX_PATH_LENGTH
    store.write(longest, "x")
    assert store.read(longest) == "x"
    assert store.list(longest.rsplit("/", 1)[0]) == [longest]
    with pytest.raises(ValueError, match="longer than"):
        store.write(longest + "e", "x")


def test_paths_are_case_sensitive(store: SQLFileStore) -> None:
    store.write("Events/A.json", "upper")
    store.write("events/a.json", "lower")
    assert store.read("Events/A.json") == "upper"
    assert store.read("events/a.json") == "lower"
    assert store.list("") == ["Events/", "events/"]
    assert not store.exists("EVENTS")


def test_like_wildcards_are_ordinary_characters(store: SQLFileStore) -> None:
    store.write("a_/x", "1")
    store.write("ab/y", "2")
    store.write("a%/z", "3")
    store.write("aXc", "4")
    assert store.list("a_") == ["a_/x"]
    assert store.list("a%") == ["a%/z"]
    assert not store.exists("a_c")
    store.delete("a_")
    assert store.list("") == ["a%/", "aXc", "ab/"]


def test_trailing_spaces_are_significant(store: SQLFileStore) -> None:
    store.write("a", "no space")
    store.write("a ", "one space")
    assert store.read("a") == "no space"
    assert store.read("a ") == "one space"
    store.delete("a")
    assert store.read("a ") == "one space"
    assert store.list("") == ["a "]


def test_unicode_paths(store: SQLFileStore) -> None:
    store.write("über/ファイル.json", "1")
    store.write("über/😀", "2")
    assert store.list("über") == ["über/ファイル.json", "über/😀"]
    assert store.read("über/😀") == "2"


# -- content ------------------------------------------------------------------------


def test_str_is_stored_as_utf8(store: SQLFileStore) -> None:
    store.write("t", "héllo ✓")
    assert store.read("t") == "héllo ✓"
    assert store.read_bytes("t") == "héllo ✓".encode()


def test_bytes_are_stored_unchanged(store: SQLFileStore) -> None:
    data = bytes(range(256)) * 4 + b"\x00\xff trailing  "
    store.write("b", data)
    assert store.read_bytes("b") == data


@pytest.mark.parametrize("kind", [bytearray, memoryview])
def test_bytes_like_content(store: SQLFileStore, kind: type) -> None:
    store.write("b", kind(b"\x01\x02"))
    assert store.read_bytes("b") == b"\x01\x02"


def test_invalid_utf8_reads_as_bytes_only(store: SQLFileStore) -> None:
    store.write("bin", b"\xff\xfe\x00")
    with pytest.raises(UnicodeDecodeError):
        store.read("bin")
    assert store.read_bytes("bin") == b"\xff\xfe\x00"


def test_empty_content_is_a_file(store: SQLFileStore) -> None:
    store.write("events/.eventlog-len-3.marker", "")
    assert store.exists("events/.eventlog-len-3.marker")
    assert store.read("events/.eventlog-len-3.marker") == ""
    assert store.list("events") == ["events/.eventlog-len-3.marker"]


@pytest.mark.parametrize("bad", [None, 1, 1.5, ["x"], {"a": 1}])
def test_other_content_types_are_type_errors(store: SQLFileStore, bad: object) -> None:
    with pytest.raises(TypeError):
        store.write("x", bad)  # type: ignore[arg-type]
    assert not store.exists("x")


def test_overwrite_replaces_content(store: SQLFileStore) -> None:
    store.write("f", "first, longer content")
    store.write("f", "second")
    store.write("f", "second")
    assert store.read("f") == "second"


def test_missing_file_is_file_not_found_with_the_path(store: SQLFileStore) -> None:
    with pytest.raises(FileNotFoundError) as info:
        store.read("base_state.json")
    assert info.value.args[0] == "base_state.json"
    with pytest.raises(FileNotFoundError):
        store.read_bytes("nope/nope")


def test_reading_a_directory_is_is_a_directory_error(store: SQLFileStore) -> None:
    store.write("d/f", "1")
    for target in ("d", "", "/"):
        with pytest.raises(IsADirectoryError):
            store.read(target)
        with pytest.raises(IsADirectoryError):
            store.read_bytes(target)


@pytest.mark.slow
def test_large_content_round_trips(store: SQLFileStore, db_dialect: str) -> None:
    size = (16 if db_dialect == "mysql" else 64) << 20
    data = bytes(range(251)) * (size // 251) + b"end"
    store.write("big.bin", data)
    assert store.read_bytes("big.bin") == data
    # Overwrite a chunked file with a small one, then with a large one again.
    store.write("big.bin", "small")
    assert store.read("big.bin") == "small"
    store.write("big.bin", data[::-1])
    assert store.read_bytes("big.bin") == data[::-1]
    store.delete("big.bin")
    assert not store.exists("big.bin")


def test_content_that_shrinks_and_grows_again(store: SQLFileStore) -> None:
    """On MySQL: 4 chunks, then none (the old ones stay, unread), then 2 chunks."""
    big, small, medium = b"a" * (3_500_000), b"small", bytes(range(256)) * 6000
    store.write("f", big)
    store.write("f", small)
    assert store.read_bytes("f") == small
    store.write("f", medium)
    assert store.read_bytes("f") == medium
    store.delete("f")
    assert not store.exists("f")


def test_content_beyond_the_dialect_limit_is_refused_whole(store: SQLFileStore) -> None:
    limit = store._db.strategy.max_content_size
    store.write("f", "old")
    with pytest.raises(sqlstore.FileTooLargeError) as info:
        store.write("f", bytes(limit + 1))
    assert isinstance(info.value, OSError)
    assert store.read("f") == "old"


# -- the tree -----------------------------------------------------------------------


def test_writing_below_a_file_is_file_exists_error(store: SQLFileStore) -> None:
    store.write("a", "file")
    with pytest.raises(FileExistsError):
        store.write("a/b", "x")
    with pytest.raises(FileExistsError):
        store.write("a/b/c", "x")
    assert store.list("") == ["a"]
    assert store.read("a") == "file"


def test_writing_a_directory_is_is_a_directory_error(store: SQLFileStore) -> None:
    store.write("a/b/c", "x")
    for target in ("a", "a/b"):
        with pytest.raises(IsADirectoryError):
            store.write(target, "x")
    assert store.read("a/b/c") == "x"
    assert store.list("a") == ["a/b/"]


@pytest.mark.parametrize("root", ["", ".", "/"])
def test_the_root_is_always_a_directory(store: SQLFileStore, root: str) -> None:
    with pytest.raises(IsADirectoryError):
        store.write(root, "x")
    assert store.exists(root)


def test_an_emptied_directory_disappears(store: SQLFileStore) -> None:
    store.write("d/e/f", "1")
    store.delete("d/e/f")
    assert not store.exists("d/e")
    assert not store.exists("d")
    assert store.list("") == []
    store.write("d", "now a file")
    assert store.read("d") == "now a file"


# -- list ---------------------------------------------------------------------------


def test_list_of_a_file_echoes_the_path_as_passed(store: SQLFileStore) -> None:
    store.write("events/e.json", "{}")
    assert store.list("events/e.json") == ["events/e.json"]
    assert store.list("/events/e.json") == ["/events/e.json"]


def test_list_shows_direct_children_sorted_with_slash_on_dirs(store: SQLFileStore) -> None:
    for path in (
        "d/b.json",
        "d/a.json",
        "d/sub/deep/x",
        "d/sub/y",
        "d/c/z",
        "d/.hidden",
        "d-x/q",
        "d.d/r",
    ):
        store.write(path, "1")
    assert store.list("d") == ["d/.hidden", "d/a.json", "d/b.json", "d/c/", "d/sub/"]
    assert store.list("d/") == ["d/.hidden", "d/a.json", "d/b.json", "d/c/", "d/sub/"]
    assert store.list("/d") == ["/d/.hidden", "/d/a.json", "/d/b.json", "/d/c/", "/d/sub/"]
    # Sorted by name: "d" < "d-x" < "d.d".
    assert store.list("") == ["d/", "d-x/", "d.d/"]
    assert store.list("d/sub") == ["d/sub/deep/", "d/sub/y"]


def test_list_names_each_child_once(store: SQLFileStore) -> None:
    for i in range(30):
        store.write(f"d/many/f{i:02d}", "x")
        store.write(f"d/many/sub{i % 3}/g{i}", "x")
    assert store.list("d") == ["d/many/"]
    listing = store.list("d/many")
    assert listing == sorted(listing)
    assert len(listing) == 33
    assert listing[-3:] == ["d/many/sub0/", "d/many/sub1/", "d/many/sub2/"]


def test_list_of_a_missing_path_is_empty(store: SQLFileStore) -> None:
    assert store.list("nope") == []
    assert store.list("") == []
    store.write("a/b", "1")
    assert store.list("a/c") == []


def test_list_skips_prefix_siblings(store: SQLFileStore) -> None:
    store.write("ab/z", "1")
    store.write("a-b/z", "1")
    store.write("a.b", "1")
    assert store.list("a") == []
    store.write("a/x", "1")
    assert store.list("a") == ["a/x"]


def test_list_of_the_root_shows_top_level(store: SQLFileStore) -> None:
    store.write("base_state.json", "{}")
    store.write("events/event-00000-x.json", "{}")
    store.write("events/event-00001-y.json", "{}")
    assert store.list("") == ["base_state.json", "events/"]
    assert store.list("/") == ["/base_state.json", "/events/"]


@pytest.mark.parametrize("backend", ["postgresql", "mysql"], indirect=True)
def test_list_survives_a_killed_connection(store: SQLFileStore, backend: str) -> None:
    store.write("events/e", "1")
    store.list("events")  # the pool now holds a connection
    kill_other_sessions(store.engine, backend)
    assert store.list("events") == ["events/e"]


# -- exists -------------------------------------------------------------------------


def test_exists(store: SQLFileStore) -> None:
    store.write("d/empty", "")
    store.write("ab/z", "1")
    assert store.exists("")
    assert store.exists("d")
    assert store.exists("d/")
    assert store.exists("d/empty")
    assert not store.exists("d/missing")
    assert not store.exists("a")
    assert not store.exists("d/empty/x")


def test_exists_is_never_cached(engine: sa.Engine, namespace: str) -> None:
    one, two = SQLFileStore(engine, namespace), SQLFileStore(engine, namespace)
    assert not one.exists("f")
    two.write("f", "1")
    assert one.exists("f")
    two.delete("f")
    assert not one.exists("f")


# -- delete -------------------------------------------------------------------------


def test_delete_a_file(store: SQLFileStore) -> None:
    store.write("d/a", "1")
    store.write("d/b", "2")
    store.delete("d/a")
    assert store.list("d") == ["d/b"]


def test_delete_a_directory_takes_its_subtree_only(store: SQLFileStore) -> None:
    for path in ("a/x", "a/b/c/d", "a/b/e", "ab/keep", "a-b/keep", "a.b", "b/keep"):
        store.write(path, "1")
    store.delete("a")
    assert store.list("") == ["a-b/", "a.b", "ab/", "b/"]
    assert store.read("ab/keep") == "1"


def test_delete_root_empties_the_namespace(store: SQLFileStore) -> None:
    for path in ("a", "b/c", "d/e/f"):
        store.write(path, "1")
    store.delete("")
    assert store.list("") == []
    assert not store.exists("b")


def test_delete_of_a_missing_path_is_a_no_op(store: SQLFileStore) -> None:
    store.write("keep", "1")
    store.delete("missing")
    store.delete("missing/deeper")
    store.delete("kee")
    assert store.list("") == ["keep"]


# -- identifiers, errors, threads ------------------------------------------------------


def test_absolute_path_names_database_namespace_and_path(store: SQLFileStore, backend: str) -> None:
    absolute = store.get_absolute_path("/events/e.json")
    assert absolute.startswith(f"sqlstore+{store.engine.url.get_backend_name()}://")
    assert absolute.endswith(f"/{store.namespace}/events/e.json")
    assert absolute == store.get_absolute_path("events/e.json")


def test_no_password_in_identifiers() -> None:
    engine = sqlstore.create_engine("postgresql+psycopg://user:s3cr3t-pw@127.0.0.1:1/db")
    store = SQLFileStore(engine, "ns")
    assert "s3cr3t-pw" not in store.get_absolute_path("x")
    assert "s3cr3t-pw" not in repr(store)
    with pytest.raises(sqlstore.DatabaseError) as info:
        store.exists("x")
    assert isinstance(info.value, OSError)
    assert "s3cr3t-pw" not in str(info.value)
    engine.dispose()


def test_unknown_dialect_is_a_clear_error() -> None:
    from sqlstore.dialects import strategy_for

    with pytest.raises(sqlstore.UnsupportedDialectError, match="oracle"):
        strategy_for("oracle")


def test_close_and_context_manager(migrated_url: sa.URL) -> None:
    with SQLFileStore.from_url(migrated_url, "ctx") as store:
        store.write("f", "1")
        store.flush()
        pool = store.engine.pool
        assert pool.checkedin() >= 1
    assert pool.checkedin() == 0
    reopened = SQLFileStore.from_url(migrated_url, "ctx")
    assert reopened.read("f") == "1"
    reopened.delete("")
    reopened.close()


def test_many_threads_share_one_store(store: SQLFileStore) -> None:
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(20):
                store.write(f"t{i}/f{j}", f"{i}-{j}")
                assert store.read(f"t{i}/f{j}") == f"{i}-{j}"
            assert len(store.list(f"t{i}")) == 20
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store.list("")) == 8


def test_works_inside_an_event_loop(store: SQLFileStore) -> None:
    async def main() -> str:
        store.write("async", "ok")
        return store.read("async")

    assert asyncio.run(main()) == "ok"


def test_sdk_file_store_isinstance_without_importing_the_sdk() -> None:
    code = (
        "import sys, sqlstore\n"
        "assert 'openhands' not in sys.modules, 'sqlstore imported the SDK'\n"
        "from openhands.sdk.io import FileStore\n"
        "e = sqlstore.create_engine('sqlite://')\n"
        "assert isinstance(sqlstore.SQLFileStore(e, 'n'), FileStore)\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.stdout.strip() == "ok", result.stderr


def test_sdk_imported_first_also_works() -> None:
    code = (
        "from openhands.sdk.io import FileStore\n"
        "import sqlstore\n"
        "e = sqlstore.create_engine('sqlite://')\n"
        "assert isinstance(sqlstore.SQLFileStore(e, 'n'), FileStore)\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.stdout.strip() == "ok", result.stderr


def test_a_store_remembers_the_ids_of_paths_and_never_their_files(
    engine: sa.Engine, store: SQLFileStore
) -> None:
    """Paths named again skip their hashing; what they name is read from the database."""
    other = SQLFileStore(engine, store.namespace)  # another writer of the namespace
    names = [f"events/event-{i:05d}.json" for i in range(200)]  # more than it keeps
    for name in names:
        store.write(name, name)
    store.write("marker-1", "")
    assert store.exists("marker-1")
    other.delete("marker-1")
    assert not store.exists("marker-1")
    other.write("marker-1", "back")
    assert store.read("marker-1") == "back"
    # The spellings of one path are one file, remembered or not.
    assert store.read("/marker-1") == store.read("./marker-1") == "back"
    assert [store.read(name) for name in names[::50]] == names[::50]
    store.delete("events")
    assert [store.exists(name) for name in names[::50]] == [False] * 4
    assert other.list("") == ["marker-1"]


def test_remembered_keys_are_the_keys(store: SQLFileStore) -> None:
    """What a store keeps of a path is what paths makes of it, through any spelling."""
    ns = store.namespace
    names = [f"d/f{i}" for i in range(300)]  # more than a store keeps: it forgets them
    spellings = ["/e/x", "./e//x", "e\\x", "e/x/../x", "é/ü", ""]
    for _ in range(2):
        for name in names + spellings:
            normal = paths.normalize(name)
            expected = (normal, paths.file_id(ns, normal), paths.dir_key(normal))
            assert store._key(name) == expected
            assert store._keys.get(name, expected) == expected
    with pytest.raises(ValueError):
        store._key("../up")
    assert "../up" not in store._keys


def test_a_read_on_the_kept_cursor_leaves_no_old_snapshot_behind(
    engine: sa.Engine, store: SQLFileStore
) -> None:
    """Reads of one row finish their statement: the next read sees another writer's change.

    (SQLite keeps one cursor per connection for statements that return no rows and for
    queries of one row at most; a statement left unfinished would pin a WAL snapshot.)
    """
    # A connection of its own: on the store's own connection any snapshot is current.
    writer = sqlstore.create_engine(engine.url)
    try:
        other = SQLFileStore(writer, store.namespace)
        store.write("dir/file", "one")
        for expected in ("two", "three"):
            assert store.exists("dir/file") and store.exists("dir")
            assert store.read("dir/file") != expected
            other.write("dir/file", expected)
            assert store.read("dir/file") == expected
        other.delete("dir")
        assert not store.exists("dir/file")
        assert store.list("dir") == []
    finally:
        writer.dispose()
