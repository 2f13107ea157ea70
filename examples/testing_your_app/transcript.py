"""A tiny application that keeps a chat transcript in sqlstore: the code under test.

``append`` numbers each message under a lock, so several processes sharing the
database never give two messages the same number; ``transcript`` reads them back.
"""

from __future__ import annotations

import json

from sqlstore import SQLFileStore

LOCK = "messages/.lock"


def append(store: SQLFileStore, author: str, text: str) -> int:
    """Append a message to the transcript.

    Returns:
        The message's number: 0 for the first, then 1, 2, ...
    """
    with store.lock(LOCK, timeout=10):  # a transaction: the count and the write agree
        number = len(store.list("messages"))
        store.write(f"messages/{number:06d}.json", json.dumps({"author": author, "text": text}))
    return number


def transcript(store: SQLFileStore) -> list[tuple[str, str]]:
    """Every message in order, as ``(author, text)``."""
    messages = (json.loads(store.read(path)) for path in store.list("messages"))
    return [(message["author"], message["text"]) for message in messages]
