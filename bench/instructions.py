"""Client instructions per call, counted with callgrind: sqlstore against the raw drivers.

``uv run python -m bench --instructions`` (see ``bench/README.md``). A timed ratio moves
with the machine's load and the speed of its round trips; the number of instructions the
client process executes for a call does not. Each subject (a raw driver, a sqlstore)
runs in a child process under ``valgrind --tool=callgrind`` with ``PYTHONHASHSEED=0``:
the child loads its files, then, per call, runs a warm-up, 100 calls and 600 calls, and
the figure is ``(count of the 600 - count of the 100) / 500``, so whatever a segment
costs once (marking it, a first-time cache fill) cancels out.

Segments are marked by calling ``os.getsid``, which nothing else here calls:
callgrind dumps its counters on entering CPython's ``os_getsid`` (``--dump-before``),
so each segment's count is in a file of its own. Instrumentation is switched on
(``callgrind_control -i on``) only after the imports, which would otherwise take
minutes under callgrind. Only the client's instructions are counted: PostgreSQL and
MariaDB run in their own processes; SQLite runs in the client, alike for both subjects.

The raw drivers run the same statements as the timed floors (:mod:`bench.subjects`);
the SDK append runs the SDK's ``EventLog.append`` on each (on a raw driver through a
thin adapter), so the SDK's own Python is in both counts and cancels in the difference.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.harness import REPO, log

#: The calls counted, in report order: (key, title).
CALLS = (
    ("read", "read 1 KiB"),
    ("exists", "exists"),
    ("write", "write a new 1 KiB file"),
    ("overwrite", "overwrite 1 KiB"),
    ("delete", "delete 1 KiB"),
    ("list", "list 100 children"),
    ("lock", "lock and unlock"),
    ("append", "SDK append (EventLog.append)"),
)
SMALL, LARGE, WARMUP = 100, 600, 30
#: The sqlstore subject and its raw floor on each database, as in the timed run.
PAIRS = {
    "sqlite": ("sqlite-raw", "sqlite"),
    "postgresql": ("pg-raw", "pg"),
    "mysql": ("mysql-raw", "mysql"),
}
#: CPython's C function behind ``os.getsid``: entering it dumps callgrind's counters.
MARK_SYMBOL = "os_getsid"
CONTENT = ("sqlstore counts the instructions of each call " * 24)[:1024]


def available() -> str | None:
    """Why instructions cannot be counted here, or ``None`` if they can."""
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian: apt-get install valgrind)"
    return None


# -- the parent: run the children, read their counts -----------------------------------


def measure(
    backends: list[str], urls: dict[str, str], calls: list[str], env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Count every call on every backend for sqlstore and its raw floor.

    Returns:
        ``{"backends": {backend: {call: {"raw": n, "sqlstore": n}}}, "skipped": {...}}``,
        instructions per call.
    """
    from bench.subjects import prepare

    why = available()
    if why is not None:
        raise RuntimeError(f"cannot count instructions: {why}")
    tmp = Path(tempfile.mkdtemp(prefix="sqlstore-instr-"))
    counts: dict[str, dict[str, dict[str, float]]] = {}
    try:
        subjects, versions = prepare(backends, urls, tmp)
        for backend in backends:
            raw_key, store_key = PAIRS[backend]
            if raw_key not in subjects or store_key not in subjects:
                continue
            per_call: dict[str, dict[str, float]] = {c: {} for c in calls}
            for role, key in (("raw", raw_key), ("sqlstore", store_key)):
                # The raw driver works on the sqlstore subject's database: its tables.
                subject = dataclasses.replace(subjects[key], url=subjects[store_key].url)
                log(f"callgrind: {subject.title} ...")
                found = _run_child(dataclasses.asdict(subject), calls, tmp, env or {})
                for call, count in found.items():
                    per_call[call][role] = count
            counts[backend] = per_call
    finally:
        _drop_raw_tables(subjects if "subjects" in locals() else {})
        shutil.rmtree(tmp, ignore_errors=True)
    skipped = {k: v for k, v in versions.items() if v.startswith("skipped")}
    return {"backends": counts, "versions": versions, "skipped": skipped}


def _drop_raw_tables(subjects: dict[str, Any]) -> None:
    from bench.subjects import RAW, RAW_TABLE

    for subject in subjects.values():
        if subject.kind == "raw" and subject.backend != "sqlite":
            raw = RAW[subject.backend](subject, "")
            raw._run(f"DROP TABLE IF EXISTS {RAW_TABLE}")
            raw.close()


def _run_child(
    subject: dict[str, Any], calls: list[str], tmp: Path, env: dict[str, str]
) -> dict[str, float]:
    """Run one subject's calls under callgrind; instructions per call by call."""
    work = Path(tempfile.mkdtemp(prefix="cg-", dir=tmp))
    spec = work / "spec.json"
    subject = {k: v for k, v in subject.items() if k != "setup"}
    namespace = f"instr-{os.getpid()}-{subject['key']}"
    spec.write_text(json.dumps({"subject": subject, "calls": calls, "namespace": namespace}))
    command = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--dump-before={MARK_SYMBOL}",
        "--dump-instr=no",
        f"--callgrind-out-file={work}/cg.out",
        sys.executable,
        "-m",
        "bench.instructions",
        str(spec),
    ]
    child_env = {**os.environ, **env, "PYTHONHASHSEED": "0"}
    done = subprocess.run(command, cwd=REPO, env=child_env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).splitlines()[-15:])
        raise RuntimeError(f"the callgrind child of {subject['key']} failed:\n{tail}")
    labels: list[str] = json.loads((work / "labels.json").read_text())
    parts = {label: _summary(work / f"cg.out.{i}") for i, label in enumerate(labels, start=1)}
    return {
        call: (parts[f"{call} {LARGE}"] - parts[f"{call} {SMALL}"]) / (LARGE - SMALL)
        for call in calls
    }


def _summary(path: Path) -> int:
    if not path.exists():
        raise RuntimeError(
            f"callgrind wrote no {path.name}: this Python's {MARK_SYMBOL} is not visible to "
            "callgrind (a CPython without symbols?)"
        )
    for line in path.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split(":", 1)[1].split()[0])
    raise RuntimeError(f"no summary line in {path}")


# -- the child: one subject's calls, segment by segment ------------------------------


class RawSame:
    """The raw driver running sqlstore's own statements on sqlstore's tables.

    The SQL is sqlstore's, compiled once at start; everything per call is what a
    hand-written client would do: hash the key (BLAKE2b as sqlstore's ``file_id``), build
    the parameters, run the statement on a cursor, take the rows. A lock is the
    dialect's statements for a lock block, written out.
    """

    def __init__(self, subject: Any, namespace: str) -> None:
        import hashlib
        from operator import itemgetter

        import sqlalchemy

        from sqlstore.dialects import strategy_for
        from sqlstore.statements import Statements

        self.backend = subject.backend
        self.namespace = namespace
        dialect = sqlalchemy.create_engine(subject.url).dialect
        sql = Statements(dialect, strategy_for(dialect.name))
        self.sql: dict[str, tuple[str, Any, dict[str, Any]]] = {}
        for name, statement in (
            ("read", sql.read),
            ("exists", sql.exists),
            ("write", sql.write(1)),
            ("delete", sql.delete_path),
            ("list", sql.list_dir),
        ):
            order = statement._order
            getter = None if order is None else itemgetter(*order)
            self.sql[name] = (statement.sql, getter, statement._defaults)  # LIMIT 1
        prefix = hashlib.blake2b(digest_size=16, person=b"sqlstore-file")
        prefix.update(namespace.encode() + b"\x00")
        self._prefix = prefix
        self.conn = self._connect(subject)
        self.cur = self.conn.cursor()

    def _connect(self, subject: Any) -> Any:
        from sqlalchemy.engine import make_url

        url = make_url(subject.url)
        if self.backend == "sqlite":
            import sqlite3

            conn = sqlite3.connect(url.database, isolation_level=None, check_same_thread=False)
            for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=30000"):
                conn.execute(f"PRAGMA {pragma}")
            return conn
        if self.backend == "postgresql":
            import psycopg

            conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
            return psycopg.connect(conninfo, autocommit=True)
        import pymysql

        return pymysql.connect(
            host=url.host or "127.0.0.1",
            port=url.port or 3306,
            user=url.username or "root",
            password=url.password or "",
            database=url.database,
            autocommit=True,
            client_flag=1 << 16,  # multi-statements, as sqlstore's connections have
        )

    def _key(self, path: str) -> bytes:
        digest = self._prefix.copy()
        digest.update(path.encode())
        return digest.digest()

    def _run(self, name: str, params: dict[str, Any]) -> Any:
        sql, order, fixed = self.sql[name]
        if fixed:
            params.update(fixed)
        args = params if order is None else order(params)
        if self.backend == "postgresql":
            return self.cur.execute(sql, args, prepare=True)
        self.cur.execute(sql, args)
        return self.cur

    def read(self, path: str) -> str:
        """Sqlstore's read statement."""
        row = self._run("read", {"ns": self.namespace, "fid": self._key(path)}).fetchone()
        if row is None:
            raise FileNotFoundError(path)
        return bytes(row[0]).decode()

    def exists(self, path: str) -> bool:
        """Sqlstore's exists statement."""
        low = path.encode().replace(b"/", b"\x00")
        params = {"ns": self.namespace, "fid": self._key(path), "low": low, "high": low + b"\x01"}
        return bool(self._run("exists", params).fetchone()[0])

    def write(self, path: str, contents: str) -> None:
        """Sqlstore's write statement (a file one directory deep)."""
        data = contents.encode()
        parent, _, name = path.rpartition("/")
        low = path.encode().replace(b"/", b"\x00")
        params = {
            "fid": self._key(path),
            "ns": self.namespace,
            "key": parent.encode(),
            "name": name,
            "content": data,
            "size": len(data),
            "chunk_count": 0,
            "low": low,
            "high": low + b"\x01",
            "a0": self._key(parent),
        }
        self._run("write", params)

    write_new = write

    def delete(self, path: str) -> None:
        """Sqlstore's delete statement."""
        low = path.encode().replace(b"/", b"\x00")
        params = {"ns": self.namespace, "fid": self._key(path), "low": low, "high": low + b"\x01"}
        self._run("delete", params)

    def list(self, path: str) -> list[str]:
        """Sqlstore's listing statement (a directory of files)."""
        key = path.encode().replace(b"/", b"\x00")
        params = {
            "ns": self.namespace,
            "key": key,
            "low": key + b"\x00",
            "high": key + b"\x01",
            "fid": self._key(path),
        }
        rows = self._run("list", params).fetchall()
        return [f"{path}/{name}" for kind, name, _ in rows if kind == 1]

    @contextmanager
    def lock(self, path: str, timeout: float = 30.0) -> Iterator[None]:
        """A lock block's statements, as sqlstore's dialect sends them."""
        cur = self.cur
        if self.backend == "sqlite":
            cur.execute("BEGIN IMMEDIATE")  # sqlstore sets busy_timeout only if it differs
            yield
            cur.execute("COMMIT")
        elif self.backend == "postgresql":
            key = int.from_bytes(self._key(path)[:8], "big", signed=True)
            cur.execute(
                "BEGIN; SELECT set_config('lock_timeout', '30000ms', true),"
                f" pg_advisory_xact_lock({key}), pg_current_xact_id()::text"
            )
            yield
            cur.execute("COMMIT")
        else:
            name = "CONCAT('sqlstore/', LEFT(SHA2(CONCAT(DATABASE(), '/', %(key)s), 256), 40))"
            cur.execute(
                f"SELECT GET_LOCK({name}, %(timeout)s); START TRANSACTION",
                {"key": self._key(path).hex(), "timeout": 30.0},
            )
            cur.fetchone()
            while cur.nextset():
                pass
            yield
            cur.execute("COMMIT; SELECT RELEASE_ALL_LOCKS()")
            while cur.nextset():
                pass

    def load(self, items: list[tuple[str, str]]) -> None:
        """Untimed set-up: write the files."""
        for path, contents in items:
            self.write(path, contents)

    def close(self) -> None:
        """Delete what this run wrote, close the connection."""
        self.cur.execute(
            "DELETE FROM sqlstore_files WHERE namespace = "
            + ("?" if self.backend == "sqlite" else "%s"),
            (self.namespace,),
        )
        self.conn.close()


def _handle(subject: Any, namespace: str) -> Any:
    from bench.subjects import Files

    if subject.kind == "raw":
        return RawSame(subject, namespace)
    import sqlstore

    engine = sqlstore.create_engine(subject.url, **subject.options)
    return Files(sqlstore.SQLFileStore(engine, namespace))


def _variants(files: Any, calls: list[str]) -> dict[str, tuple[Callable[[int], object], Any]]:
    """Per call: the call of id ``i``, and the set-up of a segment's ids (or ``None``)."""
    hot = lambda d: lambda i: f"{d}/f{i % 100:08d}"  # noqa: E731

    def lock(_i: int) -> None:
        with files.lock("lock"):
            pass

    def delete_prepare(ids: range) -> None:
        files.load([(f"del/f{i:08d}", CONTENT) for i in ids])

    read, over = hot("read"), hot("hot")
    found: dict[str, tuple[Callable[[int], object], Any]] = {
        "read": (lambda i: files.read(read(i)), None),
        "exists": (lambda i: files.exists(read(i)), None),
        "write": (lambda i: files.write_new(f"new/f{i:08d}", CONTENT), None),
        "overwrite": (lambda i: files.write(over(i), CONTENT), None),
        "delete": (lambda i: files.delete(f"del/f{i:08d}"), delete_prepare),
        "list": (lambda _i: files.list("list100"), None),
        "lock": (lock, None),
    }
    if "append" in calls:
        found["append"] = _append(files)
    return {c: found[c] for c in calls}


def _append(files: Any) -> tuple[Callable[[int], object], Any]:
    from openhands.sdk.conversation.event_store import EventLog

    from bench.workloads import new_events

    store = files.store if hasattr(files, "store") else files
    event_log = EventLog(store, dir_path="events")
    pending: dict[int, Any] = {}

    def prepare(ids: range) -> None:
        pending.clear()
        pending.update(zip(ids, new_events(len(ids)), strict=True))

    return (lambda i: event_log.append(pending[i])), prepare


@contextmanager
def _instrumented() -> Iterator[Callable[[str], None]]:
    """Switch callgrind's instrumentation on; yield ``mark(label)``, which ends a segment."""
    control = ["callgrind_control", "-i", "on", str(os.getpid())]
    subprocess.run(control, check=True, capture_output=True)
    labels: list[str] = []

    def mark(label: str) -> None:
        labels.append(label)
        os.getsid(0)  # callgrind dumps the segment's count here (--dump-before)

    yield mark
    mark("end")
    _out = Path(os.environ["SQLSTORE_INSTR_LABELS"])
    _out.write_text(json.dumps(labels))


def child(spec_path: Path) -> None:
    """Run one subject's calls, each in a warm-up, a 100-call and a 600-call segment."""
    from bench.subjects import Subject

    spec = json.loads(spec_path.read_text())
    subject = Subject(**spec["subject"])
    calls: list[str] = spec["calls"]
    files = _handle(subject, spec["namespace"])
    items = [(f"{d}/f{i:08d}", CONTENT) for d in ("read", "hot", "list100") for i in range(100)]
    files.load(items)
    variants = _variants(files, calls)
    os.environ["SQLSTORE_INSTR_LABELS"] = str(spec_path.parent / "labels.json")
    next_id = 0

    def ids(n: int) -> range:
        nonlocal next_id
        next_id += n
        return range(next_id - n, next_id)

    with _instrumented() as mark:
        mark("set-up")
        for call in calls:
            run, prepare = variants[call]
            for n in (WARMUP, SMALL, LARGE):
                segment = ids(n)
                if prepare is not None:
                    prepare(segment)
                gc.collect()
                mark(f"{call} before {n}")
                for i in segment:
                    run(i)
                mark(f"{call} {n}")
    if subject.kind == "raw":
        files.close()
    else:
        files.store.delete("")


# -- the report -----------------------------------------------------------------------


def document(counts: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """The result document: counts, ratios and differences per backend and call."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for backend, per_call in counts["backends"].items():
        rows[backend] = []
        for call, title in CALLS:
            pair = per_call.get(call)
            if not pair or "raw" not in pair or "sqlstore" not in pair:
                continue
            raw, store = pair["raw"], pair["sqlstore"]
            rows[backend].append(
                {
                    "call": call,
                    "title": title,
                    "raw": round(raw),
                    "sqlstore": round(store),
                    "ratio": round(store / raw, 3),
                    "difference": round(store - raw),
                }
            )
    unit = "client instructions per call"
    return {**meta, "unit": unit, "rows": rows, "versions": counts["versions"]}


def markdown(doc: dict[str, Any]) -> str:
    """The report as markdown: one table per database."""
    names = {"sqlite": "SQLite (FULL)", "postgresql": "PostgreSQL", "mysql": "MariaDB"}
    out = [
        f"# Client instructions per call ({doc['date']})",
        "",
        "Counted with callgrind: (600 calls - 100 calls) / 500, `PYTHONHASHSEED=0`. "
        "Raw: the driver doing the same statements (psycopg with prepared statements, "
        "`sqlite3`, PyMySQL); the SDK append runs `EventLog.append` on both.",
        "",
    ]
    if doc.get("label"):
        out[1:1] = ["", f"Label: {doc['label']}"]
    for backend, rows in doc["rows"].items():
        version = doc["versions"].get(backend, "")
        out += [f"## {names.get(backend, backend)} ({version})", ""]
        out += ["| call | raw | sqlstore | ratio | difference |", "|---|---:|---:|---:|---:|"]
        for r in rows:
            out.append(
                f"| {r['title']} | {r['raw'] / 1000:,.1f}k | {r['sqlstore'] / 1000:,.1f}k"
                f" | {r['ratio']:.2f}x | {r['difference'] / 1000:+,.1f}k |"
            )
        out.append("")
    if doc.get("skipped"):
        out += ["Skipped: " + "; ".join(f"{k}: {v}" for k, v in doc["skipped"].items()), ""]
    return "\n".join(out)


def main(args: Any) -> int:
    """``python -m bench --instructions``: count, print, write ``instructions.*`` files."""
    calls = [c for c, title in CALLS if args.only is None or args.only.search(title)]
    date = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    urls = {"postgresql": args.pg_url, "mysql": args.mysql_url, "sqlite": ""}
    counts = measure(args.backends, urls, calls)
    doc = document(counts, {"label": args.label, "date": date, "calls": calls})
    text = markdown(doc)
    print(text, end="")
    stem = "instructions" + ("-only" if args.only else "")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    (args.out / f"{stem}.md").write_text(text, encoding="utf-8")
    log(f"wrote {args.out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    child(Path(sys.argv[1]))
