"""Every statement sqlstore runs, built from the Core tables and compiled once per engine.

SQLAlchemy's ``Connection.execute`` costs tens of microseconds per call on top of the
driver (measured here: a 1 KiB read took 142 µs through it, 89 µs through a pooled
DBAPI connection, 65 µs on a bare psycopg connection). sqlstore's calls are single,
fixed statements, so each is compiled once into a :class:`Statement` — its SQL string,
its parameter order and SQLAlchemy's own type processors — and then run directly on a
DBAPI cursor. Values travel as named bind parameters, so one compiled form serves every
store and call. :class:`Statements` names them all; ad hoc statements (the
administration queries) are compiled on the spot with :meth:`Statement.of`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Integer,
    Select,
    and_,
    bindparam,
    case,
    delete,
    exists,
    insert,
    literal_column,
    null,
    or_,
    select,
    text,
    type_coerce,
    union_all,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.sqltypes import _Binary

from .dialects import DialectStrategy
from .dialects.base import A_DIRECTORY, BELOW_A_FILE
from .schema import Content, DirKey, FileId, chunks, files

Processor = Callable[[Any], Any]

#: Files larger than this are never read ahead (the query leaves them out).
READ_AHEAD_MAX_SIZE = 256 << 10

#: What a write refused by a tree rule raises, by the rule (see ``Statements.write``).
REFUSALS: dict[str, Callable[[str], OSError]] = {
    BELOW_A_FILE: lambda path: FileExistsError(f"a parent directory of {path!r} is a file"),
    A_DIRECTORY: lambda path: IsADirectoryError(f"{path!r} is a directory"),
}


class Statement:
    """One Core statement compiled for one dialect, ready for a DBAPI cursor."""

    __slots__ = (
        "_binds",
        "_defaults",
        "_direct",
        "_getter",
        "_order",
        "_results",
        "driver_args",
        "plain",
        "single_row",
        "sql",
    )

    def __init__(
        self, statement: ClauseElement, dialect: Dialect, *, single_row: bool = False
    ) -> None:
        # Expanding parameters (IN lists) are rendered as one bind parameter per value.
        compiled = cast(
            SQLCompiler,
            statement.compile(dialect=dialect, compile_kwargs={"render_postcompile": True}),
        )
        self.sql: str = compiled.string
        self._order: tuple[str, ...] | None = (
            tuple(compiled.positiontup or ()) if compiled.positional else None
        )
        # Values fixed at build time, such as LIMIT 1 or an ad hoc statement's literals.
        self._defaults = {k: v for k, v in compiled.params.items() if v is not None}
        self._binds: dict[str, Processor] = {}
        for name, bind in compiled.binds.items():
            impl = bind.type.dialect_impl(dialect)
            # Every supported driver takes bytes as they are; SQLAlchemy's binary
            # processors would only wrap them in another object (every binary type's
            # processor: MySQL's BINARY, VARBINARY and LONGBLOB are not LargeBinary).
            if isinstance(impl, _Binary):
                continue
            processor = impl.bind_processor(dialect)
            if processor is not None:
                self._binds[name] = processor
        columns = getattr(statement, "selected_columns", ())
        # The dialect's own type (SQLite's DATETIME parses its text, for example).
        self._results: list[Processor | None] = [
            column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns
        ]
        #: Whether result rows need no processing.
        self.plain = all(processor is None for processor in self._results)
        #: Whether it returns one row at most (a key lookup, ``EXISTS``, ``LIMIT 1``):
        #: a cursor that fetched its first row has then finished it.
        self.single_row = single_row
        # Most statements need neither defaults nor processors: their driver parameters
        # are the caller's dict (named styles) or its values in order (positional ones),
        # taken in C by an itemgetter. This runs for every statement of every call.
        self._direct = not self._defaults and not self._binds
        order = self._order
        self._getter: Callable[[Mapping[str, Any]], Any] | None = None
        if not order:
            self._direct = self._direct and order is None
        elif order is not None:
            self._getter = _single(order[0]) if len(order) == 1 else itemgetter(*order)
        #: :meth:`args` for the parameters of a call (never empty where the statement
        #: has any): the itemgetter itself where that is all it does, a call less.
        self.driver_args: Callable[[Mapping[str, Any] | None], Any] = (
            self._getter  # type: ignore[assignment]  # given a mapping by every caller
            if self._direct and self._getter is not None
            else self.args
        )

    @classmethod
    def of(cls, statement: ClauseElement, dialect: Dialect) -> Statement:
        """Compile an ad hoc statement (values may be written into it as literals)."""
        return cls(statement, dialect)

    def args(self, params: Mapping[str, Any] | None = None) -> Any:
        """The driver's parameters for ``params`` (names as in the Core statement)."""
        if params and self._direct:
            getter = self._getter
            return params if getter is None else getter(params)
        values = {**self._defaults, **params} if params else dict(self._defaults)
        for name, processor in self._binds.items():
            if name in values:
                values[name] = processor(values[name])
        if self._order is None:
            return values
        return tuple(values[name] for name in self._order)

    def convert(self, row: Sequence[Any]) -> Sequence[Any]:
        """A result row with SQLAlchemy's result processors applied."""
        if self.plain:
            return row
        return tuple(
            value if processor is None or value is None else processor(value)
            for value, processor in zip(row, self._results, strict=False)
        )


def _single(name: str) -> Callable[[Mapping[str, Any]], tuple[Any]]:
    """Positional parameters of a statement with one bind parameter.

    ``itemgetter`` of one name gives the value, not a tuple.
    """

    def get(params: Mapping[str, Any]) -> tuple[Any]:
        return (params[name],)

    return get


_f = files.c
_c = chunks.c
_ns = _f.namespace == bindparam("ns")
_in_range = and_(_f.parent >= bindparam("low"), _f.parent < bindparam("high"))
_from_low = _f.parent >= bindparam("low")
_WRITTEN = (
    "file_id",
    "namespace",
    "parent",
    "name",
    "content",
    "size",
    "chunk_count",
    "created_at",
    "updated_at",
)


def _first_in(where: Any) -> Select[Any]:
    """The first file row, in key order, whose parent key matches ``where``."""
    return select(_f.name, _f.parent).where(_ns, where).order_by(_f.parent, _f.name).limit(1)


def ancestor_names(depth: int) -> list[str]:
    """Bind parameter names for the file ids of a path's ``depth`` ancestors."""
    return [f"a{i}" for i in range(depth)]


class Statements:
    """The store's statements, compiled for one engine's dialect.

    Read statements return plain rows; the write statement returns no rows and changes
    one row, or none when a tree rule forbids the write.
    """

    def __init__(self, dialect: Dialect, strategy: DialectStrategy) -> None:
        self._dialect = dialect
        self._strategy = strategy
        #: write(depth) by depth, as the one statement writes(depth) returns.
        self._writes: dict[int, tuple[Statement]] = {}
        self._routed: dict[int, tuple[Statement, ...]] = {}
        self._releases: dict[str, Statement] = {}
        #: Whether a write goes as statements a distributed database routes whole to
        #: the one node holding the namespace (see :meth:`writes`); set once the engine's
        #: database is known to be a Citus coordinator.
        self.routed_writes = False
        compile_ = self._compile
        # File names as the query returns them (see DialectStrategy.name_as_text).
        as_text = strategy.name_as_text

        # -- reads ---------------------------------------------------------------
        # Every statement names the namespace, the leading key column: each one
        # touches one partition (or shard) of a database partitioned by namespace.
        by_id = and_(_ns, _f.file_id == bindparam("fid"))
        self.read = compile_(select(_f.content, _f.chunk_count).where(by_id), single_row=True)
        # A chunked file (the row counts chunks): the row and the chunks it counts, in
        # one statement, so one snapshot: a concurrent overwrite can never tear it, in
        # or out of a lock block. Only run for such files; every other read is `read`.
        counted = select(_c.seq, _c.data).join(
            files,
            and_(
                _c.namespace == _f.namespace,
                _c.file_id == _f.file_id,
                _c.seq <= _f.chunk_count,
            ),
        )
        head = select(literal_column("0").label("seq"), _f.content.label("data"))
        both = union_all(head.where(by_id), counted.where(by_id)).subquery()
        self.read_chunked = compile_(select(both.c.data).order_by(both.c.seq))
        # Read-ahead: the next files of a directory, down or up from a name. Large and
        # chunked files are left out by the query itself, never fetched to be dropped.
        ahead = (
            select(as_text(_f.name), _f.content)
            .where(
                _ns,
                _f.parent == bindparam("key"),
                _f.size <= READ_AHEAD_MAX_SIZE,
                _f.chunk_count == 0,
            )
            .limit(bindparam("limit"))
        )
        self.read_ahead_down = compile_(
            ahead.where(_f.name <= bindparam("name")).order_by(_f.name.desc())
        )
        self.read_ahead_up = compile_(ahead.where(_f.name >= bindparam("name")).order_by(_f.name))
        # Read as truth values only: typed Integer (the SQL is the same), their rows need
        # no conversion (SQLite's and MySQL's booleans would be converted in Python).
        file_or_dir = or_(exists().where(by_id), exists().where(_ns, _in_range))
        self.exists = compile_(select(type_coerce(file_or_dir, Integer)), single_row=True)
        self.is_dir = compile_(
            select(type_coerce(exists().where(_ns, _in_range), Integer)), single_row=True
        )

        # -- list: direct files, the path itself as a file, the first subdirectory --
        kind = literal_column
        # Direct files need only their names; a typed NULL spares decoding the key per row.
        no_parent = sql_cast(null(), DirKey)
        # In name order: rows come sorted, and the planner takes the listing index even
        # without statistics (the primary key also leads with the namespace).
        direct_names = (
            select(_f.name).where(_ns, _f.parent == bindparam("key")).order_by(_f.name).subquery()
        )
        # Every part of the union alike: its column types are the union's.
        direct = select(kind("1"), as_text(direct_names.c.name), no_parent)
        itself = select(kind("2"), as_text(_f.name), _f.parent).where(by_id)

        def first_subdir(where: Any) -> Select[Any]:
            sub = _first_in(where).subquery()
            return select(kind("3"), as_text(sub.c.name), sub.c.parent)

        self.list_dir = compile_(union_all(direct, itself, first_subdir(_in_range)))
        self.list_root = compile_(union_all(direct, first_subdir(_from_low)))
        self.next_subdir = compile_(_first_in(_in_range), single_row=True)
        self.next_subdir_root = compile_(_first_in(_from_low), single_row=True)

        # -- chunks (dialects with a chunk_size) -----------------------------------
        chunk_ns = _c.namespace == bindparam("ns")
        self.insert_chunk = compile_(
            insert(chunks).values(
                namespace=bindparam("ns"),
                file_id=bindparam("fid"),
                seq=bindparam("seq"),
                data=bindparam("data"),
            )
        )
        self.delete_chunks = compile_(
            delete(chunks).where(chunk_ns, _c.file_id == bindparam("fid"))
        )

        # -- delete --------------------------------------------------------------
        # A file and the chunks that continue it go in one statement: where contents
        # are chunked, the dialect writes a delete of both tables at once.
        types = {"ns": _f.namespace.type, "fid": FileId, "low": DirKey, "high": DirKey}
        if strategy.chunk_size is None:
            own = strategy.delete_subtree(types)
            either = delete(files).where(_ns, or_(_f.file_id == bindparam("fid"), _in_range))
            self.delete_path = compile_(own if own is not None else either)
            self.delete_namespace = compile_(delete(files).where(_ns))
        else:
            self.delete_path = compile_(strategy.delete_with_chunks(types, subtree=True))
            self.delete_namespace = compile_(strategy.delete_with_chunks(types, subtree=False))

    def _compile(self, statement: ClauseElement, *, single_row: bool = False) -> Statement:
        return Statement(statement, self._dialect, single_row=single_row)

    def release_savepoint(self, name: str) -> Statement:
        """``RELEASE SAVEPOINT name``, as a statement that can be sent ahead."""
        found = self._releases.get(name)
        if found is None:
            found = self._releases[name] = self._compile(text(f"RELEASE SAVEPOINT {name}"))
        return found

    def writes(self, depth: int) -> tuple[Statement, ...]:
        """The statements of a write ``depth`` directories deep, run in this order.

        :meth:`write` alone; where :attr:`routed_writes`, its two tree rules as
        ``UPDATE`` statements that fail with the same error codes when a row makes them
        refuse (and change nothing otherwise), then a plain ``INSERT ... VALUES ... ON
        CONFLICT``. Citus routes each of those whole to the namespace's shard, so a lock
        block's transaction touches one node and commits in one phase; the single
        ``INSERT ... SELECT`` of :meth:`write` it runs through the coordinator, and
        commits in two.
        """
        if not self.routed_writes:
            one = self._writes.get(depth)  # a call less than write(): runs per write
            return (self.write(depth),) if one is None else one
        found = self._routed.get(depth)
        if found is not None:
            return found
        checks: list[Any] = []
        if depth:
            ancestors = [bindparam(name, type_=FileId) for name in ancestor_names(depth)]
            # A file among the ancestors: its content cannot turn NULL (not_null_violation).
            below_a_file = update(files).where(_ns, _f.file_id.in_(ancestors))
            checks.append(below_a_file.values(content=null()))
        # A file below the path (it is a directory): any chunk_count minus 2**31 + 1 is
        # out of the integer's range (numeric_value_out_of_range). Computed per row, so
        # the error can only come from a row that matched.
        overflow = _f.chunk_count - literal_column("2147483647") - literal_column("2")
        checks.append(update(files).where(_ns, _in_range).values(chunk_count=overflow))
        now = self._strategy.utc_now()
        plain = (
            type(self._strategy)
            .insert(files)
            .values(
                file_id=bindparam("fid", type_=FileId),
                namespace=bindparam("ns", type_=_f.namespace.type),
                parent=bindparam("key", type_=DirKey),
                name=bindparam("name", type_=_f.name.type),
                content=bindparam("content", type_=Content),
                size=bindparam("size", type_=BigInteger),
                chunk_count=bindparam("chunk_count", type_=Integer),
                created_at=now,
                updated_at=now,
            )
        )
        replaced = ("content", "size", "chunk_count", "updated_at")
        upsert = plain.on_conflict_do_update(
            index_elements=list(files.primary_key),
            set_={name: plain.excluded[name] for name in replaced},
        )
        found = (*(self._compile(c) for c in checks), self._compile(upsert))
        return self._routed.setdefault(depth, found)

    def write(self, depth: int) -> Statement:
        """Insert or overwrite a file ``depth`` directories deep, unless a tree rule forbids it.

        A forbidden write fails in the database, so that it can never pass unseen, in
        a lock block whose statements are sent ahead either. Each rule fails it with an
        error of its own code, so that the code alone says which rule refused (never
        the message, which is in the server's language and names a table or a shard):
        ``content`` turns NULL (a NOT NULL violation) when one of the ancestors (bind
        parameters ``a0``...) is a file; ``chunk_count`` takes the dialect's
        :meth:`~sqlstore.dialects.DialectStrategy.directory_refusal` when the path is a
        directory (a file lies in ``[low, high)``). :data:`REFUSALS` says what each
        means. One statement per depth keeps each one a fixed string.
        """
        found = self._writes.get(depth)
        if found is not None:
            return found[0]
        content: Any = bindparam("content", type_=Content)
        if depth:
            ancestors = [bindparam(name, type_=FileId) for name in ancestor_names(depth)]
            below_a_file = exists().where(_ns, _f.file_id.in_(ancestors))
            content = case((below_a_file, null()), else_=content)
        chunk_count = case(
            (exists().where(_ns, _in_range), self._strategy.directory_refusal()),
            else_=bindparam("chunk_count", type_=Integer),
        )
        source = select(
            bindparam("fid", type_=FileId),
            bindparam("ns", type_=_f.namespace.type),
            bindparam("key", type_=DirKey),
            bindparam("name", type_=_f.name.type),
            content,
            bindparam("size", type_=BigInteger),
            chunk_count,
            self._strategy.utc_now(),
            self._strategy.utc_now(),
        )
        upsert = self._strategy.upsert(
            files,
            _WRITTEN,
            source,
            replace=("content", "size", "chunk_count"),
            touch="updated_at",
        )
        return self._writes.setdefault(depth, (self._compile(upsert),))[0]


__all__ = ["READ_AHEAD_MAX_SIZE", "REFUSALS", "Statement", "Statements", "ancestor_names"]
