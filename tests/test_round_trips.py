"""Round trips: what one SDK append costs on the wire, counted by a proxy, not timed.

One SDK append is ``EventLog.append`` (a lock block: check the length marker, write the
event, move the marker) and the ``base_state.json`` write that follows it. A proxy
between the store and the server counts the exchanges: each time the client sends
again after the server has answered, it waited for one round trip.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

import sqlstore
from sqlstore import SQLFileStore
from tests.proxy import Proxy, proxy_to

pytestmark = pytest.mark.timeout(120)

#: The most round trips one SDK append may cost.
LIMITS = {"postgresql": 4, "mysql": 5}


@pytest.fixture
def through_proxy(migrated_url: URL) -> Iterator[tuple[Proxy, sa.Engine]]:
    assert migrated_url.host is not None and migrated_url.port is not None
    with proxy_to(migrated_url.host, migrated_url.port) as proxy:
        engine = sqlstore.create_engine(migrated_url.set(port=proxy.port))
        yield proxy, engine
        engine.dispose()


def _append(log: object, store: SQLFileStore, n: int) -> None:
    from tests.sdk_helpers import message_event

    log.append(message_event(f"event {n}"))  # type: ignore[attr-defined]
    store.write("base_state.json", f'{{"events": {n + 1}}}')


@pytest.mark.parametrize("backend", ["postgresql", "mysql", "pgbouncer"], indirect=True)
def test_one_sdk_append_costs_few_round_trips(
    through_proxy: tuple[Proxy, sa.Engine], namespace: str, db_dialect: str
) -> None:
    from openhands.sdk.conversation.event_store import EventLog

    proxy, engine = through_proxy
    store = SQLFileStore(engine, namespace)
    log = EventLog(store, dir_path="events")
    # A warm connection: psycopg prepares a statement on the server the 5th time it
    # runs on a connection, which costs one more round trip, once.
    for n in range(6):
        _append(log, store, n)
    counts = []
    for n in range(6, 12):
        proxy.reset_count()
        _append(log, store, n)
        counts.append(proxy.exchanges)
    assert len(log) == 12
    assert store.list("events")[0] == "events/.eventlog-len-12.marker"
    print(f"\n{db_dialect}: round trips per SDK append {counts}")
    assert max(counts) <= LIMITS[db_dialect], counts


@pytest.mark.parametrize("backend", ["postgresql", "mysql", "pgbouncer"], indirect=True)
def test_writes_after_a_nested_block_are_still_sent_ahead(
    through_proxy: tuple[Proxy, sa.Engine], namespace: str
) -> None:
    proxy, engine = through_proxy
    store = SQLFileStore(engine, namespace)
    with store.lock("outer", timeout=5):
        store.write("before", "x")
        with store.lock("inner", timeout=5):
            store.write("inside", "x")
        proxy.reset_count()
        for i in range(5):
            store.write(f"after-{i}", "x")
        waited = proxy.exchanges
    assert waited <= 1, f"5 writes after a nested block waited for {waited} answers"
    assert len(store.list("")) == 7
