"""``SQLFileStore``: the OpenHands ``FileStore`` interface on any supported database.

This module holds the FileStore's rules only: paths, the implicit tree, what each call
returns and raises. A call reads store → :mod:`sqlstore.paths` →
:mod:`sqlstore.statements` → :mod:`sqlstore.database` (connections, transactions, lock
blocks, retries, errors) → :mod:`sqlstore.dialects`. It names no database.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

from sqlalchemy import Engine
from sqlalchemy.engine import URL

from . import paths
from .connection import PooledConnection
from .database import Database, database_for, safe_url
from .engine import create_engine
from .errors import FileTooLargeError
from .readahead import ReadAhead
from .statements import ancestor_names

_SEP = paths.SEP
_AFTER_SEP = paths.AFTER_SEP

#: Lock keys a store remembers at most (it forgets them all when full).
_LOCK_KEYS_MAX = 1024
#: Paths whose keys a store remembers at most (it forgets them all when full): the
#: handful a conversation names again and again (its length marker, base_state.json,
#: the events directory) and a working set of files besides; about 40 KB at most.
_KEYS_MAX = 128
#: Directories whose write parameters a store remembers at most (likewise).
_PARENTS_MAX = 64

#: What a store remembers of a path: its normal form, its file id and its key as a
#: directory (``paths.dir_key``).
_Key = tuple[str, bytes, bytes]


class SQLFileStore:
    """A file store for one namespace (typically one conversation) in a SQL database.

    Implements the OpenHands SDK ``FileStore`` interface (``write``, ``read``, ``list``,
    ``delete``, ``exists``, ``get_absolute_path``, ``lock``) and adds ``read_bytes``,
    ``close``, ``flush`` and use as a context manager. Creating a store opens no
    connection and runs no DDL; the schema must have been migrated (see
    :func:`sqlstore.migrate`).

    Args:
        engine: A SQLAlchemy engine for PostgreSQL, SQLite or MySQL/MariaDB, shared by
            any number of stores. :func:`sqlstore.create_engine` configures one best;
            any other engine works too (statements run on autocommit connections from
            its pool).
        namespace: The namespace every path of this store lives in: a non-empty string
            of at most 255 characters without NUL.
        read_ahead: After this store lists a directory, the first read of one of its
            files fetches up to this many of them in one query (see
            :mod:`sqlstore.readahead`); 0 turns it off.
        read_ahead_max_age: The oldest, in seconds, a read-ahead file may be when
            served. Never older than this store's own last write either.

    Raises:
        ValueError: ``namespace`` is invalid.
        UnsupportedDialectError: the engine's database is not supported.
    """

    def __init__(
        self,
        engine: Engine,
        namespace: str,
        *,
        read_ahead: int = 64,
        read_ahead_max_age: float = 2.0,
    ) -> None:
        self._namespace = paths.check_namespace(namespace)
        self._ahead = ReadAhead(read_ahead, read_ahead_max_age)
        # A write or delete drops what was read ahead before it. Inside a lock block the
        # change becomes visible to others only at the commit, and a batch may be read
        # ahead from the old state until then: it is dropped again when the block ends
        # (bound once, for that).
        self._invalidate = self._ahead.invalidate
        self._db: Database = database_for(engine)
        self._engine = engine
        self._sql = self._db.statements
        self._owns_engine = False
        strategy = self._db.strategy
        self._max_size = strategy.max_content_size
        self._chunk_size = strategy.chunk_size
        # Per call, only what differs between calls is computed: the namespace is
        # hashed once; the keys of the paths named lately are kept (the SDK asks whether
        # its length marker exists, then deletes it: one lookup, no normalising or
        # hashing), as are the parameters of the few directories files are written in.
        self._id_prefix = paths.id_prefix(self._namespace).copy
        self._lock_key = paths.file_ids(self._namespace, b"sqlstore-lock")
        #: Keys by the path as given (see _key).
        self._keys: dict[str, _Key] = {}
        #: Lock keys by the path as given (most locks name a path locked before).
        self._lock_keys: dict[str, bytes] = {}
        self._parents: dict[str, tuple[int, dict[str, Any]]] = {}

    @classmethod
    def from_url(
        cls,
        url: str | URL,
        namespace: str,
        *,
        read_ahead: int = 64,
        read_ahead_max_age: float = 2.0,
        **engine_options: Any,
    ) -> SQLFileStore:
        """Create a store with an engine of its own, closed with the store.

        For many namespaces on one database, create one engine with
        :func:`sqlstore.create_engine` and pass it to each store instead.

        Args:
            url: A SQLAlchemy database URL.
            namespace: The store's namespace.
            read_ahead: As for the constructor.
            read_ahead_max_age: As for the constructor.
            **engine_options: Passed to :func:`sqlstore.create_engine`.
        """
        paths.check_namespace(namespace)
        store = cls(
            create_engine(url, **engine_options),
            namespace,
            read_ahead=read_ahead,
            read_ahead_max_age=read_ahead_max_age,
        )
        store._owns_engine = True
        return store

    @property
    def namespace(self) -> str:
        """The namespace this store reads and writes."""
        return self._namespace

    @property
    def engine(self) -> Engine:
        """The engine this store runs on."""
        return self._engine

    def with_namespace(self, namespace: str) -> SQLFileStore:
        """A store for another namespace on the same engine (no connection is opened)."""
        return type(self)(
            self._engine,
            namespace,
            read_ahead=self._ahead.size,
            read_ahead_max_age=self._ahead.max_age,
        )

    def __repr__(self) -> str:
        return f"SQLFileStore({safe_url(self._engine.url)!r}, namespace={self._namespace!r})"

    # -- FileStore -----------------------------------------------------------------

    def write(self, path: str, contents: str | bytes) -> None:
        """Create or overwrite the file at ``path``.

        ``str`` content is stored as UTF-8; bytes are stored unchanged.

        Raises:
            TypeError: ``contents`` is neither ``str`` nor bytes.
            ValueError: ``path`` is invalid or escapes the root.
            IsADirectoryError: ``path`` is the root or a directory.
            FileExistsError: a parent of ``path`` is a file.
            FileTooLargeError: the content exceeds the dialect's limit.
            DatabaseError: the database failed.
        """
        data = contents.encode() if type(contents) is str else _as_bytes(contents)
        # The path's remembered key, or _key (a call less: most paths are known).
        path_n, fid, low = (self._keys.get(path) if type(path) is str else None) or self._key(path)
        if path_n == paths.ROOT:
            raise IsADirectoryError(f"cannot write to the root directory: {path!r}")
        if len(data) > self._max_size:
            raise FileTooLargeError(
                f"{path!r}: {len(data)} bytes exceed the {self._db.name} "
                f"limit of {self._max_size} bytes; nothing was written"
            )
        ns = self._namespace
        parent, _, name = path_n.rpartition("/")
        size = self._chunk_size
        pieces = None if size is None or len(data) <= size else _split(data, size)
        # The directory's entry, or _parent_params (a call less: most are known). Its
        # parameters hold every key already: the copy is filled in, never resized.
        depth, known = self._parents.get(parent) or self._parent_params(parent)
        params = known.copy()
        params["fid"] = fid
        params["name"] = name
        params["content"] = data
        params["size"] = len(data)
        params["low"] = low
        params["high"] = low + _AFTER_SEP
        if pieces is not None:
            params["content"] = pieces[0]
            params["chunk_count"] = len(pieces) - 1
        sql = self._sql
        db = self._db
        block = db.blocks.current()
        if block is not None and pieces is None:
            # The schema was checked when the block opened: the statements are known.
            # What was read ahead is dropped when the block ends (see __init__).
            db.defer_in_block(block, sql.writes(depth), params, path, self._invalidate)
            return

        def run(conn: PooledConnection) -> None:
            # A tree rule that forbids the write makes it fail in the database (see
            # Statements.write): inside a lock block, possibly only when the block ends.
            # Chosen here, after the engine's schema check, which says how writes go.
            writes = sql.writes(depth)
            if pieces is None and len(writes) == 1:
                # One statement, also where contents may be chunked: readers use only
                # the chunks the row counts, so chunks a larger version left behind are
                # never read; the next chunked write or the delete removes them.
                conn.defer(writes[0], params, path)
                return
            with conn.transaction():
                for write in writes:  # the tree rules, then the write (Statements.writes)
                    conn.defer(write, params, path)
                if pieces is None:
                    return
                conn.defer(sql.delete_chunks, {"ns": ns, "fid": fid}, path)
                for seq, piece in enumerate(pieces[1:], start=1):
                    chunk = {"ns": ns, "fid": fid, "seq": seq, "data": piece}
                    conn.defer(sql.insert_chunk, chunk, path)

        if block is None:
            db.run_outside(run)  # the block looked up once
        else:  # chunked, in a block
            db.run_write(run, self._invalidate)
        self._ahead.invalidate()

    def _key(self, path: object) -> _Key:
        """``path``'s normal form, file id and directory key; remembered for a ``str``.

        Raises:
            TypeError: ``path`` is not a ``str``.
            ValueError: ``path`` is invalid.
        """
        path_n = paths.normal_form(path)  # the store remembers it: no cache twice
        encoded = path_n.encode()
        digest = self._id_prefix()  # paths.file_ids, written out: one encoding for both
        digest.update(encoded)
        key = (path_n, digest.digest(), encoded.replace(b"/", _SEP))
        if type(path) is str:  # a subclass of str may compare equal to another path
            known = self._keys
            if len(known) >= _KEYS_MAX:
                known.clear()
            known[path] = key
        return key

    def _parent_params(self, parent: str) -> tuple[int, dict[str, Any]]:
        """The depth of a write in ``parent``, and the write's parameters there.

        What every write in ``parent`` shares is filled in: ``ns``, ``key`` (``parent``'s
        directory key), ``chunk_count`` 0 and ``a0``... (the file ids of ``parent`` and
        the directories above it); the file's own parameters are ``None``.
        """
        ids = [self._key(a)[1] for a in paths.ancestors(parent + "/")] if parent else []
        params: dict[str, Any] = dict.fromkeys(("fid", "name", "content", "size", "low", "high"))
        params.update(ns=self._namespace, key=paths.dir_key(parent), chunk_count=0)
        params.update(zip(ancestor_names(len(ids)), ids, strict=True))
        found = (len(ids), params)
        known = self._parents
        if len(known) >= _PARENTS_MAX:
            known.clear()
        known[parent] = found
        return found

    def read(self, path: str) -> str:
        """Return the file's content decoded as UTF-8.

        Raises:
            FileNotFoundError: no file at ``path``.
            IsADirectoryError: ``path`` is a directory.
            UnicodeDecodeError: the content is not valid UTF-8.
            ValueError: ``path`` is invalid.
            DatabaseError: the database failed.
        """
        return self.read_bytes(path).decode("utf-8")

    def read_bytes(self, path: str) -> bytes:
        """Return the file's content exactly as written.

        Raises:
            FileNotFoundError: no file at ``path``.
            IsADirectoryError: ``path`` is a directory.
            ValueError: ``path`` is invalid.
            DatabaseError: the database failed.
        """
        path_n, fid, _ = (self._keys.get(path) if type(path) is str else None) or self._key(path)
        if path_n == paths.ROOT:
            raise IsADirectoryError(f"{path!r} is the root directory")
        db = self._db
        block = db.blocks.current()
        if block is None and not self._ahead.idle and self._ahead.enabled:
            ahead = self._read_ahead(path_n)
            if ahead is not None:
                return ahead
        params = {"ns": self._namespace, "fid": fid}
        sql = self._sql

        def run(conn: PooledConnection) -> bytes | None:
            row = conn.first(sql.read, params)
            if row is None:
                return None
            content, chunk_count = row
            if not chunk_count:
                return bytes(content)
            # A chunked file: read it again, whole, in one statement (one snapshot).
            pieces = conn.all(sql.read_chunked, params)
            return b"".join(bytes(piece) for (piece,) in pieces) if pieces else None

        data = db.run_outside(run) if block is None else db.run_in_block(block, run)
        if data is not None:
            return data
        if self._is_dir(path_n):
            raise IsADirectoryError(f"{path!r} is a directory")
        raise FileNotFoundError(path)

    def _read_ahead(self, path_n: str) -> bytes | None:
        """``path_n``'s content from read-ahead, fetching a batch if this read starts one."""
        cached = self._ahead.get(path_n)
        if cached is not None:
            return cached
        plan = self._ahead.plan(path_n)
        if plan is None:
            return None
        generation, descending = plan
        directory, name = paths.split(path_n)
        query = self._sql.read_ahead_down if descending else self._sql.read_ahead_up
        params = {
            "ns": self._namespace,
            "key": paths.dir_key(directory),
            "name": name,
            "limit": self._ahead.size,
        }
        fetched = time.monotonic()
        try:
            rows = self._db.run(lambda conn: conn.all(query, params))
        except BaseException:
            self._ahead.cancel()
            raise
        batch = [(n, bytes(content)) for n, content in rows]
        self._ahead.fill(directory, batch, name, generation, fetched)
        return next((content for n, content in batch if n == name), None)

    def exists(self, path: str) -> bool:
        """Whether ``path`` is a file or a directory; the root always exists.

        Raises:
            ValueError: ``path`` is invalid.
            DatabaseError: the database failed.
        """
        path_n, fid, low = (self._keys.get(path) if type(path) is str else None) or self._key(path)
        if path_n == paths.ROOT:
            return True
        params = {"fid": fid, "ns": self._namespace, "low": low, "high": low + _AFTER_SEP}
        query = self._sql.exists
        db = self._db
        block = db.blocks.current()
        if block is None:  # the block looked up once (run would look again)
            row = db.run_outside(lambda conn: conn.first(query, params))
        else:
            row = db.first_in_block(block, query, params)
        return bool(row and row[0])

    def list(self, path: str) -> list[str]:
        """List a directory's direct children, or echo a file's path.

        Returns:
            ``[path]`` if ``path`` is a file; the directory's direct children sorted by
            name, each as ``posixpath.join(path, name)`` with a trailing ``/`` on
            subdirectories; ``[]`` if nothing exists at ``path``.

        Raises:
            ValueError: ``path`` is invalid.
            DatabaseError: the database failed after retries (transient failures are
                retried: the SDK treats any error here as an empty directory).
        """
        key = (self._keys.get(path) if type(path) is str else None) or self._key(path)
        path_n = key[0]
        children = self._db.run(lambda conn: self._list(conn, key))
        if children is None:
            return [path]
        if children:
            self._ahead.listed(path_n)
        # posixpath.join(path, name), spelled out: it runs once per child.
        prefix = path if not path or path.endswith("/") else path + "/"
        return [prefix + name for name in children]

    def _list(self, conn: PooledConnection, path_key: _Key) -> builtins.list[str] | None:
        """The directory's children by name, directories with a trailing ``/``.

        ``None`` if the path (of key ``path_key``, see :meth:`_key`) is a file.
        """
        ns = self._namespace
        sql = self._sql
        path_n, fid, key = path_key
        params: dict[str, Any]
        if path_n == paths.ROOT:
            params = {"ns": ns, "key": key, "low": paths.SEP}
            rows = conn.all(sql.list_root, params)
            probe = sql.next_subdir_root
        else:
            # strict_subdir_range, written out: [key + SEP, key + AFTER_SEP)
            params = {
                "ns": ns,
                "key": key,
                "low": key + paths.SEP,
                "high": key + paths.AFTER_SEP,
                "fid": fid,
            }
            rows = conn.all(sql.list_dir, params)
            probe = sql.next_subdir
        # Most directories hold files only: every row a file (kind 1), in name order.
        files: builtins.list[str] = [name for kind, name, _ in rows if kind == 1]
        if len(files) == len(rows):
            files.sort()  # already in order, almost always: a linear pass
            return files
        files = []
        subdir: bytes | None = None
        for kind, name, parent in rows:
            if kind == 1:
                files.append(name)
            elif kind == 2:
                return None
            else:
                subdir = bytes(parent)
        if subdir is None:
            files.sort()  # already in order, almost always: a linear pass
            return files
        # Skip from one child directory to the next: one index probe per directory,
        # however many files each holds.
        dirs: builtins.list[str] = []
        while subdir is not None:
            child = paths.child_dir_of(path_n, subdir)
            dirs.append(child)
            params["low"] = paths.after_child_dir(path_n, child)
            row = conn.first(probe, params)
            subdir = None if row is None else bytes(row[1])
        # A file and a directory never share a name: sort by name, then mark the dirs.
        marked = [(name, name) for name in files] + [(name, name + "/") for name in dirs]
        marked.sort()
        return [shown for _, shown in marked]

    def delete(self, path: str) -> None:
        """Delete a file, or a directory with everything below it; missing is a no-op.

        ``delete("")`` empties the namespace. A directory goes in one statement.

        Raises:
            ValueError: ``path`` is invalid.
            DatabaseError: the database failed.
        """
        path_n, fid, low = (self._keys.get(path) if type(path) is str else None) or self._key(path)
        sql = self._sql
        if path_n == paths.ROOT:
            params: dict[str, Any] = {"ns": self._namespace}
            delete = sql.delete_namespace
        else:
            params = {"ns": self._namespace, "fid": fid, "low": low, "high": low + _AFTER_SEP}
            delete = sql.delete_path
        db = self._db
        block = db.blocks.current()
        if block is not None:
            db.defer_in_block(block, (delete,), params, path, self._invalidate)
            return
        db.run_outside(lambda conn: conn.defer(delete, params, path))
        self._ahead.invalidate()

    def get_absolute_path(self, path: str) -> str:
        """A stable identifier for ``path``, e.g. ``sqlstore+postgresql://host/db/ns/path``.

        It names the database, namespace and path, never a password.

        Raises:
            ValueError: ``path`` is invalid.
        """
        path_n = paths.normalize(path)
        url = self._engine.url
        host = url.host or ""
        if url.port:
            host = f"{host}:{url.port}"
        ns = quote(self._namespace, safe="")
        return f"sqlstore+{url.get_backend_name()}://{host}/{url.database or ''}/{ns}/{path_n}"

    def lock(self, path: str, timeout: float = 30.0) -> AbstractContextManager[None]:
        """Hold an exclusive lock on ``path`` for the block; the block is a transaction.

        The lock excludes every other holder of the same (namespace, path) in any
        thread, process or host using the database; on SQLite it excludes every writer
        of the database file. Store calls the caller makes inside the block, through any
        store on the same engine, join one transaction: it commits when the block exits
        normally and rolls back if the block raises. The caller is the thread, and the
        asyncio task if one runs: another task's calls are never part of the block. A
        lock block inside another is a savepoint; its locks are held until the outermost
        block ends. Inside a block, a write or delete may report its error only when
        the block ends (the block then rolls back whole). What this returns is one block,
        entered once (as ``LocalFileStore``'s lock): call ``lock()`` again for another.

        Args:
            path: The path to lock; it need not exist, and nothing is written for it.
            timeout: Seconds the acquisition may take, waiting for a pooled connection
                and connecting included; 0 tries once; negative or ``inf`` waits as
                long as the database allows (about 24 days).

        Raises:
            LockTimeoutError: (a ``TimeoutError``) not acquired within ``timeout``
                seconds, or ``path`` is already locked by this caller.
            ValueError: ``path`` or ``timeout`` is invalid.
            RuntimeError: (on entering) the returned block was entered before.
            DatabaseError: the database failed; the block's writes are rolled back.
        """
        key = self._lock_keys.get(path) if type(path) is str else None
        if key is None:
            key = self._lock_key(paths.normalize(path))
            if len(self._lock_keys) >= _LOCK_KEYS_MAX:
                self._lock_keys.clear()
            self._lock_keys[path] = key
        plain = (type(timeout) is float or type(timeout) is int) and timeout == timeout
        if not plain and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout != timeout
        ):
            raise ValueError(f"timeout must be a number of seconds, not {timeout!r}")
        # As with the SDK's file locks, a negative timeout waits as long as it takes.
        # Its value is None: no query rides with the lock (no cast: this runs on every lock).
        return self._db.lock_block(key, timeout, path)  # type: ignore[return-value]

    def _lock_reading(
        self, path: str, timeout: float, read: str, *, release_late: bool = False
    ) -> AbstractContextManager[bytes | None]:
        """:meth:`lock`, whose block's value is the content of the file ``read``.

        The file is read right after the lock is taken, in the same round trip where the
        database allows (a fencing check costs nothing more than the lock). ``None``
        where there is no file at ``read``. ``release_late``: see
        :meth:`sqlstore.database.Database.lock_block`. Private: for
        :mod:`sqlstore.agent_server`'s fenced writes.
        """
        path_n = paths.normalize(path)
        params = {"ns": self._namespace, "fid": self._key(read)[1]}
        block = self._db.lock_block(
            self._lock_key(path_n),
            timeout,
            path,
            read=(self._sql.read, params),
            release_late=release_late,
        )
        return self._content_of(block, read)

    @contextmanager
    def _content_of(
        self, block: AbstractContextManager[Sequence[Any] | None], read: str
    ) -> Iterator[bytes | None]:
        with block as row:
            if row is None:
                yield None
                return
            content, chunk_count = row
            # A chunked file is read again whole, inside the block (one snapshot).
            yield self.read_bytes(read) if chunk_count else bytes(content)

    def flush(self) -> None:
        """Nothing to do: every call is written to the database before it returns."""

    def close(self) -> None:
        """Release the engine's connections if this store created the engine (``from_url``)."""
        if self._owns_engine:
            self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------

    def _is_dir(self, path_n: str) -> bool:
        low, high = paths.subtree_range(path_n)
        params = {"ns": self._namespace, "low": low, "high": high}
        query = self._sql.is_dir
        row = self._db.run(lambda conn: conn.first(query, params))
        return bool(row and row[0])


def _as_bytes(contents: object) -> bytes:
    if isinstance(contents, str):
        return contents.encode("utf-8")
    if isinstance(contents, bytes | bytearray | memoryview):
        return bytes(contents)
    raise TypeError(f"contents must be str or bytes, not {type(contents).__name__}")


def _split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]
