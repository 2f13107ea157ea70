"""Which replica owns a conversation, and how fast a dead owner's conversations move.

The stock server keeps an ``owner_lease.json`` beside each conversation, renewed every
15 s and valid for 45 s, so a killed owner blocks its conversations for up to 45 s.
Here liveness is per replica, not per conversation:

* Each running server writes a **heartbeat** (a counter) every ``interval`` seconds,
  one file per replica in the namespace :data:`~.layout.REPLICAS_NAMESPACE`: one
  write per replica per interval however many conversations it owns.
* Another replica judges the owner dead when its heartbeat has not changed for
  ``dead_after`` seconds **of the observer's own monotonic clock**: no replica's wall
  clock is trusted, and a replica that has not watched long enough assumes the owner
  alive. A heartbeat that is gone means a replica that stopped cleanly.
* The **owner record** (:data:`~.layout.OWNER`) in the conversation's namespace names
  the owner and a generation that grows with every change of owner. A claim and every
  fenced write take the same lock (:data:`~.layout.OWNER_LOCK`), and a lock block is
  a transaction: the write checks the record and lands in the same transaction, so a
  takeover and a write serialise, and a former owner (say, a process that was frozen
  and wakes up) is refused with nothing of its write applied.
"""

from __future__ import annotations

import contextvars
import functools
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from ..errors import LockTimeoutError
from ..store import SQLFileStore
from . import _queries
from .layout import OWNER, OWNER_LOCK, REPLICAS_DIR, REPLICAS_NAMESPACE, conversation_of

logger = logging.getLogger(__name__)

#: Seconds between two heartbeats of a replica.
HEARTBEAT_INTERVAL = 1.0
#: Seconds without a heartbeat after which another replica takes a replica for dead.
DEAD_AFTER = 3.0
#: Seconds a claim waits for the owner lock (held only for one write at a time).
CLAIM_TIMEOUT = 5.0
#: Seconds a fenced write waits for the owner lock.
GUARD_TIMEOUT = 30.0

#: Set where the stock server treats a conversation another live server holds as "not
#: loaded here" (recovery at start-up, a create naming an existing conversation): the
#: claim then raises the stock ``ConversationLeaseHeldError``, which the server skips
#: quietly, instead of the 409 a write gets.
not_loaded_when_owned: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "sqlstore_agent_server_not_loaded_when_owned", default=False
)


@functools.cache
def owned_elsewhere_error() -> type[Exception]:
    """The error a write to a conversation owned by another live replica raises (409)."""
    from openhands.agent_server.conversation_lease import ConversationOwnershipLostError

    class ConversationOwnedElsewhereError(ConversationOwnershipLostError):  # type: ignore[misc]
        """A write reached a replica that does not own the conversation.

        A ``ConversationOwnershipLostError``, so the server answers it with its own
        409 ("Conversation is owned by another agent server instance; the write was
        refused").
        """

        def __init__(self, *, conversation_dir: Path, owner_instance_id: str) -> None:
            super().__init__(
                conversation_dir=conversation_dir, owner_instance_id=owner_instance_id, generation=0
            )
            self.args = (
                f"conversation {conversation_dir.name} is owned by the live replica "
                f"{owner_instance_id}; send writes there, or retry once it stops",
            )

    return ConversationOwnedElsewhereError


class Replicas:
    """This process's heartbeats, and its view of every replica's heartbeat.

    One daemon thread writes a heartbeat for each owner id this process uses (the
    server's ``owner_instance_id``; normally one) and reads all heartbeats in one query.

    Args:
        engine: The database.
        interval: Seconds between heartbeats (and between observations).
        dead_after: Seconds without a change of heartbeat, on this process's monotonic
            clock, after which a replica is taken for dead. At least twice ``interval``.
        url: The URL other replicas reach this one on (written into its heartbeats),
            or ``None`` when it is not reachable (nothing is forwarded to it).
    """

    def __init__(
        self,
        engine: Engine,
        interval: float = HEARTBEAT_INTERVAL,
        dead_after: float = DEAD_AFTER,
        url: str | None = None,
    ) -> None:
        if interval <= 0 or dead_after < 2 * interval:
            raise ValueError("dead_after must be at least twice the heartbeat interval")
        self.engine = engine
        self.url = url.rstrip("/") if url else None
        self.interval = interval
        self.dead_after = dead_after
        self._store = SQLFileStore(engine, REPLICAS_NAMESPACE, read_ahead=0)
        self._beats: dict[str, int] = {}
        self._seen: dict[str, tuple[bytes, float]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the heartbeat thread."""
        self._thread = threading.Thread(
            target=self._run, name="sqlstore-replica-heartbeat", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and remove this process's heartbeats (a clean stop)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval * 5)
        for owner in list(self._beats):
            self.forget(owner)

    def beat_for(self, owner: str) -> None:
        """Keep ``owner`` alive from now on; its first heartbeat is written at once."""
        with self._lock:
            if owner in self._beats:
                return
            self._beats[owner] = 0
        self._beat(owner)

    def forget(self, owner: str) -> None:
        """Stop the heartbeat of ``owner`` and remove it: its conversations are free."""
        with self._lock:
            known = self._beats.pop(owner, None)
        if known is not None:
            try:
                self._store.delete(_heartbeat_path(owner))
            except Exception:
                logger.warning("could not remove the heartbeat of %s", owner, exc_info=True)

    def is_alive(self, owner: str) -> bool:
        """Whether ``owner`` may still be running, judged from a fresh read of its heartbeat."""
        with self._lock:
            if owner in self._beats:
                return True
        try:
            current = self._store.read_bytes(_heartbeat_path(owner))
        except FileNotFoundError:
            return False
        return self._note(owner, current)

    def url_of(self, owner: str) -> str | None:
        """The URL ``owner`` is reached on, from its heartbeat (``None``: unknown)."""
        try:
            record = json.loads(self._store.read_bytes(_heartbeat_path(owner)))
        except (FileNotFoundError, ValueError):
            return None
        url = record.get("url") if isinstance(record, dict) else None
        return str(url) if url else None

    def _note(self, owner: str, content: bytes) -> bool:
        now = time.monotonic()
        with self._lock:
            seen = self._seen.get(owner)
            if seen is None or seen[0] != content:
                self._seen[owner] = (content, now)
                return True
            return now - seen[1] < self.dead_after

    def _beat(self, owner: str) -> None:
        with self._lock:
            if owner not in self._beats:
                return
            self._beats[owner] += 1
            count = self._beats[owner]
        record = {
            "beat": count,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "url": self.url,
        }
        self._store.write(_heartbeat_path(owner), json.dumps(record))

    def _observe(self) -> None:
        found = _queries.directory_contents(self.engine, REPLICAS_NAMESPACE, REPLICAS_DIR)
        for name, content in found.items():
            if name.endswith(".json") and content is not None:
                self._note(name.removesuffix(".json"), content)

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                with self._lock:
                    owners = list(self._beats)
                for owner in owners:
                    self._beat(owner)
                self._observe()
            except Exception:
                # The database may be briefly away; the next round tries again.
                logger.warning("replica heartbeat failed", exc_info=True)


def _heartbeat_path(owner: str) -> str:
    return f"{REPLICAS_DIR}/{owner}.json"


@dataclass(frozen=True)
class OwnerRecord:
    """The content of a conversation's owner record.

    Attributes:
        owner: The owning replica's ``owner_instance_id``; ``None`` once released.
        generation: Grows by one with every change of owner (a fencing token).
    """

    owner: str | None
    generation: int

    @classmethod
    def read(cls, store: SQLFileStore) -> OwnerRecord:
        """The record of ``store``'s conversation (generation 0 when there is none)."""
        try:
            return cls.parse(store.read_bytes(OWNER))
        except FileNotFoundError:
            return cls.parse(None)

    @classmethod
    def parse(cls, content: bytes | None) -> OwnerRecord:
        """The record written as ``content`` (``None``: no record, generation 0)."""
        if content is None:
            return cls(None, 0)
        data = json.loads(content)
        return cls(data.get("owner"), int(data.get("generation", 0)))

    @staticmethod
    def locked(
        store: SQLFileStore, timeout: float, *, release_late: bool = False
    ) -> AbstractContextManager[bytes | None]:
        """The owner lock, whose block's value is the record's content, read with the lock.

        The record travels in the lock's own round trip (see
        ``SQLFileStore._lock_reading``); parse it with :meth:`parse`.
        """
        return store._lock_reading(OWNER_LOCK, timeout, OWNER, release_late=release_late)

    def write(self, store: SQLFileStore) -> None:
        """Write this record (inside the owner lock)."""
        body = {
            "owner": self.owner,
            "generation": self.generation,
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        store.write(OWNER, json.dumps(body))


class SQLConversationLease:
    """The server's ``ConversationLease``, kept in the database (same interface).

    Created by the server's ``EventService.start`` with the conversation's directory
    (whose name is the namespace) and the server's ``owner_instance_id``. The lease TTL
    the server passes plays no part: liveness is the replica heartbeat.
    """

    #: Set on the subclass an installation makes (see :func:`lease_class`).
    replicas: Replicas

    def __init__(
        self, *, conversation_dir: Path, owner_instance_id: str, ttl_seconds: float = 0.0
    ) -> None:
        self.conversation_dir = Path(conversation_dir)
        self.owner_instance_id = owner_instance_id
        self.ttl_seconds = ttl_seconds
        self.conversation_id = conversation_of(self.conversation_dir)
        self.store = SQLFileStore(self.replicas.engine, self.conversation_id.hex, read_ahead=0)
        #: Set when a fenced write was refused: this replica no longer owns it.
        self.lost = False

    def claim(self) -> Any:
        """Claim the conversation, or take it over from a dead owner.

        Returns:
            The server's ``LeaseClaim`` (generation, whether it was a takeover).

        Raises:
            ConversationOwnershipLostError: (a subclass) a live replica owns it, or the
                owner lock stayed busy; the server answers 409. Where the stock
                server would skip it as not loaded here (:data:`not_loaded_when_owned`),
                ``ConversationLeaseHeldError`` instead.
        """
        from openhands.agent_server.conversation_lease import LeaseClaim

        self.replicas.beat_for(self.owner_instance_id)
        try:
            with OwnerRecord.locked(self.store, CLAIM_TIMEOUT) as content:
                record = OwnerRecord.parse(content)
                if record.owner == self.owner_instance_id:
                    return LeaseClaim(generation=record.generation, takeover=False)
                takeover = record.owner is not None
                if takeover and self.replicas.is_alive(record.owner or ""):
                    raise self._held(record.owner or "")
                claimed = OwnerRecord(self.owner_instance_id, record.generation + 1)
                claimed.write(self.store)
        except LockTimeoutError as exc:
            raise self._held("(busy)") from exc
        if takeover:
            logger.info(
                "took over conversation %s from replica %s (generation %d)",
                self.conversation_id,
                record.owner,
                claimed.generation,
            )
        return LeaseClaim(generation=claimed.generation, takeover=takeover)

    def renew(self, generation: int) -> None:
        """Nothing to do: the replica's heartbeat keeps all its conversations."""

    @contextmanager
    def guarded_write(self, generation: int) -> Iterator[None]:
        """A block whose store writes land only while this replica owns the conversation.

        The owner lock is taken and the record checked in one transaction with the
        writes made inside the block (a lock block is a transaction; inside the SDK's
        event-log lock it joins that one). The record is read in the lock's own round
        trip, and inside the event-log lock the block's savepoint is released with the
        log's next statements: a fenced append costs no round trip of its own beyond
        that one (a write refused in it then fails the whole append, as the event
        log's own writes do).

        Raises:
            ConversationOwnershipLostError: another replica took it over; nothing of
                the block is written.
        """
        with OwnerRecord.locked(self.store, GUARD_TIMEOUT, release_late=True) as content:
            record = OwnerRecord.parse(content)
            if record.owner != self.owner_instance_id or record.generation != generation:
                self.lost = True
                from openhands.agent_server.conversation_lease import (
                    ConversationOwnershipLostError,
                )

                raise ConversationOwnershipLostError(
                    conversation_dir=self.conversation_dir,
                    owner_instance_id=self.owner_instance_id,
                    generation=generation,
                )
            yield

    def release(self, generation: int) -> None:
        """Give the conversation up, if this replica still owns it at ``generation``."""
        with OwnerRecord.locked(self.store, CLAIM_TIMEOUT) as content:
            record = OwnerRecord.parse(content)
            if record.owner == self.owner_instance_id and record.generation == generation:
                OwnerRecord(None, generation).write(self.store)

    def _held(self, owner: str) -> Exception:
        error: Exception
        if not_loaded_when_owned.get():
            from openhands.agent_server.conversation_lease import ConversationLeaseHeldError

            error = ConversationLeaseHeldError(
                conversation_dir=self.conversation_dir, owner_instance_id=owner, expires_at=0.0
            )
        else:
            owned_elsewhere: Any = owned_elsewhere_error()
            error = owned_elsewhere(conversation_dir=self.conversation_dir, owner_instance_id=owner)
        return error


def lease_class(replicas: Replicas) -> type[SQLConversationLease]:
    """A lease class bound to an installation's replicas (what the server instantiates)."""
    return type("SQLConversationLease", (SQLConversationLease,), {"replicas": replicas})


def free_to_delete(store: SQLFileStore, owner_instance_id: str) -> bool:
    """Whether no other replica owns ``store``'s conversation (call inside the owner lock)."""
    record = OwnerRecord.read(store)
    return record.owner in (None, owner_instance_id)
