"""Every statement the store runs, built once per engine from the Core tables.

Values travel as named bind parameters, so each statement is compiled once (see
:mod:`sqlstore.prepared`) however many stores and calls use it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Delete,
    Insert,
    Integer,
    Select,
    and_,
    bindparam,
    cast,
    delete,
    exists,
    insert,
    literal_column,
    null,
    or_,
    select,
    union_all,
)
from sqlalchemy.sql import CompoundSelect

from .dialects import DialectStrategy
from .schema import Content, DirKey, FileId, chunks, files

_f = files.c
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
    """The statements of one dialect, as Core objects."""

    def __init__(self, strategy: DialectStrategy) -> None:
        self._strategy = strategy
        self._writes: dict[int, Insert] = {}

        # -- reads ---------------------------------------------------------------
        self.read = select(_f.content, _f.chunk_count).where(_f.file_id == bindparam("fid"))
        self.is_file = select(_f.file_id).where(_f.file_id == bindparam("fid"))
        # Read-ahead: the next files of a directory, down or up from a name.
        in_dir = (_ns, _f.parent == bindparam("key"))
        batch = select(_f.name, _f.content, _f.chunk_count).limit(bindparam("limit"))
        self.read_ahead_down = batch.where(*in_dir, _f.name <= bindparam("name")).order_by(
            _f.name.desc()
        )
        self.read_ahead_up = batch.where(*in_dir, _f.name >= bindparam("name")).order_by(_f.name)
        # Only the chunks the row counts: a file that shrank below chunk_size leaves
        # its old chunks behind until it grows again or is deleted (see store.write).
        self.read_chunks = (
            select(chunks.c.data)
            .where(chunks.c.file_id == bindparam("fid"), chunks.c.seq <= bindparam("count"))
            .order_by(chunks.c.seq)
        )
        self.exists = select(
            or_(
                exists().where(_f.file_id == bindparam("fid")),
                exists().where(_ns, _in_range),
            )
        )
        self.is_dir = select(exists().where(_ns, _in_range))

        # -- list: direct files, the path itself as a file, the first subdirectory --
        kind = literal_column
        # Direct files need only their names; a typed NULL spares decoding the key per row.
        no_parent = cast(null(), DirKey)
        direct = select(kind("1"), _f.name, no_parent).where(_ns, _f.parent == bindparam("key"))
        itself = select(kind("2"), _f.name, _f.parent).where(_f.file_id == bindparam("fid"))

        def first_subdir(where: Any) -> Select[Any]:
            sub = _first_in(where).subquery()
            return select(kind("3"), sub.c.name, sub.c.parent)

        self.list_dir: CompoundSelect[Any] = union_all(direct, itself, first_subdir(_in_range))
        self.list_root: CompoundSelect[Any] = union_all(direct, first_subdir(_from_low))
        self.next_subdir = _first_in(_in_range)
        self.next_subdir_root = _first_in(_from_low)

        # -- chunks (dialects with a chunk_size) -----------------------------------
        self.insert_chunk = insert(chunks)
        self.delete_chunks = delete(chunks).where(chunks.c.file_id == bindparam("fid"))

        # -- delete --------------------------------------------------------------
        subtree = or_(_f.file_id == bindparam("fid"), _in_range)
        self.delete_path: Delete = delete(files).where(_ns, subtree)
        self.delete_namespace: Delete = delete(files).where(_ns)
        self.delete_path_chunks = delete(chunks).where(
            chunks.c.file_id.in_(select(_f.file_id).where(_ns, subtree))
        )
        self.delete_namespace_chunks = delete(chunks).where(
            chunks.c.file_id.in_(select(_f.file_id).where(_ns))
        )

    def write(self, depth: int) -> Insert:
        """Insert or overwrite a file ``depth`` directories deep, unless a tree rule forbids it.

        Nothing is written (0 rows) when one of the ancestors (bind parameters ``a0``...)
        is a file, or when the path is a directory (a file lies in ``[low, high)``).
        One statement per depth keeps each one a fixed string.
        """
        stmt = self._writes.get(depth)
        if stmt is not None:
            return stmt
        source = select(
            bindparam("fid", type_=FileId),
            bindparam("ns", type_=_f.namespace.type),
            bindparam("key", type_=DirKey),
            bindparam("name", type_=_f.name.type),
            bindparam("content", type_=Content),
            bindparam("size", type_=BigInteger),
            bindparam("chunk_count", type_=Integer),
            self._strategy.utc_now(),
            self._strategy.utc_now(),
        ).where(~exists().where(_ns, _in_range))
        if depth:
            ancestors = [bindparam(name, type_=FileId) for name in ancestor_names(depth)]
            source = source.where(~exists().where(_f.file_id.in_(ancestors)))
        stmt = self._strategy.upsert(
            files,
            _WRITTEN,
            source,
            replace=("content", "size", "chunk_count"),
            touch="updated_at",
        )
        return self._writes.setdefault(depth, stmt)


__all__ = ["Statements", "ancestor_names"]
