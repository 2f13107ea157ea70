"""Tests of ``transcript.py`` on the fixtures of sqlstore's pytest plugin.

``uv run pytest examples/testing_your_app`` runs them on a temporary SQLite file; one
option runs them on a server instead, in a database made for the session and dropped
after it::

    uv run pytest examples/testing_your_app --sqlstore-url postgresql+psycopg://postgres@127.0.0.1/test
    SQLSTORE_TEST_URL=mysql+pymysql://root@127.0.0.1/test uv run pytest examples/testing_your_app
"""

from __future__ import annotations

import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import URL
from transcript import append, transcript

from sqlstore import SQLFileStore


def test_messages_come_back_in_order(sqlstore_store: SQLFileStore) -> None:
    """``sqlstore_store`` is a migrated, empty store of the test's own."""
    assert append(sqlstore_store, "user", "hi") == 0
    assert append(sqlstore_store, "agent", "hello") == 1
    assert transcript(sqlstore_store) == [("user", "hi"), ("agent", "hello")]


def test_each_test_starts_empty(sqlstore_store: SQLFileStore) -> None:
    """The messages of the test above are in another namespace."""
    assert transcript(sqlstore_store) == []


def test_another_store_sees_the_messages(sqlstore_engine: Engine, sqlstore_namespace: str) -> None:
    """Stores on the session's engine share the database, as an application's do."""
    append(SQLFileStore(sqlstore_engine, sqlstore_namespace), "user", "still there?")
    again = SQLFileStore(sqlstore_engine, sqlstore_namespace)
    assert transcript(again) == [("user", "still there?")]


def test_an_application_that_takes_a_url(sqlstore_url: URL, sqlstore_namespace: str) -> None:
    """``sqlstore_url`` is for code that makes its own engine."""
    if sqlstore_url.database in (None, "", ":memory:"):
        pytest.skip("sqlite:// in memory: the database lives in sqlstore_engine only")
    with SQLFileStore.from_url(sqlstore_url, sqlstore_namespace) as store:
        append(store, "user", "hi")
        assert transcript(store) == [("user", "hi")]
