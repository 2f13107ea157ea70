"""The exceptions sqlstore raises.

Every error sqlstore raises on its own account derives from :class:`SQLStoreError`.
Where a builtin exception already names the situation (``TimeoutError``, ``OSError``),
the sqlstore error inherits it too, so callers written against the OpenHands
``FileStore`` interface catch it without knowing about sqlstore. Driver and SQLAlchemy
errors never reach a caller: :mod:`sqlstore.database` converts them, keeping the
original as ``__cause__``.
"""

from __future__ import annotations

__all__ = [
    "CommitUnknownError",
    "DatabaseError",
    "DatabaseTimeoutError",
    "DriverNotInstalledError",
    "FileTooLargeError",
    "LockTimeoutError",
    "SQLStoreError",
    "SchemaError",
    "UnsupportedDialectError",
]


class SQLStoreError(Exception):
    """Base class of every sqlstore error."""


class LockTimeoutError(SQLStoreError, TimeoutError):
    """A lock was not acquired within its timeout, or was requested again by its holder.

    The timeout covers the whole acquisition: waiting for a pooled connection, connecting,
    and waiting for the lock in the database.
    """


class DatabaseError(SQLStoreError, OSError):
    """The database failed, and retrying (where allowed) did not help.

    The driver's exception is attached as ``__cause__``.
    """


class DatabaseTimeoutError(DatabaseError, TimeoutError):
    """The database did not answer in time, or no pooled connection became free in time.

    Raised when connecting takes longer than ``connect_timeout``, a statement's answer
    longer than ``read_timeout`` (see :func:`sqlstore.create_engine`), or the pool's
    ``pool_timeout`` passes with every connection in use. Not retried: the server was
    given its time.

    Raised for a lock block only when the block did not commit: if its ``COMMIT`` went
    unanswered, sqlstore first finds out whether it landed (PostgreSQL), and returns
    normally if it did, or raises :class:`CommitUnknownError` if that cannot be told.
    """


class CommitUnknownError(DatabaseError):
    """A lock block's ``COMMIT`` went unanswered and whether it committed cannot be told.

    Raised where the database cannot say (MySQL/MariaDB), or where asking failed (the
    server unreachable, or the transaction's fate still open after the wait). The
    block's writes may or may not be stored: read them back before writing them again.
    Not a ``TimeoutError``: the caller must not treat it as "nothing happened".
    """


class SchemaError(SQLStoreError):
    """The database has no sqlstore schema, or one at another revision than this code needs."""


class FileTooLargeError(SQLStoreError, OSError):
    """The content is larger than the database dialect can store; nothing was written."""


class UnsupportedDialectError(SQLStoreError, ValueError):
    """The URL or engine names a database or driver sqlstore does not work with.

    The message names the URL to write instead (``postgresql+psycopg://``,
    ``sqlite:///``, ``mysql+pymysql://``) and the extra that installs its driver.
    """


class DriverNotInstalledError(UnsupportedDialectError, ImportError):
    """The URL's driver is not installed; the message names the sqlstore extra to install."""
