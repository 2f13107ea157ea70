"""The ``sqlstore`` command: parse arguments, call :mod:`sqlstore.admin`, print.

Exit codes: 0 success; 1 an error (one line on stderr, ``sqlstore: error: ...``), or
``db check`` finding the database behind; 2 a usage error; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

from sqlalchemy import Engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError

from . import __version__, admin, paths
from .engine import create_engine, safe_url
from .errors import SchemaError, SQLStoreError
from .progress import Progress
from .schema import SCHEMA_REVISION

__all__ = ["build_parser", "main"]

PROG = "sqlstore"
URL_VARIABLE = "SQLSTORE_URL"

EPILOG = f"""\
The database URL comes from --url or ${URL_VARIABLE}, e.g.
  sqlite:///conversations.db
  postgresql+psycopg://user@host/db
  mysql+pymysql://user@host/db
Passwords are never printed. Exit codes: 0 success; 1 error, or `db check` finding
the schema behind; 2 usage error; 130 interrupted. Long-running commands (import,
export, copy, purge) draw a progress bar on stderr when it is a terminal.
"""


class UsageError(Exception):
    """A command line that cannot run as given (exit code 2)."""


class CheckFailed(Exception):
    """``db check``: the database is not at the head revision (exit code 1)."""


@dataclass
class Context:
    """What a command handler needs: its arguments, its engines, the output streams."""

    args: argparse.Namespace
    parser: argparse.ArgumentParser
    engines: list[Engine] = field(default_factory=list)
    urls: list[URL] = field(default_factory=list)
    #: The URL each engine was made from (``engine.url`` may lack sqlstore's parameters).
    url_of: dict[Engine, URL] = field(default_factory=dict)
    #: The URL that came from ``$SQLSTORE_URL``, if one did.
    env_url: URL | None = None

    def print(self, text: str = "") -> None:
        """Print a line on stdout."""
        print(text, file=sys.stdout)

    def url(self, value: str | None = None) -> URL:
        """The URL given (``--from``/``--to``), or ``--url``, or ``$SQLSTORE_URL``."""
        given = value or getattr(self.args, "url", None)
        text = given or os.environ.get(URL_VARIABLE)
        if not text:
            raise UsageError(f"no database URL: pass --url or set {URL_VARIABLE}")
        try:
            url = make_url(text)
        except SQLAlchemyError:
            raise UsageError("cannot parse the database URL") from None
        self.urls.append(url)
        if not given:
            self.env_url = url
        return url

    def command(self, url: URL, command: str) -> str:
        """The ``sqlstore`` command line that runs ``command`` on ``url``, for a hint.

        It names the URL with ``--url`` unless the URL came from ``$SQLSTORE_URL``
        (a password shows as ``***``).
        """
        if url is self.env_url:
            return f"{PROG} {command}"
        return f"{PROG} --url {shlex.quote(safe_url(url))} {command}"

    def engine(
        self, value: str | None = None, *, create: bool = False, schema: bool = False
    ) -> Engine:
        """An engine on :meth:`url`.

        Args:
            value: ``--from``/``--to``; default ``--url`` or ``$SQLSTORE_URL``.
            create: A SQLite file may be created (else it must exist).
            schema: The database must be migrated; the error names the command to run.
        """
        url = self.url(value)
        database = url.database or ""
        if (
            url.get_backend_name() == "sqlite"
            and database not in ("", ":memory:")
            and not database.startswith("file:")
        ):
            _check_sqlite_file(Path(database), create, self.command(url, "db upgrade"))
        engine = create_engine(url)
        self.engines.append(engine)
        self.url_of[engine] = url
        if schema:
            self.require_schema(engine)
        return engine

    def require_schema(self, engine: Engine) -> None:
        """Raise :class:`SchemaError` naming the exact command unless ``engine`` is at head."""
        found = admin.current_revision(engine)
        if found != SCHEMA_REVISION:
            url = self.url_of[engine]
            where = "no sqlstore schema" if found is None else f"schema revision {found}"
            raise SchemaError(
                f"{safe_url(url)} has {where}, this sqlstore needs {SCHEMA_REVISION}; "
                f"run `{self.command(url, 'db upgrade')}`"
            )

    def progress(self) -> Progress:
        """A progress bar on stderr, drawn only when stderr is a terminal."""
        return Progress(sys.stderr)

    def dispose(self) -> None:
        """Close every engine this command opened."""
        for engine in self.engines:
            engine.dispose()

    def mask(self, text: str) -> str:
        """``text`` with every password of the URLs in use replaced by ``***``."""
        for url in self.urls:
            if url.password:
                secret = str(url.password)
                for form in {secret, quote(secret, safe=""), quote_plus(secret)}:
                    if len(form) >= 3:
                        text = text.replace(form, "***")
        return text


def _check_sqlite_file(path: Path, create: bool, upgrade: str) -> None:
    """Refuse a SQLite path that cannot work, before SQLite says "unable to open"."""
    if not path.parent.is_dir():
        raise FileNotFoundError(
            f"no such directory: {path.parent} (for the SQLite database {path}); "
            f"create it first (mkdir -p {shlex.quote(str(path.parent))})"
        )
    if not create and not path.exists():
        raise FileNotFoundError(f"no such SQLite database: {path} (create it with `{upgrade}`)")


Handler = Callable[[Context], int]


# -- formatting ------------------------------------------------------------------------


def _time(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _table(ctx: Context, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print aligned columns; numbers align right, text left; the last column is free."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    right = [bool(rows) and isinstance(rows[0][i], int) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = []
        for i, value in enumerate(values):
            last = i == len(values) - 1
            if right[i]:
                parts.append(value.rjust(widths[i]))
            else:
                parts.append(value if last else value.ljust(widths[i]))
        return "  ".join(parts).rstrip()

    ctx.print(line(headers))
    for row in cells:
        ctx.print(line(row))


def _json(ctx: Context, value: object) -> None:
    ctx.print(json.dumps(value, indent=2, ensure_ascii=False))


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _where(namespace: str, path: str) -> str:
    """``namespace/path`` with the path normalised; just the namespace for the root."""
    path_n = paths.normalize(path)
    return f"{namespace}/{path_n}" if path_n else namespace


def _stats_json(info: admin.NamespaceStats) -> dict[str, object]:
    return {
        "namespace": info.namespace,
        "files": info.files,
        "size": info.size,
        "updated_at": _iso(info.updated_at),
    }


def _stats_table(ctx: Context, stats: Sequence[admin.NamespaceStats]) -> None:
    rows = [(s.namespace, s.files, s.size, _time(s.updated_at)) for s in stats]
    _table(ctx, ("NAMESPACE", "FILES", "SIZE", "UPDATED (UTC)"), rows)


def _transfer_summary(report: admin.TransferReport) -> str:
    return (
        f"{_plural(report.written, 'file')} written ({report.bytes_written} bytes), "
        f"{report.unchanged} unchanged, {report.skipped} skipped"
    )


# -- db --------------------------------------------------------------------------------


def _revision(found: str | None, head: str) -> str:
    if found is None:
        return "none (no sqlstore schema)"
    return f"{found} (head)" if found == head else found


def cmd_db_upgrade(ctx: Context) -> int:
    """``db upgrade [REV]``."""
    engine = ctx.engine(create=True)
    before = admin.current_revision(engine)
    layout = None if ctx.args.partitions is None else admin.partitions(engine)
    admin.upgrade(engine, ctx.args.revision, partitions=ctx.args.partitions)
    after = admin.current_revision(engine)
    head = admin.head_revision()
    where = safe_url(engine.url)
    if before == after:
        ctx.print(f"{where} is already at {_revision(after, head)}")
    else:
        ctx.print(f"upgraded {where} from {_revision(before, head)} to {_revision(after, head)}")
    if layout is not None and layout != ctx.args.partitions:
        now, was = _partitions(ctx.args.partitions), _partitions(layout)
        ctx.print(f"{where}: tables now in {now}, were in {was}")
    distributed = admin.layout(engine)
    if distributed.startswith("Citus"):
        ctx.print(f"{where}: {distributed}")
    return 0


def cmd_db_layout(ctx: Context) -> int:
    """``db layout``."""
    engine = ctx.engine()
    ctx.print(admin.layout(engine))
    return 0


def _partitions(count: int) -> str:
    return "one partition (not partitioned)" if count == 0 else f"{count} hash partitions"


def cmd_db_downgrade(ctx: Context) -> int:
    """``db downgrade REV``."""
    engine = ctx.engine()
    head = admin.head_revision()
    before = admin.current_revision(engine)
    admin.downgrade(engine, ctx.args.revision)
    after = admin.current_revision(engine)
    where = safe_url(engine.url)
    if before == after:
        ctx.print(f"{where} is already at {_revision(after, head)}")
    else:
        ctx.print(f"downgraded {where} from {_revision(before, head)} to {_revision(after, head)}")
    return 0


def cmd_db_current(ctx: Context) -> int:
    """``db current``."""
    engine = ctx.engine()
    ctx.print(_revision(admin.current_revision(engine), admin.head_revision()))
    return 0


def cmd_db_check(ctx: Context) -> int:
    """``db check``: exit 1 unless at head."""
    engine = ctx.engine()
    found, head = admin.current_revision(engine), admin.head_revision()
    where = safe_url(engine.url)
    if found != head:
        upgrade = ctx.command(ctx.url_of[engine], "db upgrade")
        raise CheckFailed(
            f"{where} is at {_revision(found, head)}, not at head {head}; run `{upgrade}`"
        )
    ctx.print(f"{where} is at head ({head})")
    return 0


def cmd_db_stamp(ctx: Context) -> int:
    """``db stamp REV``."""
    engine = ctx.engine()
    admin.stamp(engine, ctx.args.revision)
    found = admin.current_revision(engine)
    ctx.print(f"stamped {safe_url(engine.url)} at {_revision(found, admin.head_revision())}")
    return 0


# -- inspection and single files -------------------------------------------------------


def cmd_namespaces(ctx: Context) -> int:
    """``namespaces``."""
    stats = admin.namespaces(ctx.engine(schema=True), prefix=ctx.args.prefix)
    if ctx.args.json:
        _json(ctx, [_stats_json(s) for s in stats])
        return 0
    if not stats:
        ctx.print("no namespaces")
        return 0
    _stats_table(ctx, stats)
    files, size = sum(s.files for s in stats), sum(s.size for s in stats)
    ctx.print(f"{_plural(len(stats), 'namespace')}, {_plural(files, 'file')}, {size} bytes")
    return 0


def cmd_ls(ctx: Context) -> int:
    """``ls NS [PATH]``."""
    args = ctx.args
    entries = admin.ls(ctx.engine(schema=True), args.namespace, args.path, recursive=args.recursive)
    if args.json:
        _json(
            ctx,
            [
                {
                    "path": e.path,
                    "type": "directory" if e.is_dir else "file",
                    "files": e.files,
                    "size": e.size,
                    "updated_at": _iso(e.updated_at),
                }
                for e in entries
            ],
        )
        return 0
    rows = [(e.size, _time(e.updated_at), e.path) for e in entries]
    _table(ctx, ("SIZE", "UPDATED (UTC)", "PATH"), rows)
    return 0


def cmd_du(ctx: Context) -> int:
    """``du NS [PATH]``."""
    args = ctx.args
    usage = admin.du(ctx.engine(schema=True), args.namespace, args.path)
    if args.json:
        _json(
            ctx,
            {
                "namespace": usage.namespace,
                "path": usage.path,
                "files": usage.files,
                "size": usage.size,
                "updated_at": _iso(usage.updated_at),
            },
        )
        return 0
    where = _where(usage.namespace, usage.path)
    rows = [(usage.files, usage.size, _time(usage.updated_at), where)]
    _table(ctx, ("FILES", "SIZE", "UPDATED (UTC)", "PATH"), rows)
    return 0


def cmd_cat(ctx: Context) -> int:
    """``cat NS PATH``: the raw bytes on stdout."""
    data = admin.cat(ctx.engine(schema=True), ctx.args.namespace, ctx.args.path)
    out = sys.stdout
    out.flush()
    buffer = getattr(out, "buffer", None)
    if buffer is None:
        out.write(data.decode("utf-8", errors="surrogateescape"))
    else:
        buffer.write(data)
        buffer.flush()
    return 0


def cmd_put(ctx: Context) -> int:
    """``put NS PATH [FILE|-]``."""
    args = ctx.args
    if args.file == "-":
        stdin = sys.stdin
        buffer = getattr(stdin, "buffer", None)
        data = buffer.read() if buffer is not None else stdin.read().encode("utf-8")
    else:
        data = Path(args.file).read_bytes()
    admin.put(ctx.engine(schema=True), args.namespace, args.path, data)
    ctx.print(f"wrote {len(data)} bytes to {_where(args.namespace, args.path)}")
    return 0


def cmd_rm(ctx: Context) -> int:
    """``rm NS PATH``."""
    args = ctx.args
    count = admin.rm(ctx.engine(schema=True), args.namespace, args.path, recursive=args.recursive)
    ctx.print(f"removed {_plural(count, 'file')} from {_where(args.namespace, args.path)}")
    return 0


# -- bulk ------------------------------------------------------------------------------


def cmd_import(ctx: Context) -> int:
    """``import DIR``."""
    args = ctx.args
    report = admin.import_directory(
        ctx.engine(schema=True), args.directory, args.namespace, progress=ctx.progress()
    )
    ctx.print(
        f"imported {_plural(len(report.namespaces), 'namespace')} from {args.directory}: "
        f"{_transfer_summary(report)}"
    )
    if args.verbose:
        for skipped in report.skipped_paths:
            ctx.print(f"skipped {skipped}")
    return 0


def cmd_export(ctx: Context) -> int:
    """``export NS DIR``."""
    args = ctx.args
    report = admin.export_namespace(
        ctx.engine(schema=True), args.namespace, args.directory, progress=ctx.progress()
    )
    ctx.print(f"exported {args.namespace} to {args.directory}: {_transfer_summary(report)}")
    return 0


def cmd_copy(ctx: Context) -> int:
    """``copy --from URL --to URL``."""
    args = ctx.args
    source = ctx.engine(args.source, schema=True)
    destination = ctx.engine(args.destination, schema=True)
    report = admin.copy(source, destination, args.namespaces, progress=ctx.progress())
    ctx.print(
        f"copied {_plural(len(report.namespaces), 'namespace')} from {safe_url(source.url)} "
        f"to {safe_url(destination.url)}: {_transfer_summary(report)}"
    )
    return 0


def cmd_purge(ctx: Context) -> int:
    """``purge --older-than AGE``."""
    args = ctx.args
    try:
        age = admin.parse_age(args.older_than)
    except ValueError as exc:
        raise UsageError(f"argument --older-than: {exc}") from None
    report = admin.purge(
        ctx.engine(schema=True),
        age,
        prefix=args.namespace_prefix,
        dry_run=args.dry_run,
        progress=ctx.progress(),
    )
    if args.json:
        _json(
            ctx,
            {
                "cutoff": _iso(report.cutoff),
                "dry_run": report.dry_run,
                "removed": [_stats_json(s) for s in report.removed],
                "kept": report.kept,
            },
        )
        return 0
    verb = "would remove" if report.dry_run else "removed"
    ctx.print(
        f"{verb} {_plural(len(report.removed), 'namespace')} "
        f"({_plural(report.files, 'file')}, {report.size} bytes) "
        f"last written before {_time(report.cutoff)} UTC"
    )
    if report.removed:
        _stats_table(ctx, report.removed)
    if report.kept:
        ctx.print(f"kept {_plural(len(report.kept), 'namespace')} written to during the purge:")
        for namespace in report.kept:
            ctx.print(f"  {namespace}")
    return 0


# -- the parser ------------------------------------------------------------------------


def _url_option(parser: argparse.ArgumentParser, *, top: bool) -> None:
    parser.add_argument(
        "--url",
        default=None if top else argparse.SUPPRESS,
        help=f"database URL (default: ${URL_VARIABLE})",
    )


def _command(
    sub: Any, name: str, handler: Handler, summary: str, description: str = ""
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=summary,
        description=description or summary,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=handler, command_parser=parser)
    return parser


def _json_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def build_parser() -> argparse.ArgumentParser:
    """The ``sqlstore`` argument parser, with one subparser per command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Operate sqlstore databases: OpenHands conversations kept in SQL.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _url_option(parser, top=True)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    db = commands.add_parser(
        "db",
        help="manage the schema (Alembic migrations shipped with sqlstore)",
        description="Manage sqlstore's schema with the Alembic migrations shipped in the "
        "package (no checkout or alembic.ini needed).",
    )
    db_commands = db.add_subparsers(dest="db_command", metavar="COMMAND", required=True)
    p = _command(db_commands, "upgrade", cmd_db_upgrade, "upgrade the schema (default: to head)")
    p.add_argument("revision", nargs="?", default="head", help="target revision (default: head)")
    p.add_argument(
        "--partitions",
        type=int,
        metavar="N",
        help="also make the tables N hash partitions by namespace (PostgreSQL, MySQL/MariaDB; "
        "0 undoes it); copies every row once, with the tables locked",
    )
    _url_option(p, top=False)
    p = _command(
        db_commands,
        "downgrade",
        cmd_db_downgrade,
        "downgrade the schema to a revision",
        "Downgrade the schema to REVISION; `base` drops sqlstore's tables and their data.",
    )
    p.add_argument("revision", help="target revision, e.g. base")
    _url_option(p, top=False)
    p = _command(db_commands, "current", cmd_db_current, "print the database's schema revision")
    _url_option(p, top=False)
    p = _command(
        db_commands,
        "layout",
        cmd_db_layout,
        "print how the tables lie (partitions; Citus: shards and workers)",
        "Print the tables' layout: one table each, N hash partitions by namespace, or on "
        "a Citus coordinator: distributed by namespace, co-located or not, the shard "
        "count and the shards on each worker.",
    )
    _url_option(p, top=False)
    p = _command(
        db_commands,
        "check",
        cmd_db_check,
        "exit 1 unless the schema is at head",
        "Exit 0 if the database's schema is at the head revision, else 1 with the reason.",
    )
    _url_option(p, top=False)
    p = _command(
        db_commands,
        "stamp",
        cmd_db_stamp,
        "record a revision without running migrations",
        "Record REVISION as the database's schema revision without running migrations "
        "(`base` forgets it; the tables stay).",
    )
    p.add_argument("revision", help="revision to record, e.g. head or base")
    _url_option(p, top=False)

    p = _command(
        commands,
        "namespaces",
        cmd_namespaces,
        "list namespaces with file count, size and last update",
        "List every namespace (one per conversation) with its number of files, total "
        "size in bytes and newest write (UTC).",
    )
    p.add_argument("--prefix", help="only namespaces starting with PREFIX")
    _json_option(p)
    _url_option(p, top=False)

    p = _command(
        commands,
        "ls",
        cmd_ls,
        "list files and directories of a namespace",
        "List the files and directories at PATH (default: the root) with sizes and "
        "last updates (UTC); a directory's size is the total below it.",
    )
    p.add_argument("namespace", help="the namespace")
    p.add_argument("path", nargs="?", default="", help="a directory or file (default: root)")
    p.add_argument("-r", "--recursive", action="store_true", help="list every file below PATH")
    _json_option(p)
    _url_option(p, top=False)

    p = _command(commands, "cat", cmd_cat, "write a file's raw bytes to stdout")
    p.add_argument("namespace", help="the namespace")
    p.add_argument("path", help="the file")
    _url_option(p, top=False)

    p = _command(
        commands,
        "put",
        cmd_put,
        "write a file from a local file or stdin",
        "Create or overwrite the file at PATH with the bytes of FILE, or of stdin.",
    )
    p.add_argument("namespace", help="the namespace")
    p.add_argument("path", help="the file to write")
    p.add_argument("file", nargs="?", default="-", help="local file to read (default: - stdin)")
    _url_option(p, top=False)

    p = _command(
        commands,
        "rm",
        cmd_rm,
        "delete a file, or a directory with -r",
        "Delete the file at PATH; with -r, a directory and everything below it "
        "(`rm -r NS /` empties the namespace).",
    )
    p.add_argument("namespace", help="the namespace")
    p.add_argument("path", help="the file or directory")
    p.add_argument("-r", "--recursive", action="store_true", help="delete a directory's subtree")
    _url_option(p, top=False)

    p = _command(
        commands,
        "du",
        cmd_du,
        "count files and bytes below a path",
        "Print the number of files, total size in bytes and newest write at or below PATH.",
    )
    p.add_argument("namespace", help="the namespace")
    p.add_argument("path", nargs="?", default="", help="a directory or file (default: root)")
    _json_option(p)
    _url_option(p, top=False)

    p = _command(
        commands,
        "import",
        cmd_import,
        "import conversations a LocalFileStore wrote to disk",
        "Import an OpenHands persistence directory, one subdirectory per conversation, "
        "into one namespace per conversation (the subdirectory's name: the conversation "
        "id in hex); with --namespace, import DIR as one tree. Bytes are copied exactly; "
        "lock files (*.lock) and interrupted writes (.*.tmp) are skipped. Files already "
        "identical in the database are left alone, so running it again changes nothing.",
    )
    p.add_argument("directory", help="the persistence directory (or one tree, with --namespace)")
    p.add_argument("--namespace", help="import DIR as one tree into this namespace")
    p.add_argument("-v", "--verbose", action="store_true", help="list the files skipped")
    _url_option(p, top=False)

    p = _command(
        commands,
        "export",
        cmd_export,
        "write a namespace to a directory LocalFileStore can open",
        "Write every file of NAMESPACE under DIR with its exact bytes, so that "
        "LocalFileStore(DIR) opens and resumes the conversation. Files already identical "
        "on disk are left alone.",
    )
    p.add_argument("namespace", help="the namespace")
    p.add_argument("directory", help="the directory to write (created if missing)")
    _url_option(p, top=False)

    p = _command(
        commands,
        "copy",
        cmd_copy,
        "copy namespaces between two databases of any dialects",
        "Copy namespaces (default: all) from one database to another, byte for byte, in "
        "batches of 200 files, one transaction each; timestamps are kept. Files already "
        "identical at the destination are skipped, so re-running an interrupted copy "
        "completes it. The destination must be migrated (`sqlstore --url URL db upgrade`).",
    )
    p.add_argument("--from", dest="source", required=True, metavar="URL", help="source database")
    p.add_argument(
        "--to", dest="destination", required=True, metavar="URL", help="destination database"
    )
    p.add_argument(
        "--namespace",
        dest="namespaces",
        action="append",
        metavar="NS",
        help="copy this namespace (repeatable; default: all)",
    )

    p = _command(
        commands,
        "purge",
        cmd_purge,
        "delete namespaces not written to for a while",
        "Delete whole namespaces whose newest write is older than AGE (by the database's "
        "clock), and report what was removed. AGE is a number and a unit: s, m, h, d, w "
        "(e.g. 30d, 12h, 1d12h).",
    )
    p.add_argument("--older-than", required=True, metavar="AGE", help="e.g. 30d, 12h, 2w")
    p.add_argument("--namespace-prefix", metavar="P", help="only namespaces starting with P")
    p.add_argument("--dry-run", action="store_true", help="report what would go; delete nothing")
    _json_option(p)
    _url_option(p, top=False)
    return parser


# -- main ------------------------------------------------------------------------------


def _error_message(exc: BaseException, ctx: Context) -> str:
    if isinstance(exc, FileNotFoundError) and exc.filename is None and len(exc.args) == 1:
        text = str(exc.args[0])  # the store raises FileNotFoundError(path)
    else:
        text = str(exc) or type(exc).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return ctx.mask(lines[0] if lines else type(exc).__name__)


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _fail(message: str, code: int = 1) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``sqlstore`` command line.

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit code: 0 success, 1 error, 2 usage error, 130 interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    ctx = Context(args, parser)
    handler: Handler = args.handler
    try:
        return handler(ctx)
    except UsageError as exc:
        usage: argparse.ArgumentParser = getattr(args, "command_parser", parser)
        usage.print_usage(sys.stderr)
        return _fail(ctx.mask(str(exc)), 2)
    except CheckFailed as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _silence_stdout()  # e.g. `sqlstore cat ... | head`: the reader left
        return 1
    except (SQLStoreError, OSError, ValueError, ImportError) as exc:
        # sqlstore raises only its own errors and builtins; anything else is a bug.
        return _fail(_error_message(exc, ctx))
    finally:
        ctx.dispose()
