"""sqlstore: the OpenHands SDK's ``FileStore`` on PostgreSQL, SQLite and MySQL/MariaDB.

Example:
    >>> import sqlstore
    >>> sqlstore.migrate("sqlite:///conversations.db")
    >>> with sqlstore.SQLFileStore.from_url("sqlite:///conversations.db", "conv-1") as store:
    ...     store.write("events/event-00000-a.json", "{}")
    ...     store.list("events")
    ['events/event-00000-a.json']
"""

from __future__ import annotations

from . import _sdk
from .engine import create_engine
from .errors import (
    CommitUnknownError,
    DatabaseError,
    DatabaseTimeoutError,
    DriverNotInstalledError,
    FileTooLargeError,
    LockTimeoutError,
    SchemaError,
    SQLStoreError,
    UnsupportedDialectError,
)
from .migrations import migrate
from .store import SQLFileStore

_sdk.register(SQLFileStore)

__version__ = "0.1.0"

__all__ = [
    "CommitUnknownError",
    "DatabaseError",
    "DatabaseTimeoutError",
    "DriverNotInstalledError",
    "FileTooLargeError",
    "LockTimeoutError",
    "SQLFileStore",
    "SQLStoreError",
    "SchemaError",
    "UnsupportedDialectError",
    "__version__",
    "create_engine",
    "migrate",
]
