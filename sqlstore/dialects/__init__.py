"""Dialect strategies, one module per database, looked up by ``engine.dialect.name``."""

from __future__ import annotations

from typing import Any

from ..errors import UnsupportedDialectError
from .base import DialectStrategy
from .mysql import MySQLStrategy
from .postgresql import PostgreSQLStrategy
from .sqlite import SQLiteStrategy

_STRATEGIES: dict[str, type[DialectStrategy]] = {
    name: cls for cls in (PostgreSQLStrategy, SQLiteStrategy, MySQLStrategy) for name in cls.names
}


def strategy_for(dialect_name: str, **options: Any) -> DialectStrategy:
    """The strategy for a SQLAlchemy dialect name.

    Args:
        dialect_name: ``engine.dialect.name`` or a URL's backend name.
        **options: :func:`sqlstore.create_engine`'s dialect options (``sqlite_*``);
            each strategy takes those that are its own.

    Raises:
        UnsupportedDialectError: no strategy serves ``dialect_name``.
        ValueError: an option's value is invalid.
    """
    try:
        cls = _STRATEGIES[dialect_name]
    except KeyError:
        supported = ", ".join(sorted(_STRATEGIES))
        raise UnsupportedDialectError(
            f"sqlstore does not support the {dialect_name!r} dialect (supported: {supported})"
        ) from None
    return cls.from_options(**options)


__all__ = ["DialectStrategy", "strategy_for"]
