"""Database URLs: the ones sqlstore works with, and the fix for the ones it does not.

sqlstore runs on three drivers: psycopg 3 for PostgreSQL, the standard library's
``sqlite3`` for SQLite and PyMySQL for MySQL/MariaDB. A URL that names no driver gets
SQLAlchemy's default, another driver (psycopg2 for ``postgresql://``, mysqlclient for
``mysql://``), and would fail later with a bare ``No module named ...``.
:func:`check_url` fails at once instead, naming the URL to write and the extra to
install.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from sqlalchemy.engine import URL, make_url

from .errors import DriverNotInstalledError, UnsupportedDialectError

__all__ = ["check_url"]


@dataclass(frozen=True)
class _Driver:
    """The one driver sqlstore uses for a database."""

    database: str  # as people name it
    drivername: str  # the URL scheme to write
    driver: str  # the driver part of that scheme, as SQLAlchemy names it
    label: str  # the driver, as people name it
    module: str  # what to import
    extra: str | None  # the sqlstore extra that installs it (None: the standard library)


_DRIVERS = {
    "postgresql": _Driver(
        "PostgreSQL", "postgresql+psycopg", "psycopg", "psycopg 3", "psycopg", "postgresql"
    ),
    "sqlite": _Driver(
        "SQLite", "sqlite", "pysqlite", "the standard library's sqlite3", "sqlite3", None
    ),
    "mysql": _Driver("MySQL", "mysql+pymysql", "pymysql", "PyMySQL", "pymysql", "mysql"),
    "mariadb": _Driver("MariaDB", "mariadb+pymysql", "pymysql", "PyMySQL", "pymysql", "mysql"),
}
#: What SQLAlchemy loads when a URL names no driver, where that is not sqlstore's.
_DEFAULT_DRIVERS = {
    "postgresql": "psycopg2",
    "mysql": "mysqlclient (MySQLdb)",
    "mariadb": "mysqlclient (MySQLdb)",
}
#: Names people write for a database that SQLAlchemy spells otherwise.
_MISSPELT = {"postgres": "postgresql", "pgsql": "postgresql", "sqlite3": "sqlite"}


def check_url(url: str | URL) -> URL:
    """Parse ``url`` and check that sqlstore can work with it.

    Args:
        url: A SQLAlchemy URL: ``postgresql+psycopg://user@host/db``,
            ``sqlite:///path.db`` (``sqlite://`` in memory) or
            ``mysql+pymysql://user@host/db`` (``mariadb+pymysql://`` too).

    Returns:
        The parsed URL, unchanged.

    Raises:
        UnsupportedDialectError: the URL names another database, another driver or
            none (SQLAlchemy's default driver is not sqlstore's); the message names the
            URL to write instead.
        DriverNotInstalledError: the driver cannot be imported; the message names the
            extra to install (an ``ImportError`` too).
        sqlalchemy.exc.ArgumentError: ``url`` is not a URL at all.
    """
    parsed = make_url(url)
    backend, _, driver = parsed.drivername.partition("+")
    if backend in _MISSPELT:
        wanted = _DRIVERS[_MISSPELT[backend]]
        raise UnsupportedDialectError(
            f"{_show(parsed)}: SQLAlchemy knows no database named {backend!r}; did you mean "
            f"{_show(parsed.set(drivername=wanted.drivername))}?{_install(wanted)}"
        )
    found = _DRIVERS.get(backend)
    if found is None:
        supported = ", ".join(
            "sqlite:///" if d.drivername == "sqlite" else f"{d.drivername}://"
            for d in _DRIVERS.values()
        )
        raise UnsupportedDialectError(
            f"sqlstore does not support the {backend!r} database ({_show(parsed)}); "
            f"it works with {supported} URLs"
        )
    if driver not in ("", found.driver) or (not driver and backend in _DEFAULT_DRIVERS):
        used = f"the {driver} driver" if driver else "no driver"
        if not driver:
            used += f", so SQLAlchemy would load {_DEFAULT_DRIVERS[backend]}"
        raise UnsupportedDialectError(
            f"{_show(parsed)} names {used}; sqlstore reaches {found.database} through "
            f"{found.label}: write {_show(parsed.set(drivername=found.drivername))}"
            f"{_install(found)}"
        )
    try:
        importlib.import_module(found.module)
    except ImportError as exc:
        fix = (
            "this Python was built without it"
            if found.extra is None
            else f"install sqlstore with its '{found.extra}' extra, which brings it"
        )
        raise DriverNotInstalledError(
            f"{found.database}'s driver {found.label} cannot be imported ({exc}); {fix}"
        ) from exc
    return parsed


def _show(url: URL) -> str:
    return url.render_as_string(hide_password=True)


def _install(driver: _Driver) -> str:
    """How to install ``driver``, as the end of a message (nothing for the stdlib's)."""
    if driver.extra is None:
        return ""
    return f" (install sqlstore with its '{driver.extra}' extra for the driver)"
