"""``SQLFileStore``: the OpenHands ``FileStore`` interface on any supported database.

This module names no database. Dialect differences live in :mod:`sqlstore.dialects`;
the SQL lives in :mod:`sqlstore.statements`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

from sqlalchemy import Engine
from sqlalchemy.engine import URL

from . import paths
from .engine import EngineState, LockBlock, create_engine, safe_url, state_for
from .errors import DatabaseError, FileTooLargeError, LockTimeoutError
from .readahead import ReadAhead
from .session import Session
from .statements import ancestor_names

T = TypeVar("T")

#: Attempts for a single statement outside a lock block that fails transiently.
RETRY_ATTEMPTS = 4
#: Seconds before the first retry; doubled for each further one.
RETRY_BACKOFF = 0.05


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
        self._state: EngineState = state_for(engine)
        self._strategy = self._state.strategy
        self._engine = self._state.engine
        self._sql = self._state.statements
        self._prepared = self._state.prepared
        self._owns_engine = False

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
        data = _as_bytes(contents)
        path_n = paths.normalize(path)
        if path_n == paths.ROOT:
            raise IsADirectoryError(f"cannot write to the root directory: {path!r}")
        limit = self._strategy.max_content_size
        if len(data) > limit:
            raise FileTooLargeError(
                f"{path!r}: {len(data)} bytes exceed the {self._engine.dialect.name} "
                f"limit of {limit} bytes; nothing was written"
            )
        ns = self._namespace
        parent, name = paths.split(path_n)
        low, high = paths.subtree_range(path_n)
        fid = paths.file_id(ns, path_n)
        ancestor_ids = [paths.file_id(ns, a) for a in paths.ancestors(path_n)]
        size = self._strategy.chunk_size
        pieces = [data] if size is None or len(data) <= size else _split(data, size)
        params: dict[str, Any] = {
            "fid": fid,
            "ns": ns,
            "key": paths.dir_key(parent),
            "name": name,
            "content": pieces[0],
            "size": len(data),
            "chunk_count": len(pieces) - 1,
            "low": low,
            "high": high,
        }
        params.update(zip(ancestor_names(len(ancestor_ids)), ancestor_ids, strict=True))
        write = self._prepared(self._sql.write(len(ancestor_ids)))

        def run(session: Session) -> int:
            if len(pieces) == 1:
                # One statement, also where contents may be chunked: readers use only
                # the chunks the row counts, so chunks a larger version left behind are
                # never read; the next chunked write or the delete removes them.
                return session.rowcount(write, params)
            with self._transaction(session):
                written = session.rowcount(write, params)
                session.rowcount(self._prepared(self._sql.delete_chunks), {"fid": fid})
                insert = self._prepared(self._sql.insert_chunk)
                for seq, piece in enumerate(pieces[1:] if written else [], start=1):
                    session.rowcount(insert, {"file_id": fid, "seq": seq, "data": piece})
                return written

        is_file = self._prepared(self._sql.is_file)

        def blocking_file(session: Session) -> bool:
            return any(session.first(is_file, {"fid": a}) for a in ancestor_ids)

        for _ in range(3):
            written = self._run(run)
            self._ahead.invalidate()
            if written:
                return
            # Nothing was written: find out which tree rule refused it.
            if self._run(blocking_file):
                raise FileExistsError(f"a parent directory of {path!r} is a file")
            if self._is_dir(path_n):
                raise IsADirectoryError(f"{path!r} is a directory")
            # Another writer removed the obstacle in between: try again.
        raise IsADirectoryError(f"{path!r} kept changing between a file and a directory")

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
        path_n = paths.normalize(path)
        if path_n == paths.ROOT:
            raise IsADirectoryError(f"{path!r} is the root directory")
        if self._ahead.enabled and self._state.lock_block is None:
            ahead = self._read_ahead(path_n)
            if ahead is not None:
                return ahead
        params = {"fid": paths.file_id(self._namespace, path_n)}
        read = self._prepared(self._sql.read)

        def run(session: Session) -> bytes | None:
            row = session.first(read, params)
            if row is None:
                return None
            content, chunk_count = row
            if not chunk_count:
                return bytes(content)
            # A chunked file: read the row and its chunks from one snapshot.
            with self._transaction(session, snapshot=True):
                row = session.first(read, params)
                if row is None:
                    return None
                chunk_params = {"fid": params["fid"], "count": row[1]}
                rest = session.all(self._prepared(self._sql.read_chunks), chunk_params)
            return b"".join([bytes(row[0]), *(bytes(chunk) for (chunk,) in rest)])

        data = self._run(run)
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
        query = self._prepared(self._sql.read_ahead_down if descending else self._sql.read_ahead_up)
        params = {
            "ns": self._namespace,
            "key": paths.dir_key(directory),
            "name": name,
            "limit": self._ahead.size,
        }
        fetched = time.monotonic()
        rows = self._run(lambda session: session.all(query, params))
        # Chunked files are left to the ordinary read, which reads them whole.
        batch = [(n, bytes(content)) for n, content, chunk_count in rows if not chunk_count]
        self._ahead.fill(directory, batch, name, generation, fetched)
        return next((content for n, content in batch if n == name), None)

    def exists(self, path: str) -> bool:
        """Whether ``path`` is a file or a directory; the root always exists.

        Raises:
            ValueError: ``path`` is invalid.
            DatabaseError: the database failed.
        """
        path_n = paths.normalize(path)
        if path_n == paths.ROOT:
            return True
        low, high = paths.subtree_range(path_n)
        params = {
            "fid": paths.file_id(self._namespace, path_n),
            "ns": self._namespace,
            "low": low,
            "high": high,
        }
        query = self._prepared(self._sql.exists)
        row = self._run(lambda session: session.first(query, params))
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
        path_n = paths.normalize(path)
        entries = self._run(lambda session: self._list(session, path_n))
        if entries is None:
            return [path]
        if entries:
            self._ahead.listed(path_n)
        # posixpath.join(path, name), spelled out: it runs once per child.
        prefix = path if not path or path.endswith("/") else path + "/"
        return [
            prefix + name + "/" if is_dir else prefix + name
            for name, is_dir in sorted(entries.items())
        ]

    def _list(self, session: Session, path_n: str) -> dict[str, bool] | None:
        """Map each child name to whether it is a directory; ``None`` if a file."""
        ns = self._namespace
        low, high = paths.strict_subdir_range(path_n)
        params: dict[str, Any] = {"ns": ns, "key": paths.dir_key(path_n), "low": low}
        if path_n == paths.ROOT:
            rows = session.all(self._prepared(self._sql.list_root), params)
            probe = self._prepared(self._sql.next_subdir_root)
        else:
            params.update(high=high, fid=paths.file_id(ns, path_n))
            rows = session.all(self._prepared(self._sql.list_dir), params)
            probe = self._prepared(self._sql.next_subdir)
        entries: dict[str, bool] = {}
        subdir: bytes | None = None
        for kind, name, parent in rows:
            if kind == 2:
                return None
            if kind == 1:
                entries[name] = False
            else:
                subdir = bytes(parent)
        # Skip from one child directory to the next: one index probe per directory,
        # however many files each holds.
        while subdir is not None:
            child = paths.child_dir_of(path_n, subdir)
            entries[child] = True
            params["low"] = paths.after_child_dir(path_n, child)
            row = session.first(probe, params)
            subdir = None if row is None else bytes(row[1])
        return entries

    def delete(self, path: str) -> None:
        """Delete a file, or a directory with everything below it; missing is a no-op.

        ``delete("")`` empties the namespace. A directory goes in one statement.

        Raises:
            ValueError: ``path`` is invalid.
            DatabaseError: the database failed.
        """
        path_n = paths.normalize(path)
        sql = self._sql
        if path_n == paths.ROOT:
            params: dict[str, Any] = {"ns": self._namespace}
            stmt, chunk_stmt = sql.delete_namespace, sql.delete_namespace_chunks
        else:
            low, high = paths.subtree_range(path_n)
            params = {
                "ns": self._namespace,
                "fid": paths.file_id(self._namespace, path_n),
                "low": low,
                "high": high,
            }
            stmt, chunk_stmt = sql.delete_path, sql.delete_path_chunks
        delete, delete_chunks = self._prepared(stmt), self._prepared(chunk_stmt)

        def run(session: Session) -> None:
            if self._strategy.chunk_size is None:
                session.rowcount(delete, params)
                return
            with self._transaction(session):
                session.rowcount(delete_chunks, params)
                session.rowcount(delete, params)

        self._run(run)
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

    @contextmanager
    def lock(self, path: str, timeout: float = 30.0) -> Iterator[None]:
        """Hold an exclusive lock on ``path`` for the block; the block is a transaction.

        The lock excludes every other holder of the same (namespace, path) in any
        thread, process or host using the database; on SQLite it excludes every writer
        of the database file. Store calls made by this thread inside the block, through
        any store on the same engine, join one transaction: it commits when the block
        exits normally and rolls back if the block raises. A lock block inside another
        is a savepoint; its locks are held until the outermost block ends.

        Args:
            path: The path to lock; it need not exist, and nothing is written for it.
            timeout: Seconds to wait for the lock; 0 tries once; negative or ``inf``
                waits as long as the database allows (about 24 days).

        Raises:
            LockTimeoutError: (a ``TimeoutError``) not acquired within ``timeout``
                seconds, or ``path`` is already locked by this thread.
            ValueError: ``path`` or ``timeout`` is invalid.
            DatabaseError: the database failed; the block's writes are rolled back.
        """
        path_n = paths.normalize(path)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout != timeout:
            raise ValueError(f"timeout must be a number of seconds, not {timeout!r}")
        # As with the SDK's file locks, a negative timeout waits as long as it takes.
        key = paths.lock_key(self._namespace, path_n)
        block = self._state.lock_block
        if block is None:
            with self._outer_block(key, timeout):
                yield
        else:
            if key in block.held:
                raise LockTimeoutError(f"{path!r} is already locked by this thread")
            with self._nested_block(block, key, timeout):
                yield

    @contextmanager
    def _outer_block(self, key: bytes, timeout: float) -> Iterator[None]:
        def begin(session: Session) -> Session:
            self._strategy.begin_locked(session, key, timeout)
            return session

        # Nothing has happened yet, so a connection that turns out dead (the server
        # restarted) is retried like any single statement.
        session = self._retrying(begin, keep_open=True)
        try:
            block = LockBlock(session, {key})
            self._state.lock_block = block
            try:
                yield
            except BaseException:
                self._state.lock_block = None
                self._end(session, commit=False, keys=block.held)
                raise
            self._state.lock_block = None
            self._end(session, commit=True, keys=block.held)
        finally:
            session.close()

    @contextmanager
    def _nested_block(self, block: LockBlock, key: bytes, timeout: float) -> Iterator[None]:
        session = block.session
        block.depth += 1
        savepoint = f"sqlstore_{block.depth}"

        def sql(statement: str) -> None:
            self._guard(session, lambda: session.sql(statement))

        try:
            # The lock is taken in a savepoint of its own, released at once: a failed
            # wait leaves the transaction usable (PostgreSQL aborts it otherwise), and a
            # taken lock belongs to the enclosing transaction, so rolling the block back
            # below does not release it before the outermost block ends.
            sql(f"SAVEPOINT {savepoint}")
            try:
                self._guard(session, lambda: self._strategy.acquire_nested(session, key, timeout))
            except BaseException:
                sql(f"ROLLBACK TO SAVEPOINT {savepoint}")
                raise
            sql(f"RELEASE SAVEPOINT {savepoint}")
            block.held.add(key)
            sql(f"SAVEPOINT {savepoint}")
            try:
                yield
            except BaseException:
                sql(f"ROLLBACK TO SAVEPOINT {savepoint}")
                raise
            sql(f"RELEASE SAVEPOINT {savepoint}")
        finally:
            block.depth -= 1

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
        query = self._prepared(self._sql.is_dir)
        row = self._run(lambda session: session.first(query, params))
        return bool(row and row[0])

    def _run(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in the thread's lock block, or on a pooled autocommit connection.

        Outside a lock block every call is idempotent, so a transient failure (a dropped
        connection, a serialization failure) is retried on a fresh connection with
        exponential backoff. Inside a lock block nothing is retried: the block's
        transaction is lost with its connection, so the error propagates and the block
        rolls back.
        """
        block = self._state.lock_block
        if block is not None:
            return self._guard(block.session, lambda: work(block.session))
        return self._retrying(work)

    def _retrying(self, work: Callable[[Session], T], *, keep_open: bool = False) -> T:
        """Run ``work`` on a fresh pooled connection, retrying transient failures."""
        delay = RETRY_BACKOFF
        for attempt in range(RETRY_ATTEMPTS):
            session = None
            try:
                session = self._state.checkout()
                self._state.check_schema(session)
                result = work(session)
                if not keep_open:
                    session.close()
                return result
            except self._state.dbapi_error as exc:
                if not (self._classify(exc, session) and attempt + 1 < RETRY_ATTEMPTS):
                    raise self._translate(exc) from exc
            except BaseException:
                if session is not None:
                    session.close()
                raise
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    def _classify(self, exc: BaseException, session: Session | None) -> bool:
        """Give back or discard the session after ``exc``; whether a retry may help."""
        disconnect = self._state.is_disconnect(exc, session)
        if session is not None:
            if disconnect:
                session.invalidate(exc)
            else:
                session.close()
        return disconnect or self._strategy.is_transient(exc)

    def _guard(self, session: Session, step: Callable[[], T]) -> T:
        """Run one step on a lock block's connection, converting driver errors."""
        try:
            return step()
        except self._state.dbapi_error as exc:
            raise self._translate(exc) from exc

    @contextmanager
    def _transaction(self, session: Session, *, snapshot: bool = False) -> Iterator[None]:
        """A transaction for multi-statement work; inside a lock block, nothing to add."""
        block = self._state.lock_block
        if block is not None and block.session is session:
            yield  # already atomic: the lock block commits or rolls back as a whole
            return
        self._strategy.begin(session, snapshot=snapshot)
        try:
            yield
        except BaseException:
            self._end(session, commit=False)
            raise
        self._end(session, commit=True)

    def _end(self, session: Session, *, commit: bool, keys: set[bytes] | None = None) -> None:
        try:
            self._strategy.end(session, commit=commit, keys=keys or ())
        except BaseException as exc:
            # The transaction's fate is unknown and session locks may still be held:
            # never hand this connection to anyone else.
            session.invalidate(exc)
            if isinstance(exc, self._state.dbapi_error):
                raise self._translate(exc) from exc
            raise

    def _translate(self, exc: BaseException) -> Exception:
        """The sqlstore exception for a driver error (the one place errors are converted)."""
        if self._strategy.is_busy(exc):
            return LockTimeoutError(f"lock wait timed out on {self._engine.dialect.name}: {exc}")
        return DatabaseError(
            f"{self._engine.dialect.name} error on {safe_url(self._engine.url)}: "
            f"{type(exc).__name__}: {exc}"
        )


def _as_bytes(contents: object) -> bytes:
    if isinstance(contents, str):
        return contents.encode("utf-8")
    if isinstance(contents, bytes | bytearray | memoryview):
        return bytes(contents)
    raise TypeError(f"contents must be str or bytes, not {type(contents).__name__}")


def _split(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]
