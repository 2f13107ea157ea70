"""Errors are recognised by their code and structure, never by the server's message text.

A server speaks the language its ``lc_messages`` names (many European installations
run MariaDB in German), and Citus reports a shard's error with the shard's table name:
a refusal must be the same refusal whatever the message says.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

import sqlstore
from sqlstore import SQLFileStore


@pytest.fixture
def german_store(migrated_url: URL) -> Iterator[SQLFileStore]:
    """A store whose every connection has the server answer in German (this session only)."""
    engine = sqlstore.create_engine(migrated_url)

    @sa.event.listens_for(engine, "connect")
    def speak_german(dbapi_connection: Any, record: object) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SET SESSION lc_messages = 'de_DE'")
        finally:
            cursor.close()

    yield SQLFileStore(engine, f"test-{uuid.uuid4().hex}")
    engine.dispose()


@pytest.mark.parametrize("backend", ["mysql"], indirect=True)
def test_refusals_are_recognised_on_a_server_that_speaks_german(
    german_store: SQLFileStore,
) -> None:
    store = german_store
    store.write("f", "a file")
    store.write("d/x", "in a directory")
    with pytest.raises(FileExistsError, match="'f/g'") as below:
        store.write("f/g", "below a file")
    # The server did answer in German: the driver's message is not what told them apart.
    assert "Feld" in str(below.value.__cause__), below.value.__cause__
    with pytest.raises(IsADirectoryError, match="'d'"):
        store.write("d", "over a directory")
    with pytest.raises(FileExistsError, match="'f/g'"), store.lock("l", timeout=5):
        store.write("f/g", "below a file, in a block")
    with pytest.raises(IsADirectoryError, match="'d'"), store.lock("l", timeout=5):
        store.write("d", "over a directory, in a block")
    with pytest.raises(FileExistsError):
        store.write("f/big", bytes(3 << 20))  # chunked: a transaction of its own
    assert store.list("") == ["d/", "f"]
    assert store.read("f") == "a file"
