"""The ``sqlstore`` command line, on every backend, in-process (``cli.main``) and as a program.

Covers every command: ``db``, ``namespaces``, ``ls``, ``cat``, ``put``, ``rm``, ``du``,
``import`` of what the real SDK's ``LocalFileStore`` wrote (then resumed through
sqlstore), ``export`` (then resumed through ``LocalFileStore``), ``copy`` SQLite →
PostgreSQL → MariaDB → SQLite byte for byte, and ``purge``. A command without help text,
or missing from the "Command line" guide (docs/guides/cli.md), fails a test here.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from openhands.sdk.conversation.impl.local_conversation import LocalConversation
from openhands.sdk.io import LocalFileStore
from sqlalchemy.engine import URL, make_url

import sqlstore
from sqlstore import SQLFileStore, admin, cli
from sqlstore.catalog import file_rows, namespace_stats
from sqlstore.progress import Progress
from sqlstore.schema import files
from sqlstore.sdk import conversation_store
from tests.backends import database
from tests.conftest import _server
from tests.sdk_helpers import agent, summary

ROOT = Path(__file__).resolve().parent.parent
CLI_GUIDE = ROOT / "docs" / "guides" / "cli.md"
OLD = datetime(2020, 1, 1, 12, 0, 0)

pytestmark = pytest.mark.timeout(240)


# -- helpers ---------------------------------------------------------------------------


@dataclass
class Run:
    """One ``sqlstore`` invocation: exit code, stdout (text and raw) and stderr."""

    code: int
    out: str
    err: str
    raw: bytes


CLI = Callable[..., Run]


@pytest.fixture
def run(capsysbinary: pytest.CaptureFixture[bytes]) -> CLI:
    """``run("--url", url, "ls", ns)`` calls ``cli.main`` in-process and captures it."""

    def invoke(*argv: str) -> Run:
        capsysbinary.readouterr()
        code = cli.main(list(argv))
        out, err = capsysbinary.readouterr()
        return Run(code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"), out)

    return invoke


def _url(url: URL) -> str:
    return url.render_as_string(hide_password=False)


def _one_error_line(result: Run, *fragments: str) -> None:
    """The run failed with exit code 1 and one ``sqlstore: error:`` line naming ``fragments``."""
    assert result.code == 1, result
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("sqlstore: error: "), result.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def _unique(prefix: str = "cli") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _snapshot(
    engine: sa.Engine, namespaces: list[str] | None = None
) -> dict[tuple[str, str], bytes]:
    """Every file of ``namespaces`` (default: all) with its exact bytes."""
    names = namespaces or [s.namespace for s in namespace_stats(engine)]
    found = {}
    for ns in names:
        store = SQLFileStore(engine, ns)
        for row in file_rows(engine, ns):
            found[(ns, row.path)] = store.read_bytes(row.path)
    return found


def _age(engine: sa.Engine, namespace: str, path: str | None = None) -> None:
    """Make the files of ``namespace`` (or one of them) look written on 2020-01-01."""
    where = [files.c.namespace == namespace]
    if path is not None:
        where.append(files.c.file_id == sqlstore.paths.file_id(namespace, path))
    with engine.begin() as conn:
        conn.execute(sa.update(files).where(*where).values(created_at=OLD, updated_at=OLD))


def _sqlite_file(path: Path) -> URL:
    """A SQLite database file that exists but holds no tables."""
    sqlite3.connect(path).close()
    return make_url(f"sqlite:///{path}")


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[Callable[[str], URL]]:
    """Makes fresh, migrated databases of a given backend, dropped afterwards."""
    drops: list[Callable[[], None]] = []

    def make(backend: str) -> URL:
        if backend == "sqlite":
            url = make_url(f"sqlite:///{tmp_path / (_unique('db') + '.db')}")
        else:
            server = _server(backend)
            context = database(server)
            url = context.__enter__()
            drops.append(lambda: context.__exit__(None, None, None))
        sqlstore.migrate(url)
        return url

    yield make
    for drop in drops:
        drop()


# -- db --------------------------------------------------------------------------------


def test_db_commands(empty_url: URL, run: CLI, monkeypatch: pytest.MonkeyPatch) -> None:
    if empty_url.get_backend_name() == "sqlite":
        _sqlite_file(Path(str(empty_url.database)))
    url = _url(empty_url)
    shown = empty_url.render_as_string(hide_password=True)
    head = admin.head_revision()

    assert run("--url", url, "db", "current").out == "none (no sqlstore schema)\n"
    # The hint is the command to run, with the URL as it was given.
    upgrade = f"run `sqlstore --url {shlex.quote(shown)} db upgrade`"
    _one_error_line(run("--url", url, "db", "check"), "not at head", upgrade)
    _one_error_line(run("--url", url, "namespaces"), "no sqlstore schema", upgrade)

    done = run("--url", url, "db", "upgrade")
    assert done.code == 0, done.err
    assert done.out == f"upgraded {shown} from none (no sqlstore schema) to {head} (head)\n"
    assert run("--url", url, "db", "upgrade").out == f"{shown} is already at {head} (head)\n"
    # --url after the command, and $SQLSTORE_URL, work as well as --url before it.
    assert run("db", "current", "--url", url).out == f"{head} (head)\n"
    monkeypatch.setenv("SQLSTORE_URL", url)
    check = run("db", "check")
    assert (check.code, check.out) == (0, f"{shown} is at head ({head})\n")
    assert run("namespaces").out == "no namespaces\n"

    # stamp: the revision changes, the tables stay.
    assert run("db", "stamp", "base").out == f"stamped {shown} at none (no sqlstore schema)\n"
    _one_error_line(run("db", "check"), "is at none", "run `sqlstore db upgrade`")
    assert {"sqlstore_files", "sqlstore_chunks"} <= _tables(empty_url)
    assert run("db", "stamp", "head").code == 0
    assert run("db", "check").code == 0

    down = run("db", "downgrade", "base")
    assert down.out == f"downgraded {shown} from {head} (head) to none (no sqlstore schema)\n"
    assert not {"sqlstore_files", "sqlstore_chunks"} & _tables(empty_url)
    assert run("db", "current").out == "none (no sqlstore schema)\n"
    assert run("db", "upgrade", head).code == 0
    assert run("db", "current").out == f"{head} (head)\n"
    _one_error_line(run("db", "downgrade", "nosuchrevision"), "nosuchrevision")


def _tables(url: URL) -> set[str]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return set(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()


# -- inspection and single files -------------------------------------------------------


def test_namespaces(engine: sa.Engine, migrated_url: URL, run: CLI) -> None:
    prefix = _unique("ns") + "-"
    a, b = SQLFileStore(engine, prefix + "a"), SQLFileStore(engine, prefix + "b")
    a.write("base_state.json", "abc")
    a.write("events/event-00000-x.json", "12345")
    b.write("f", b"\x00\xff")
    url = _url(migrated_url)

    listed = json.loads(run("--url", url, "namespaces", "--prefix", prefix, "--json").out)
    assert [(n["namespace"], n["files"], n["size"]) for n in listed] == [
        (prefix + "a", 2, 8),
        (prefix + "b", 1, 2),
    ]
    for item in listed:  # UTC on every dialect, whatever the driver returns
        updated = datetime.fromisoformat(item["updated_at"])
        assert abs(updated - datetime.now(UTC)) < timedelta(minutes=5)

    table = run("--url", url, "namespaces", "--prefix", prefix).out.splitlines()
    assert table[0].split() == ["NAMESPACE", "FILES", "SIZE", "UPDATED", "(UTC)"]
    assert table[1].split()[:3] == [prefix + "a", "2", "8"]
    assert table[2].split()[:3] == [prefix + "b", "1", "2"]
    assert table[3] == "2 namespaces, 3 files, 10 bytes"
    everything = run("--url", url, "namespaces").out
    assert prefix + "a" in everything and prefix + "b" in everything
    # A prefix is a prefix: no LIKE wildcards, no case folding.
    assert run("--url", url, "namespaces", "--prefix", prefix.upper()).out == "no namespaces\n"
    assert run("--url", url, "namespaces", "--prefix", prefix[:-1] + "_").out == "no namespaces\n"


def test_file_commands(
    engine: sa.Engine,
    migrated_url: URL,
    run: CLI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, ns = _url(migrated_url), _unique()
    data = bytes(range(256)) * 10 + "é".encode()
    local = tmp_path / "blob"
    local.write_bytes(data)

    put = run("--url", url, "put", ns, "dir/blob.bin", str(local))
    assert (put.code, put.out) == (0, f"wrote {len(data)} bytes to {ns}/dir/blob.bin\n")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"\x00\xffstdin")))
    assert run("--url", url, "put", ns, "dir/sub/x.txt").code == 0
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"top")))
    assert run("--url", url, "put", ns, "top.txt", "-").code == 0
    store = SQLFileStore(engine, ns)
    assert store.read_bytes("dir/blob.bin") == data
    assert store.read_bytes("dir/sub/x.txt") == b"\x00\xffstdin"

    cat = run("--url", url, "cat", ns, "dir/blob.bin")
    assert (cat.code, cat.raw, cat.err) == (0, data, "")
    assert run("--url", url, "cat", ns, "dir/sub/x.txt").raw == b"\x00\xffstdin"

    ls = run("--url", url, "ls", ns).out.splitlines()
    assert ls[0].split() == ["SIZE", "UPDATED", "(UTC)", "PATH"]
    assert [(line.split()[0], line.split()[-1]) for line in ls[1:]] == [
        (str(len(data) + 7), "dir/"),
        ("3", "top.txt"),
    ]
    entries = json.loads(run("--url", url, "ls", ns, "dir", "--json").out)
    assert [(e["path"], e["type"], e["files"], e["size"]) for e in entries] == [
        ("dir/blob.bin", "file", 1, len(data)),
        ("dir/sub/", "directory", 1, 7),
    ]
    recursive = json.loads(run("--url", url, "ls", "-r", ns, "--json").out)
    assert [e["path"] for e in recursive] == ["dir/blob.bin", "dir/sub/x.txt", "top.txt"]
    one = json.loads(run("--url", url, "ls", ns, "dir/blob.bin", "--json").out)
    assert [e["path"] for e in one] == ["dir/blob.bin"]
    _one_error_line(run("--url", url, "ls", ns, "nope"), f"no such file or directory: {ns}/nope")
    _one_error_line(run("--url", url, "ls", _unique()), "no such namespace")

    usage = json.loads(run("--url", url, "du", ns, "--json").out)
    assert (usage["files"], usage["size"]) == (3, len(data) + 10)
    table = run("--url", url, "du", ns, "dir/sub").out.splitlines()
    assert table[1].split()[:2] == ["1", "7"] and table[1].endswith(f"{ns}/dir/sub")

    _one_error_line(run("--url", url, "cat", ns, "dir"), "is a directory")
    _one_error_line(run("--url", url, "cat", ns, "missing"), f"no such file: {ns}/missing")
    _one_error_line(run("--url", url, "put", ns, "top.txt/below", str(local)), "is a file")
    _one_error_line(run("--url", url, "put", ns, "../escape", str(local)), "escapes")
    _one_error_line(run("--url", url, "put", ns, "x", str(tmp_path / "none")), "No such file")

    _one_error_line(run("--url", url, "rm", ns, "dir"), "is a directory (use -r")
    assert (
        run("--url", url, "rm", ns, "dir/blob.bin").out
        == f"removed 1 file from {ns}/dir/blob.bin\n"
    )
    _one_error_line(run("--url", url, "rm", ns, "dir/blob.bin"), "no such file or directory")
    assert run("--url", url, "rm", "-r", ns, "dir").out == f"removed 1 file from {ns}/dir\n"
    assert store.list("") == ["top.txt"]
    assert run("--url", url, "rm", "-r", ns, "/").out == f"removed 1 file from {ns}\n"
    assert store.list("") == []


# -- import and export with the real SDK -----------------------------------------------


def _sdk_conversation(
    workspace: Path, cid: uuid.UUID, reply: str, **where: object
) -> list[tuple[str, str]]:
    """Run a scripted conversation (one user message, one reply); its events' summary."""
    conversation = LocalConversation(
        agent=agent(reply),
        workspace=str(workspace),
        conversation_id=cid,
        visualizer=None,
        **where,  # type: ignore[arg-type]
    )
    conversation.send_message("hi")
    conversation.run()
    events = summary(conversation.state.events)
    conversation.close()
    return events


def test_import_what_the_sdk_wrote_then_resume_through_sqlstore(
    engine: sa.Engine, migrated_url: URL, run: CLI, tmp_path: Path
) -> None:
    persistence = tmp_path / "conversations"
    ids = [uuid.uuid4(), uuid.uuid4()]
    written = {
        cid: _sdk_conversation(
            tmp_path / "ws", cid, f"Hello from {cid.hex[:6]}.", persistence_dir=str(persistence)
        )
        for cid in ids
    }
    on_disk = sorted(p for p in persistence.rglob("*") if p.is_file())
    locks = [p for p in on_disk if p.name.endswith(".lock")]
    assert len(locks) == 2  # the SDK's filelock leaves events/.eventlog.lock behind
    state = [p for p in on_disk if p not in locks]

    url = _url(migrated_url)
    first = run("--url", url, "import", str(persistence))
    assert first.code == 0, first.err
    assert first.err == ""  # no progress bar when stderr is not a terminal
    assert first.out == (
        f"imported 2 namespaces from {persistence}: {len(state)} files written "
        f"({sum(p.stat().st_size for p in state)} bytes), 0 unchanged, 2 skipped\n"
    )
    for path in state:
        ns, rel = path.relative_to(persistence).parts[0], path.relative_to(persistence).parts[1:]
        assert SQLFileStore(engine, ns).read_bytes("/".join(rel)) == path.read_bytes()
    for cid in ids:
        assert not SQLFileStore(engine, cid.hex).exists("events/.eventlog.lock")

    # Importing again changes nothing: no file is rewritten (updated_at stays).
    before = {cid: file_rows(engine, cid.hex) for cid in ids}
    again = run("--url", url, "import", str(persistence), "--verbose")
    assert again.out.splitlines()[0] == (
        f"imported 2 namespaces from {persistence}: 0 files written (0 bytes), "
        f"{len(state)} unchanged, 2 skipped"
    )
    assert sorted(again.out.splitlines()[1:]) == sorted(
        f"skipped {p.relative_to(persistence).as_posix()} (lock file)" for p in locks
    )
    assert {cid: file_rows(engine, cid.hex) for cid in ids} == before

    # Resume one conversation from the database and continue it.
    cid = ids[0]
    store = conversation_store(engine, cid)
    resumed = LocalConversation(
        agent=agent("Resumed from the database."),
        workspace=str(tmp_path / "ws"),
        conversation_id=cid,
        file_store=store,
        visualizer=None,
    )
    assert summary(resumed.state.events) == written[cid]
    resumed.send_message("still there?")
    resumed.run()
    resumed.close()
    reopened = LocalConversation(
        agent=None,
        workspace=str(tmp_path / "ws"),
        conversation_id=cid,
        file_store=store,
        visualizer=None,
    )
    events = list(reopened.state.events)
    assert summary(events)[: len(written[cid])] == written[cid]
    assert len(events) == len(written[cid]) + 2
    assert "Resumed from the database." in str(events[-1])
    reopened.close()


def test_import_one_tree(engine: sa.Engine, migrated_url: URL, run: CLI, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    rng = random.Random(7)
    content = {
        "a/b.bin": bytes(rng.getrandbits(8) for _ in range(4096)) + b"\x00",
        "uni/é ü.json": '{"text": "ü"}'.encode(),
        "empty": b"",
        "big/blob": rng.randbytes(3 * 1024 * 1024 + 17),  # chunked on MySQL
    }
    for rel, data in content.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
    (tree / "events").mkdir()
    (tree / "events" / ".eventlog.lock").write_bytes(b"")
    (tree / "events" / ".base_state.json.k2j3h4.tmp").write_bytes(b"half")
    (tree / "link").symlink_to(tree / "a" / "b.bin")

    url, ns = _url(migrated_url), _unique()
    first = run("--url", url, "import", str(tree), "--namespace", ns, "-v")
    assert first.code == 0, first.err
    lines = first.out.splitlines()
    assert lines[0] == (
        f"imported 1 namespace from {tree}: 4 files written "
        f"({sum(len(d) for d in content.values())} bytes), 0 unchanged, 3 skipped"
    )
    assert sorted(lines[1:]) == [
        "skipped events/.base_state.json.k2j3h4.tmp (temporary file)",
        "skipped events/.eventlog.lock (lock file)",
        "skipped link (symlink)",
    ]
    assert _snapshot(engine, [ns]) == {(ns, rel): data for rel, data in content.items()}
    assert _updated(engine, ns) > datetime.now(UTC) - timedelta(hours=1)

    # Imported files keep their time on disk, so purge judges them by their real age.
    old_ns = _unique("old")
    month_ago = (datetime.now(UTC) - timedelta(days=40)).timestamp()
    os.utime(tree / "a" / "b.bin", (month_ago, month_ago))
    assert run("--url", url, "import", str(tree / "a"), "--namespace", old_ns).code == 0
    assert _updated(engine, old_ns) < datetime.now(UTC) - timedelta(days=39)
    removed = admin.purge(engine, timedelta(days=30), prefix=old_ns).removed
    assert [n.namespace for n in removed] == [old_ns]
    os.utime(tree / "a" / "b.bin")

    again = run("--url", url, "import", str(tree), "--namespace", ns)
    assert "0 files written (0 bytes), 4 unchanged, 3 skipped" in again.out
    (tree / "empty").write_bytes(b"now something")
    changed = run("--url", url, "import", str(tree), "--namespace", ns)
    assert "1 file written (13 bytes), 3 unchanged, 3 skipped" in changed.out
    assert SQLFileStore(engine, ns).read_bytes("empty") == b"now something"

    _one_error_line(run("--url", url, "import", str(tmp_path / "nope")), "not a directory")
    _one_error_line(run("--url", url, "import", str(tree / "uni")), "no conversation directories")


def _updated(engine: sa.Engine, namespace: str) -> datetime:
    """The newest write of ``namespace``, as the CLI reports it (UTC)."""
    (info,) = admin.namespaces(engine, prefix=namespace)
    return info.updated_at


def test_export_then_resume_with_local_file_store(
    engine: sa.Engine, migrated_url: URL, run: CLI, tmp_path: Path
) -> None:
    cid = uuid.uuid4()
    store = SQLFileStore(engine, cid.hex)
    written = _sdk_conversation(tmp_path / "ws", cid, "Hello from the database.", file_store=store)
    rows = file_rows(engine, cid.hex)

    url, out = _url(migrated_url), tmp_path / "export"
    first = run("--url", url, "export", cid.hex, str(out))
    assert first.code == 0, first.err
    assert first.err == ""
    assert first.out == (
        f"exported {cid.hex} to {out}: {len(rows)} files written "
        f"({sum(r.size for r in rows)} bytes), 0 unchanged, 0 skipped\n"
    )
    for row in rows:
        assert (out / row.path).read_bytes() == store.read_bytes(row.path)
        assert abs((out / row.path).stat().st_mtime - row.updated_at.timestamp()) < 1
    assert "0 files written (0 bytes)" in run("--url", url, "export", cid.hex, str(out)).out

    resumed = LocalConversation(
        agent=agent("Resumed from disk."),
        workspace=str(tmp_path / "ws"),
        conversation_id=cid,
        file_store=LocalFileStore(str(out)),
        visualizer=None,
    )
    assert summary(resumed.state.events) == written
    resumed.send_message("still there?")
    resumed.run()
    events = list(resumed.state.events)
    resumed.close()
    assert len(events) == len(written) + 2
    assert "Resumed from disk." in str(events[-1])
    assert len(list((out / "events").glob("event-*.json"))) == len(written) + 2

    _one_error_line(
        run("--url", url, "export", _unique(), str(tmp_path / "x")), "no such namespace"
    )


# -- copy ------------------------------------------------------------------------------


class _Interrupt(Progress):
    """A progress report that interrupts the work after ``after`` batches."""

    def __init__(self, after: int) -> None:
        super().__init__(enabled=False)
        self.after = after

    def advance(self, count: int = 1) -> None:
        super().advance(count)
        self.after -= 1
        if self.after <= 0:
            raise KeyboardInterrupt


def _fill(engine: sa.Engine, prefix: str) -> list[str]:
    """Namespaces with many files, binary and large content, odd paths, an old one."""
    rng = random.Random(11)
    many, odd, old = prefix + "many", prefix + "odd-é", prefix + "old"
    store = SQLFileStore(engine, many)
    with store.lock("batch"):
        for i in range(450):  # more than two batches of 200
            store.write(f"events/event-{i:05d}.json", json.dumps({"i": i, "pad": "x" * i}))
    odd_store = SQLFileStore(engine, odd)
    odd_store.write("big.bin", rng.randbytes(2 * 1024 * 1024 + 3))  # chunked on MySQL
    odd_store.write("bytes", bytes(range(256)))
    odd_store.write("empty", b"")
    odd_store.write("dir with space/ü/ä.json", "{}")
    odd_store.write("CASE", "upper")
    odd_store.write("case", "lower")
    SQLFileStore(engine, old).write("base_state.json", "{}")
    _age(engine, old)
    return [many, odd, old]


@pytest.mark.postgresql
@pytest.mark.mysql
def test_copy_sqlite_postgresql_mariadb_byte_identical(
    fresh: Callable[[str], URL], run: CLI, tmp_path: Path
) -> None:
    urls = {name: fresh(name) for name in ("sqlite", "postgresql", "mysql")}
    back = fresh("sqlite")
    engines = {name: sqlstore.create_engine(url) for name, url in urls.items()}
    engines["back"] = sqlstore.create_engine(back)
    try:
        names = _fill(engines["sqlite"], "c-")
        source = _snapshot(engines["sqlite"])
        total = len(source)

        # A destination without the schema: one line telling what to run.
        bare = _sqlite_file(tmp_path / "bare.db")
        _one_error_line(
            run("copy", "--from", _url(urls["sqlite"]), "--to", _url(bare)),
            f"{bare} has no sqlstore schema",
            f"run `sqlstore --url {bare} db upgrade`",
        )

        # Interrupted after the first batch, then resumed by running the command again.
        with pytest.raises(KeyboardInterrupt):
            admin.copy(engines["sqlite"], engines["postgresql"], progress=_Interrupt(1))
        partial = len(_snapshot(engines["postgresql"]))
        assert 0 < partial < total
        resumed = run("copy", "--from", _url(urls["sqlite"]), "--to", _url(urls["postgresql"]))
        assert resumed.code == 0, resumed.err
        assert resumed.err == ""
        assert (
            f"copied 3 namespaces from {urls['sqlite']} to {urls['postgresql']}: "
            f"{total - partial} files written"
        ) in resumed.out
        assert f"{partial} unchanged, 0 skipped" in resumed.out

        # Selected namespaces first, then the rest (what is there already is skipped).
        pg_to_my = ("copy", "--from", _url(urls["postgresql"]), "--to", _url(urls["mysql"]))
        some = run(*pg_to_my, "--namespace", names[1], "--namespace", names[2])
        assert some.out.startswith("copied 2 namespaces"), some.err
        rest = run(*pg_to_my)
        assert "450 files written" in rest.out and f"{total - 450} unchanged" in rest.out
        assert run("copy", "--from", _url(urls["mysql"]), "--to", _url(back)).code == 0

        for name in ("postgresql", "mysql", "back"):
            assert _snapshot(engines[name]) == source, name
        # Timestamps travel too: the old namespace is old everywhere.
        stamps = {
            name: [
                (s.namespace, s.files, s.size, s.updated_at.replace(microsecond=0))
                for s in namespace_stats(engine)
            ]
            for name, engine in engines.items()
        }
        assert stamps["postgresql"] == stamps["sqlite"] == stamps["mysql"] == stamps["back"]
        assert stamps["sqlite"][2][3] == OLD.replace(tzinfo=UTC)

        # Nothing left to do.
        again = run("copy", "--from", _url(urls["sqlite"]), "--to", _url(urls["postgresql"]))
        assert f"0 files written (0 bytes), {total} unchanged" in again.out
        _one_error_line(
            run(*pg_to_my, "--namespace", "no-such-namespace"),
            "not in the source database: no-such-namespace",
        )
    finally:
        for engine in engines.values():
            engine.dispose()


def test_copy_within_a_backend(
    engine: sa.Engine, migrated_url: URL, backend: str, fresh: Callable[[str], URL], run: CLI
) -> None:
    ns = _unique()
    SQLFileStore(engine, ns).write("events/a.json", b"\x00\x01")
    SQLFileStore(engine, ns).write("base_state.json", "{}")
    target = fresh(backend)
    copied = run("copy", "--from", _url(migrated_url), "--to", _url(target), "--namespace", ns)
    assert copied.code == 0, copied.err
    assert "2 files written (4 bytes), 0 unchanged" in copied.out
    other = sqlstore.create_engine(target)
    try:
        assert _snapshot(other) == _snapshot(engine, [ns])
    finally:
        other.dispose()


# -- purge -----------------------------------------------------------------------------


def test_purge(engine: sa.Engine, migrated_url: URL, run: CLI) -> None:
    prefix = _unique("purge") + "-"
    names = {key: prefix + key for key in ("old1", "old2", "mixed", "fresh")}
    for key, ns in names.items():
        store = SQLFileStore(engine, ns)
        store.write("base_state.json", "{}")
        store.write("events/event-00000-a.json", key)
    _age(engine, names["old1"])
    _age(engine, names["old2"])
    _age(engine, names["mixed"], "base_state.json")  # one recent write keeps it
    outsider = _unique("keep")  # old, but outside the prefix
    SQLFileStore(engine, outsider).write("f", "x")
    _age(engine, outsider)
    url = _url(migrated_url)
    purge = ("--url", url, "purge", "--older-than", "30d", "--namespace-prefix", prefix)

    dry = run(*purge, "--dry-run")
    assert dry.code == 0, dry.err
    lines = dry.out.splitlines()
    assert re.fullmatch(
        r"would remove 2 namespaces \(4 files, 12 bytes\) last written before "
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC",
        lines[0],
    ), lines[0]
    assert [line.split()[:3] for line in lines[2:]] == [
        [names["old1"], "2", "6"],
        [names["old2"], "2", "6"],
    ]
    assert lines[2].split()[3] == "2020-01-01"
    assert len(namespace_stats(engine, prefix=prefix)) == 4  # nothing deleted
    as_json = json.loads(run(*purge, "--dry-run", "--json").out)
    assert as_json["dry_run"] is True
    assert [n["namespace"] for n in as_json["removed"]] == [names["old1"], names["old2"]]
    # The cutoff is the database's clock minus 30 days, in UTC.
    cutoff = datetime.fromisoformat(as_json["cutoff"])
    assert abs(cutoff - (datetime.now(UTC) - timedelta(days=30))) < timedelta(minutes=5)
    small = admin.purge(engine, timedelta(days=30), prefix=prefix, dry_run=True, batch=1)
    assert [n.namespace for n in small.removed] == [names["old1"], names["old2"]]

    done = run(*purge)
    assert done.code == 0, done.err
    assert done.err == ""
    assert done.out.startswith("removed 2 namespaces (4 files, 12 bytes) last written before ")
    assert [s.namespace for s in namespace_stats(engine, prefix=prefix)] == [
        names["fresh"],
        names["mixed"],
    ]
    assert SQLFileStore(engine, names["old1"]).list("") == []
    assert namespace_stats(engine, namespaces=[outsider])  # outside the prefix: kept
    assert run(*purge).out.startswith("removed 0 namespaces (0 files, 0 bytes)")
    assert json.loads(run(*purge, "--json").out)["removed"] == []

    usage = run("--url", url, "purge", "--older-than", "soon")
    assert usage.code == 2 and "invalid age 'soon'" in usage.err
    SQLFileStore(engine, outsider).delete("")


@pytest.mark.parametrize("backend", ["mysql"], indirect=True)
def test_mysql_session_time_zone(migrated_url: URL) -> None:
    """Timestamps are UTC whatever the writer's session time zone; so are reports."""
    shifted = sqlstore.create_engine(
        migrated_url, connect_args={"init_command": "SET time_zone = '+05:00'"}
    )
    try:
        ns = _unique("tz")
        SQLFileStore(shifted, ns).write("f", "x")
        with sa.create_engine(migrated_url).connect() as conn:
            stored = conn.execute(
                sa.text("SELECT updated_at FROM sqlstore_files WHERE namespace = :ns"),
                {"ns": ns.encode()},
            ).scalar_one()
        assert abs(stored - datetime.now(UTC).replace(tzinfo=None)) < timedelta(minutes=2)
        (info,) = admin.namespaces(shifted, prefix=ns)
        assert abs(info.updated_at - datetime.now(UTC)) < timedelta(minutes=2)
        assert admin.purge(shifted, timedelta(hours=1), prefix=ns, dry_run=True).removed == []
        assert admin.purge(shifted, timedelta(hours=1), prefix=ns).removed == []
        SQLFileStore(shifted, ns).delete("")
    finally:
        shifted.dispose()


# -- the command line as a whole -------------------------------------------------------


def _commands(
    parser: argparse.ArgumentParser, prefix: str = ""
) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """(``"db upgrade"``, help, parser) for every leaf command, walking the subparsers."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                full = f"{prefix}{name}"
                nested = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
                if nested:
                    assert helps[name].strip(), f"`sqlstore {full}` has no help text"
                    yield from _commands(sub, full + " ")
                else:
                    yield full, helps[name], sub


def test_every_command_has_help_and_is_in_the_cli_guide(run: CLI) -> None:
    commands = list(_commands(cli.build_parser()))
    names = [name for name, _, _ in commands]
    assert {
        "db upgrade",
        "db downgrade",
        "db current",
        "db check",
        "db stamp",
        "namespaces",
        "ls",
        "cat",
        "put",
        "rm",
        "du",
        "import",
        "export",
        "copy",
        "purge",
    } == set(names)
    guide = CLI_GUIDE.read_text()
    for name, summary_text, parser in commands:
        assert summary_text.strip(), f"`sqlstore {name}` has no help text"
        assert (parser.description or "").strip(), f"`sqlstore {name}` has no description"
        for action in parser._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"`sqlstore {name}` {action.dest}: no help text"
        assert f"sqlstore {name}" in guide, f"`sqlstore {name}` is missing from {CLI_GUIDE.name}"
        shown = run(*name.split(), "--help")
        assert shown.code == 0
        assert shown.out.startswith(f"usage: sqlstore {name}")
    top = run("--help")
    assert top.code == 0 and "SQLSTORE_URL" in top.out


def test_usage_errors_and_secrets(
    run: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SQLSTORE_URL", raising=False)
    missing = run("namespaces")
    assert missing.code == 2
    assert (
        missing.err.splitlines()[-1]
        == "sqlstore: error: no database URL: pass --url or set SQLSTORE_URL"
    )
    assert run("frobnicate").code == 2
    assert run("ls").code == 2  # NAMESPACE is required
    assert run().code == 2

    for url in (
        "postgresql+psycopg://postgres:Sup3rSecretPw@127.0.0.1:1/db",
        "mysql+pymysql://root:Sup3rSecretPw@127.0.0.1:1/db",
    ):
        failed = run("--url", url, "namespaces")
        _one_error_line(failed, "error on", ":***@127.0.0.1:1/db")
        assert "Sup3rSecretPw" not in failed.err + failed.out
    failed = run(
        "copy", "--from", "postgresql+psycopg://u:Sup3rSecretPw@127.0.0.1:1/a", "--to", "sqlite://"
    )
    assert "Sup3rSecretPw" not in failed.err and failed.code == 1

    _one_error_line(run("--url", "oracle://u@h/db", "namespaces"), "does not support")
    _one_error_line(
        run("--url", f"sqlite:///{tmp_path / 'none.db'}", "ls", "x"), "no such SQLite database"
    )
    assert not (tmp_path / "none.db").exists()
    bare = _sqlite_file(tmp_path / "bare.db")
    _one_error_line(
        run("--url", _url(bare), "ls", "x"),
        "no sqlstore schema",
        f"run `sqlstore --url {bare} db upgrade`",
    )


def _hinted(result: Run) -> list[str]:
    """The command a one-line error hints at (in backquotes), as arguments after ``sqlstore``."""
    (line,) = result.err.splitlines()
    command = re.findall(r"`(sqlstore [^`]*)`", line)
    assert len(command) == 1, line
    return shlex.split(command[0])[1:]


def test_hints_name_the_command_that_fixes_it(
    run: CLI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SQLSTORE_URL", raising=False)

    # db upgrade in a directory that does not exist: said plainly, nothing created.
    deep = tmp_path / "no" / "such" / "store.db"
    _one_error_line(
        run("--url", f"sqlite:///{deep}", "db", "upgrade"),
        f"no such directory: {deep.parent} (for the SQLite database {deep})",
        f"mkdir -p {deep.parent}",
    )
    assert not (tmp_path / "no").exists()

    # A missing SQLite file: the hint names --url when the URL came from --url...
    missing = tmp_path / "missing.db"
    failed = run("--url", f"sqlite:///{missing}", "ls", "x")
    _one_error_line(failed, f"no such SQLite database: {missing}")
    assert _hinted(failed) == ["--url", f"sqlite:///{missing}", "db", "upgrade"]
    assert run(*_hinted(failed)).code == 0  # and the hinted command works as written
    assert run("--url", f"sqlite:///{missing}", "namespaces").out == "no namespaces\n"
    # ...and not when it came from $SQLSTORE_URL.
    other = tmp_path / "other.db"
    monkeypatch.setenv("SQLSTORE_URL", f"sqlite:///{other}")
    failed = run("ls", "x")
    _one_error_line(failed, f"no such SQLite database: {other}")
    assert _hinted(failed) == ["db", "upgrade"]
    bare = _sqlite_file(tmp_path / "bare.db")
    monkeypatch.setenv("SQLSTORE_URL", _url(bare))
    failed = run("du", "x")
    _one_error_line(failed, "no sqlstore schema")
    assert _hinted(failed) == ["db", "upgrade"]
    monkeypatch.delenv("SQLSTORE_URL")

    # copy to an unmigrated destination: the exact command for the destination.
    source = make_url(f"sqlite:///{missing}")
    SQLFileStore.from_url(source, "ns").write("f", "1")
    destination = _sqlite_file(tmp_path / "destination.db")
    failed = run("copy", "--from", _url(source), "--to", _url(destination))
    _one_error_line(failed, f"{destination} has no sqlstore schema")
    assert _hinted(failed) == ["--url", _url(destination), "db", "upgrade"]
    assert run(*_hinted(failed)).code == 0
    assert run("copy", "--from", _url(source), "--to", _url(destination)).code == 0

    # Wrong drivers and misspelt databases: one line naming the URL to write.
    _one_error_line(
        run("--url", "mysql://root@127.0.0.1/test", "namespaces"),
        "write mysql+pymysql://root@127.0.0.1/test",
        "its 'mysql' extra",
    )
    _one_error_line(
        run("--url", "postgresql+psycopg2://app@127.0.0.1/test", "db", "upgrade"),
        "write postgresql+psycopg://app@127.0.0.1/test",
        "its 'postgresql' extra",
    )
    failed = run("--url", "postgres://app:Sup3rSecretPw@127.0.0.1/test", "db", "current")
    _one_error_line(failed, "did you mean postgresql+psycopg://app:***@127.0.0.1/test?")
    assert "Sup3rSecretPw" not in failed.err


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_a_hint_never_shows_the_password(empty_url: URL, run: CLI) -> None:
    # The local server trusts every connection, so the password is accepted and unused.
    url = empty_url.set(password="Sup3rSecretPw")
    failed = run("--url", _url(url), "namespaces")
    assert "Sup3rSecretPw" not in failed.err
    assert _hinted(failed) == ["--url", url.render_as_string(hide_password=True), "db", "upgrade"]
    assert ":***@" in failed.err


def test_progress_bar_only_on_a_terminal() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal, pipe = Terminal(), io.StringIO()
    for stream in (terminal, pipe):
        bar = Progress(stream)
        bar.start(4, "copy")
        bar.advance(2)
        bar.advance(2)
        bar.finish()
    assert pipe.getvalue() == ""
    assert terminal.getvalue().endswith("\rcopy [" + "#" * 30 + "] 4/4\n")
    assert "copy [" + "." * 30 + "] 0/4" in terminal.getvalue()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_entry_points(migrated_url: URL, tmp_path: Path) -> None:
    """``python -m sqlstore`` and the ``sqlstore`` console script run as programs."""
    url = _url(migrated_url)
    env = {**os.environ, "SQLSTORE_URL": url}
    module = subprocess.run(
        [sys.executable, "-m", "sqlstore", "namespaces", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert module.returncode == 0, module.stderr
    assert isinstance(json.loads(module.stdout), list)

    script = Path(sys.executable).parent / "sqlstore"
    assert script.exists(), "the console script is not installed (uv sync)"
    check = subprocess.run(
        [str(script), "db", "check"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    bare = _sqlite_file(tmp_path / "bare.db")
    behind = subprocess.run(
        [str(script), "--url", _url(bare), "db", "check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert behind.returncode == 1
    assert behind.stdout == ""
    assert behind.stderr.startswith("sqlstore: error: ") and behind.stderr.count("\n") == 1

    tree = tmp_path / "conversations" / uuid.uuid4().hex / "events"
    tree.mkdir(parents=True)
    (tree / "event-00000-a.json").write_text("{}")
    imported = subprocess.run(
        [str(script), "import", str(tmp_path / "conversations")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert imported.returncode == 0, imported.stderr
    assert imported.stderr == ""  # not a terminal: no progress bar


@pytest.mark.slow
def test_cli_from_an_installed_wheel(tmp_path: Path) -> None:
    """`sqlstore db upgrade` works from a wheel installed elsewhere, with no checkout."""
    uv = shutil.which("uv")
    assert uv is not None, "uv is not on PATH"
    dist, venv = tmp_path / "dist", tmp_path / "venv"

    def ok(*cmd: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            list(cmd), capture_output=True, text=True, timeout=300, check=False, **kwargs
        )  # type: ignore[call-overload]
        assert done.returncode == 0, f"{cmd}:\n{done.stdout}\n{done.stderr}"
        return done

    ok(uv, "build", "--wheel", "--out-dir", str(dist), cwd=ROOT)
    (wheel,) = dist.glob("sqlstore-*.whl")
    ok(uv, "venv", str(venv), "--python", "3.12")
    ok(uv, "pip", "install", "--python", str(venv / "bin" / "python"), str(wheel))
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "SQLSTORE_URL", "VIRTUAL_ENV"}
    }
    work = tmp_path / "elsewhere"
    work.mkdir()
    url = f"sqlite:///{tmp_path / 'wheel.db'}"
    script = str(venv / "bin" / "sqlstore")
    upgraded = ok(script, "--url", url, "db", "upgrade", cwd=work, env=env)
    assert upgraded.stdout.startswith("upgraded sqlite:///")
    ok(script, "--url", url, "db", "check", cwd=work, env=env)
    ok(
        str(venv / "bin" / "python"),
        "-I",
        "-m",
        "sqlstore",
        "--url",
        url,
        "db",
        "current",
        cwd=work,
        env=env,
    )
