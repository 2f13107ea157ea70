"""Conversation ownership for the agent server, in one process, on every database.

Two "replicas" here are two :class:`Replicas` with different owner ids on one engine;
a replica that stops beating (its thread never started) plays a dead or frozen one.
The end-to-end behaviour with real server processes is in ``test_agent_server.py``.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from openhands.agent_server.conversation_lease import ConversationOwnershipLostError
from openhands.sdk.conversation.event_store import EventLog

import sqlstore
from sqlstore.agent_server.ownership import (
    OwnerRecord,
    Replicas,
    SQLConversationLease,
    lease_class,
    owned_elsewhere_error,
)
from tests.sdk_helpers import message_event

INTERVAL = 0.1
DEAD_AFTER = 0.4


def _lease(replicas: Replicas, conversation: Path, owner: str) -> SQLConversationLease:
    return lease_class(replicas)(conversation_dir=conversation, owner_instance_id=owner)


@pytest.fixture
def conversation(tmp_path: Path) -> Path:
    """A server conversation directory (only its name matters: the namespace)."""
    return tmp_path / "conversations" / uuid.uuid4().hex


@pytest.fixture
def replicas(engine: sa.Engine) -> tuple[Replicas, Replicas]:
    return Replicas(engine, INTERVAL, DEAD_AFTER), Replicas(engine, INTERVAL, DEAD_AFTER)


def _claim_when_dead(lease: SQLConversationLease, timeout: float = 5.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return lease.claim()
        except ConversationOwnershipLostError:
            if time.monotonic() > deadline:
                raise
            time.sleep(INTERVAL / 2)


def test_a_conversation_owned_by_a_live_replica_is_refused_to_another(
    engine: sa.Engine, conversation: Path
) -> None:
    # Liveness here must survive the suite's load: a heartbeat that a busy 2-core
    # machine delays past dead_after is a dead replica by definition, so this test
    # gives the heartbeat thread a margin the short-lived tests do not need.
    dead_after = 2.0
    first, second = (Replicas(engine, INTERVAL, dead_after) for _ in range(2))
    a = _lease(first, conversation, "replica-a")
    b = _lease(second, conversation, "replica-b")
    first.start()  # A beats
    try:
        claim = a.claim()
        assert (claim.generation, claim.takeover) == (1, False)
        deadline = time.monotonic() + 1.5 * dead_after
        while time.monotonic() < deadline:  # longer than dead_after: still refused
            with pytest.raises(owned_elsewhere_error(), match="owned by the live replica"):
                b.claim()
            time.sleep(INTERVAL)
        assert OwnerRecord.read(a.store) == OwnerRecord("replica-a", 1)
        again = a.claim()  # the owner's own claim keeps its generation
        assert (again.generation, again.takeover) == (1, False)
    finally:
        first.stop()


def test_a_dead_owner_is_taken_over_and_its_fenced_writes_are_refused(
    replicas: tuple[Replicas, Replicas], conversation: Path
) -> None:
    first, second = replicas
    a = _lease(first, conversation, "replica-a")
    b = _lease(second, conversation, "replica-b")
    assert a.claim().generation == 1  # one heartbeat, then A never beats again
    with a.guarded_write(1):
        a.store.write("base_state.json", "written by A")

    started = time.monotonic()
    claim = _claim_when_dead(b)
    waited = time.monotonic() - started
    assert (claim.generation, claim.takeover) == (2, True)  # type: ignore[attr-defined]
    assert DEAD_AFTER <= waited < DEAD_AFTER + 1.0

    with pytest.raises(ConversationOwnershipLostError), a.guarded_write(1):
        a.store.write("base_state.json", "late write of A")
    assert a.lost
    assert a.store.read("base_state.json") == "written by A"
    with b.guarded_write(2):
        b.store.write("base_state.json", "written by B")
    assert b.store.read("base_state.json") == "written by B"
    assert OwnerRecord.read(b.store) == OwnerRecord("replica-b", 2)


def test_a_refused_append_leaves_the_event_log_as_it_was(
    replicas: tuple[Replicas, Replicas], conversation: Path
) -> None:
    """The guard runs inside the event log's lock block: the whole append rolls back."""
    first, second = replicas
    a = _lease(first, conversation, "replica-a")
    b = _lease(second, conversation, "replica-b")
    a.claim()
    log = EventLog(a.store, dir_path="events")  # type: ignore[arg-type]
    log.set_write_guard(lambda: a.guarded_write(1))
    log.append(message_event("kept"))
    before = a.store.list("events")
    _claim_when_dead(b)

    with pytest.raises(ConversationOwnershipLostError):
        log.append(message_event("refused"))
    assert a.store.list("events") == before
    fresh = EventLog(b.store, dir_path="events")  # type: ignore[arg-type]
    assert len(fresh) == 1


def test_a_released_conversation_is_claimed_at_once_with_a_new_generation(
    replicas: tuple[Replicas, Replicas], conversation: Path
) -> None:
    first, second = replicas
    a = _lease(first, conversation, "replica-a")
    b = _lease(second, conversation, "replica-b")
    first.start()
    try:
        a.claim()
        a.release(1)
        claim = b.claim()  # A is alive, but gave it up
        assert (claim.generation, claim.takeover) == (2, False)
        a.release(1)  # no longer A's: nothing happens
        assert OwnerRecord.read(b.store) == OwnerRecord("replica-b", 2)
    finally:
        first.stop()


def test_a_cleanly_stopped_replica_leaves_no_heartbeat_and_loses_its_conversations_at_once(
    replicas: tuple[Replicas, Replicas], conversation: Path, engine: sa.Engine
) -> None:
    first, second = replicas
    a = _lease(first, conversation, "replica-a")
    b = _lease(second, conversation, "replica-b")
    first.start()
    a.claim()
    heartbeats = sqlstore.SQLFileStore(engine, "sqlstore-agent-server-replicas")
    assert "replicas/replica-a.json" in heartbeats.list("replicas")
    first.stop()  # e.g. the server shut down without releasing
    assert "replicas/replica-a.json" not in heartbeats.list("replicas")
    claim = b.claim()
    assert (claim.generation, claim.takeover) == (2, True)


def test_replicas_refuse_a_dead_after_shorter_than_two_heartbeats(engine: sa.Engine) -> None:
    with pytest.raises(ValueError, match="at least twice"):
        Replicas(engine, interval=1.0, dead_after=1.5)
