"""Every statement the store runs, built once per dialect from the Core tables.

Statements take their values through named bind parameters, so each is compiled once
per engine and then served from SQLAlchemy's compiled cache.
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
    delete,
    exists,
    insert,
    literal_column,
    or_,
    select,
    union_all,
)

from .dialects import DialectStrategy
from .schema import Content, DirKey, FileId, chunks, files

_f = files.c
_ns = _f.namespace == bindparam("ns")
_in_range = and_(_f.parent >= bindparam("low"), _f.parent < bindparam("high"))
_from_low = _f.parent >= bindparam("low")


def _first_in(where: Any) -> Select[Any]:
    """The first file row, in key order, whose parent key matches ``where``."""
    return select(_f.name, _f.parent).where(_ns, where).order_by(_f.parent, _f.name).limit(1)


class Statements:
    """The prepared statements of one dialect."""

    def __init__(self, strategy: DialectStrategy) -> None:
        # -- reads ---------------------------------------------------------------
        self.read = select(_f.content, _f.chunk_count, _f.size).where(
            _f.file_id == bindparam("fid")
        )
        self.read_chunks = (
            select(chunks.c.data).where(chunks.c.file_id == bindparam("fid")).order_by(chunks.c.seq)
        )
        self.exists = select(
            or_(
                exists().where(_f.file_id == bindparam("fid")),
                exists().where(_ns, _in_range),
            )
        )
        self.is_dir = select(exists().where(_ns, _in_range))
        self.files_among = select(_f.file_id).where(
            _f.file_id.in_(bindparam("fids", expanding=True))
        )

        # -- list: direct files, the path itself as a file, the first subdirectory ----
        kind = literal_column
        direct = select(kind("1"), _f.name, _f.parent).where(_ns, _f.parent == bindparam("key"))
        itself = select(kind("2"), _f.name, _f.parent).where(_f.file_id == bindparam("fid"))

        def first_subdir(where: Any) -> Select[Any]:
            sub = _first_in(where).subquery()
            return select(kind("3"), sub.c.name, sub.c.parent)

        self.list_dir = union_all(direct, itself, first_subdir(_in_range))
        self.list_root = union_all(direct, first_subdir(_from_low))
        self.next_subdir = _first_in(_in_range)
        self.next_subdir_root = _first_in(_from_low)

        # -- write: insert or overwrite, unless an ancestor is a file or the path a dir --
        source = select(
            bindparam("fid", type_=FileId),
            bindparam("ns", type_=_f.namespace.type),
            bindparam("key", type_=DirKey),
            bindparam("name", type_=_f.name.type),
            bindparam("content", type_=Content),
            bindparam("size", type_=BigInteger),
            bindparam("chunk_count", type_=Integer),
        ).where(
            ~exists().where(_f.file_id.in_(bindparam("ancestors", expanding=True))),
            ~exists().where(_ns, _in_range),
        )
        self.write: Insert = strategy.upsert(
            files,
            ("file_id", "namespace", "parent", "name", "content", "size", "chunk_count"),
            source,
            replace=("content", "size", "chunk_count"),
            touch="updated_at",
        ).execution_options(preserve_rowcount=True)  # 0 rows written: a tree rule refused
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


__all__ = ["Statements"]
