"""URLs sqlstore cannot work with fail at once, naming the URL to write and the extra to install."""

from __future__ import annotations

import sys

import pytest
import sqlalchemy as sa

import sqlstore
from sqlstore.urls import check_url

PASSWORD = "Sup3r-s3cret-pw"

# (URL given, what the message must name), the fix first.
WRONG = [
    ("mysql://root@db/agents", ["mysql+pymysql://root@db/agents", "'mysql' extra", "MySQLdb"]),
    ("mariadb://root@db/agents", ["mariadb+pymysql://root@db/agents", "'mysql' extra"]),
    ("mysql+mysqldb://root@db/agents", ["mysql+pymysql://root@db/agents", "'mysql' extra"]),
    (
        "postgresql://app@db/agents",
        ["postgresql+psycopg://app@db/agents", "'postgresql' extra", "psycopg2"],
    ),
    (
        "postgresql+psycopg2://app@db/agents",
        ["postgresql+psycopg://app@db/agents", "'postgresql' extra", "psycopg2"],
    ),
    (
        "postgresql+asyncpg://app@db/agents",
        ["postgresql+psycopg://app@db/agents", "'postgresql' extra"],
    ),
    (
        "postgres://app@db/agents",
        ["did you mean postgresql+psycopg://app@db/agents?", "'postgresql' extra"],
    ),
    ("sqlite3:///conversations.db", ["did you mean sqlite:///conversations.db?"]),
    ("sqlite+aiosqlite:///conversations.db", ["write sqlite:///conversations.db"]),
    ("oracle://app@db/agents", ["does not support the 'oracle' database", "mysql+pymysql://"]),
]


@pytest.mark.parametrize(("url", "fragments"), WRONG)
def test_a_wrong_url_names_the_fix(url: str, fragments: list[str]) -> None:
    with pytest.raises(sqlstore.UnsupportedDialectError) as info:
        check_url(url)
    assert isinstance(info.value, ValueError)
    assert not isinstance(info.value, sqlstore.DriverNotInstalledError)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize(("url", "fragments"), WRONG)
def test_create_engine_refuses_a_wrong_url_before_any_import(
    url: str, fragments: list[str]
) -> None:
    with pytest.raises(sqlstore.UnsupportedDialectError) as info:
        sqlstore.create_engine(url)
    assert fragments[0] in str(info.value)


def test_the_password_is_never_in_the_message() -> None:
    for url in (
        f"postgres://app:{PASSWORD}@db/agents",
        f"mysql://root:{PASSWORD}@db/agents",
        f"oracle://app:{PASSWORD}@db/agents",
    ):
        with pytest.raises(sqlstore.UnsupportedDialectError) as info:
            check_url(url)
        assert PASSWORD not in str(info.value)
        assert ":***@db/agents" in str(info.value)


@pytest.mark.parametrize(
    ("url", "module", "extra"),
    [
        ("postgresql+psycopg://app@db/agents", "psycopg", "'postgresql' extra"),
        ("mysql+pymysql://root@db/agents", "pymysql", "'mysql' extra"),
        ("mariadb+pymysql://root@db/agents", "pymysql", "'mysql' extra"),
    ],
)
def test_a_missing_driver_names_the_extra(
    url: str, module: str, extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # what `import` finds when it is absent
    with pytest.raises(sqlstore.DriverNotInstalledError) as info:
        check_url(url)
    assert isinstance(info.value, ImportError)  # as SQLAlchemy's own error was
    assert isinstance(info.value, sqlstore.UnsupportedDialectError)
    assert f"its {extra}" in str(info.value)
    assert isinstance(info.value.__cause__, ImportError)
    with pytest.raises(sqlstore.DriverNotInstalledError):
        sqlstore.create_engine(url)


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://",
        "sqlite:///conversations.db",
        "sqlite+pysqlite:///conversations.db",
        "postgresql+psycopg://app:pw@db:5433/agents?prepare_threshold=none",
        "mysql+pymysql://root@db/agents",
        "mariadb+pymysql://root@db/agents",
    ],
)
def test_the_urls_sqlstore_works_with_pass_unchanged(url: str) -> None:
    checked = check_url(url)
    assert checked == sa.make_url(url)
    assert check_url(checked) == checked  # a URL object as well as a string
    engine = sqlstore.create_engine(url)  # no connection is opened
    engine.dispose()
