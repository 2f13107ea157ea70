"""The sqlstore tables, as SQLAlchemy Core objects. No I/O happens here.

``sqlstore_files`` holds one row per file. Directories are implicit: a directory
exists while a file lies below it. See :mod:`sqlstore.paths` for how ``file_id`` and
``parent`` are derived from a path.

The namespace (one conversation) leads every key: the primary keys of both tables and
the listing index. A database can therefore be hash-partitioned, or distributed (Citus),
by namespace, and every statement sqlstore runs against a namespace names it, so each
one touches a single partition or shard.

``sqlstore_chunks`` holds the tail of contents too large for one statement on
dialects that need it (MySQL/MariaDB, whose ``max_allowed_packet`` bounds a whole
statement). It stays empty on PostgreSQL and SQLite.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    func,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

from .dialects.mysql import MySQLStrategy

#: The Alembic revision this code reads and writes. A test keeps it equal to the head.
SCHEMA_REVISION = "0002"
#: sqlstore's own Alembic version table, so it can share a database with an app's Alembic.
VERSION_TABLE = "sqlstore_alembic_version"

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: Dialect names whose paths are stored as VARBINARY.
_MYSQL = MySQLStrategy.names


class BytewiseString(TypeDecorator[str]):
    """A string compared byte by byte, case- and trailing-space-sensitive, on every dialect.

    PostgreSQL uses ``COLLATE "C"``, SQLite's default ``BINARY`` collation already is
    bytewise, and MySQL/MariaDB store ``VARBINARY`` (their ``_bin`` collations are
    PAD SPACE, so ``'a'`` would equal ``'a '``).
    """

    impl = String
    cache_ok = True

    def __init__(self, length: int) -> None:
        super().__init__(length)
        self.length = length

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        """The column type this dialect stores."""
        if dialect.name in _MYSQL:
            return dialect.type_descriptor(mysql.VARBINARY(self.length * 4))
        if dialect.name == "postgresql":
            return dialect.type_descriptor(String(self.length, collation="C"))
        return dialect.type_descriptor(String(self.length))

    def process_bind_param(self, value: str | None, dialect: Dialect) -> Any:
        """Encode to UTF-8 where the column is binary."""
        if value is not None and dialect.name in _MYSQL:
            return value.encode("utf-8")
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> str | None:
        """Decode what a binary column returns."""
        if isinstance(value, bytes | bytearray):
            return bytes(value).decode("utf-8")
        return value  # type: ignore[no-any-return]

    # Where the column is text, values need no processing at all; returning no
    # processor spares a Python call per value (list() returns thousands of names).
    def bind_processor(self, dialect: Dialect) -> Any:
        """A processor only where the column is binary (MySQL/MariaDB)."""
        # process_bind_param, in one call: the decorator's processor would call it and
        # then VARBINARY's own, which only wraps the bytes in bytes again.
        return _utf8 if dialect.name in _MYSQL else None

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        """A processor only where the column is binary (MySQL/MariaDB)."""
        return super().result_processor(dialect, coltype) if dialect.name in _MYSQL else None


def _utf8(value: str | None) -> bytes | None:
    """A string encoded to UTF-8 (``BytewiseString``'s bind processor on MySQL)."""
    return None if value is None else value.encode()


def _binary(mysql_type: TypeEngine[bytes]) -> TypeEngine[bytes]:
    return LargeBinary().with_variant(mysql_type, *_MYSQL)


#: A file's 16-byte key.
FileId = _binary(mysql.BINARY(16))
#: An encoded directory path (``paths.dir_key``): up to 1024 characters of UTF-8.
DirKey = _binary(mysql.VARBINARY(4096))
#: File content: BYTEA, BLOB, LONGBLOB.
Content = _binary(mysql.LONGBLOB())

metadata = MetaData(naming_convention=NAMING_CONVENTION)

files = Table(
    "sqlstore_files",
    metadata,
    Column("file_id", FileId, nullable=False),
    Column("namespace", BytewiseString(255), nullable=False),
    Column("parent", DirKey, nullable=False),
    Column("name", BytewiseString(1024), nullable=False),
    Column("content", Content, nullable=False),
    Column("size", BigInteger, nullable=False),
    # Number of rows in sqlstore_chunks that continue `content` (0 on most dialects).
    Column("chunk_count", Integer, nullable=False, server_default="0"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("namespace", "file_id"),
    # Direct children of a directory, and whole subtrees, are range scans on this
    # index that never touch content. InnoDB caps a key at 3072 bytes, hence prefixes.
    Index(
        None,
        "namespace",
        "parent",
        "name",
        mysql_length={"parent": 1024, "name": 1024},
    ),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

chunks = Table(
    "sqlstore_chunks",
    metadata,
    Column("file_id", FileId, nullable=False),
    Column("seq", Integer, nullable=False, autoincrement=False),
    Column("data", Content, nullable=False),
    Column("namespace", BytewiseString(255), nullable=False),
    PrimaryKeyConstraint("namespace", "file_id", "seq"),
    mysql_engine="InnoDB",
    mysql_charset="utf8mb4",
)

#: The tables sqlstore owns; Alembic's env.py ignores every other table.
TABLE_NAMES = frozenset(metadata.tables)

__all__ = [
    "NAMING_CONVENTION",
    "SCHEMA_REVISION",
    "TABLE_NAMES",
    "VERSION_TABLE",
    "BytewiseString",
    "Content",
    "DirKey",
    "FileId",
    "chunks",
    "files",
    "metadata",
]
