"""Round trips: what one SDK append costs on the wire, counted by a proxy, not timed.

One SDK append is ``EventLog.append`` (a lock block: check the length marker, write the
event, move the marker) and the ``base_state.json`` write that follows it. A proxy
between the store and the server counts the exchanges: each time the client sends
again after the server has answered, it waited for one round trip.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

import sqlstore
from sqlstore import SQLFileStore
from tests.proxy import Proxy, proxy_to

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.timeout(120)

#: The most round trips one SDK append may cost.
LIMITS = {"postgresql": 4, "mysql": 5}
#: The most round trips one append through the agent server's write path may cost.
SERVER_LIMITS = {"postgresql": 6, "mysql": 6}


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


def _server_state(engine: sa.Engine, tmp_path: Path) -> tuple[Any, SQLFileStore]:
    """A conversation as the agent server keeps it: its state, fenced by our lease."""
    import uuid

    from openhands.sdk import LLM, Agent
    from openhands.sdk.conversation.state import ConversationState
    from openhands.sdk.utils.cipher import Cipher
    from openhands.sdk.workspace import LocalWorkspace
    from pydantic import SecretStr

    from sqlstore.agent_server.ownership import Replicas, lease_class

    conversation_id = uuid.uuid4()
    store = SQLFileStore(engine, conversation_id.hex)
    llm = LLM(model="openai/test", api_key=SecretStr("k"), usage_id="agent")
    state = ConversationState.create(
        id=conversation_id,
        agent=Agent(llm=llm, tools=[]),
        workspace=LocalWorkspace(working_dir=str(tmp_path / "workspace")),
        cipher=Cipher("test key"),
        file_store=store,
    )
    lease = lease_class(Replicas(engine))(
        conversation_dir=tmp_path / "conversations" / conversation_id.hex,
        owner_instance_id="replica-a",
    )
    generation = lease.claim().generation
    state.set_write_guard(lambda: lease.guarded_write(generation))
    return state, store


@pytest.mark.parametrize("backend", ["postgresql", "mysql", "pgbouncer"], indirect=True)
def test_one_server_append_costs_few_round_trips(
    through_proxy: tuple[Proxy, sa.Engine], db_dialect: str, tmp_path: Path
) -> None:
    """``ConversationState.append_event`` under the lease, as the server records an event."""
    from tests.sdk_helpers import message_event

    proxy, engine = through_proxy
    state, store = _server_state(engine, tmp_path)
    for n in range(6):  # a warm connection (see above)
        state.append_event(message_event(f"event {n}"))
    counts = []
    for n in range(6, 12):
        proxy.reset_count()
        state.append_event(message_event(f"event {n}"))
        counts.append(proxy.exchanges)
    assert len(state.events) == 12
    assert store.list("events")[0] == "events/.eventlog-len-12.marker"
    print(f"\n{db_dialect}: round trips per server append {counts}")
    # On the total: psycopg follows the Sync that ends a pipeline with a Flush it waits
    # for no answer to; arriving after the server's answer, it is now and then counted
    # as an exchange of its own, and the next append's first one is then not counted.
    assert sum(counts) <= SERVER_LIMITS[db_dialect] * len(counts), counts
