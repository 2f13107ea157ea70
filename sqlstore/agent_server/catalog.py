"""The server's conversation catalog, read from the database instead of a directory scan.

The stock server scans its conversations directory once at start-up (``meta.json`` and
``base_state.json`` of each) and never again, and detects a changed state by
``os.stat``. Here:

* the whole catalog is one query over every namespace's top-level ``meta.json`` and
  ``base_state.json`` rows (sizes and write times, never content), plus one query for
  the content of what is new or changed;
* every list and count brings the in-memory catalog up to date that way, so
  conversations created, changed or deleted by other replicas show without a restart;
* a state's change token (the server's "signature") is its size and write time. The
  database stores write times to the second on SQLite and MySQL/MariaDB, so two writes
  of one size within a second look alike: a file written less than :data:`FRESH`
  seconds ago (by the database's clock) gets a token of its own ("fresh"), which
  becomes the settled token once it is older. A list after a state write reads the
  state once, as the stock server does, and once more when it settles; a rewrite of
  the same size within the same second is seen at the latest then.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from sqlalchemy import Engine

from ..store import SQLFileStore
from . import _queries
from .layout import BASE_STATE, META

logger = logging.getLogger(__name__)

#: Seconds after a write during which its time stamp may not tell it from the next one.
FRESH = 2.0
#: Seconds a state token read by the last catalog query stays good for later lookups.
TOKEN_REUSE = 1.0

Token = tuple[int, int]


def token(row: _queries.RootFile) -> Token:
    """The change token of a stored file (a fresh one differs from its settled one)."""
    if row.age < FRESH:
        return (-row.written, row.size)
    return (row.written, row.size)


@dataclass
class Scan:
    """The top-level files of every conversation, from one query."""

    meta: dict[str, _queries.RootFile] = field(default_factory=dict)
    state: dict[str, _queries.RootFile] = field(default_factory=dict)


@dataclass
class SyncPlan:
    """What a catalog refresh changes; made in a worker thread, applied on the loop."""

    found: dict[UUID, Any] = field(default_factory=dict)
    gone: set[UUID] = field(default_factory=set)


class Catalog:
    """Reads the server's catalog from the database; shared by one installation.

    Args:
        engine: The database.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._meta_tokens: dict[str, Token] = {}
        self._state_tokens: dict[str, tuple[Token | None, float]] = {}

    # -- queries ---------------------------------------------------------------------

    def scan(self, namespace: str | None = None) -> Scan:
        """One query: the ``meta.json`` and ``base_state.json`` rows of all (or one)."""
        scan = Scan()
        for row in _queries.root_files(self.engine, (META, BASE_STATE), namespace):
            (scan.meta if row.name == META else scan.state)[row.namespace] = row
        now = time.monotonic()
        with self._lock:
            if namespace is not None:
                self._state_tokens[namespace] = (self._token_of(scan, namespace), now)
            else:
                self._state_tokens = {ns: (token(row), now) for ns, row in scan.state.items()}
        return scan

    def _token_of(self, scan: Scan, namespace: str) -> Token | None:
        row = scan.state.get(namespace)
        return None if row is None else token(row)

    def read(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
        """The content of each existing ``(namespace, path)``."""
        found = _queries.contents(self.engine, keys)
        result: dict[tuple[str, str], bytes] = {}
        for (namespace, path), content in found.items():
            if content is None:  # continued in sqlstore_chunks: the store reads it whole
                try:
                    content = SQLFileStore(self.engine, namespace).read_bytes(path)
                except FileNotFoundError:
                    continue
            result[(namespace, path)] = content
        return result

    # -- the server's catalog --------------------------------------------------------

    def load(self, service: Any, conversation_id: UUID | None = None) -> dict[UUID, Any]:
        """``ConversationService._load_catalog_sync``: records of all conversations (or one)."""
        scan = self.scan(None if conversation_id is None else conversation_id.hex)
        return self._records(service, scan, list(scan.meta))

    def plan_sync(self, service: Any, known: set[UUID]) -> SyncPlan:
        """What to add, replace and drop so ``known`` matches the database."""
        scan = self.scan()
        plan = SyncPlan()
        wanted = []
        present = set()
        for namespace, row in scan.meta.items():
            conversation_id = _conversation_id(namespace)
            if conversation_id is None:
                continue
            present.add(conversation_id)
            with self._lock:
                unchanged = self._meta_tokens.get(namespace) == token(row)
            if conversation_id not in known or not unchanged:
                wanted.append(namespace)
        plan.found = self._records(service, scan, wanted)
        plan.gone = known - present
        return plan

    def plan_refresh(self, service: Any, conversation_id: UUID, known: bool) -> SyncPlan:
        """As :meth:`plan_sync`, for one conversation."""
        namespace = conversation_id.hex
        scan = self.scan(namespace)
        plan = SyncPlan()
        row = scan.meta.get(namespace)
        if row is None:
            if known:
                plan.gone.add(conversation_id)
            return plan
        with self._lock:
            unchanged = self._meta_tokens.get(namespace) == token(row)
        if not known or not unchanged:
            plan.found = self._records(service, scan, [namespace])
        return plan

    @staticmethod
    def apply(service: Any, plan: SyncPlan) -> None:
        """Bring the server's in-memory catalog in line (on the event loop).

        A conversation open on this replica is left alone: its memory is authoritative.
        """
        records = service._conversation_records
        event_services = service._event_services or {}

        def live(conversation_id: UUID) -> bool:
            event_service = event_services.get(conversation_id)
            return event_service is not None and event_service.is_open()

        for conversation_id in plan.gone:
            if not live(conversation_id):
                records.pop(conversation_id, None)
        for conversation_id, record in plan.found.items():
            if live(conversation_id):
                continue
            existing = records.get(conversation_id)
            if existing is None:
                records[conversation_id] = record
            elif existing.stored != record.stored:
                existing.stored = record.stored
                existing.cached_info = None

    def _records(self, service: Any, scan: Scan, namespaces: list[str]) -> dict[UUID, Any]:
        from openhands.agent_server.conversation_service import _ConversationRecord
        from openhands.agent_server.models import StoredConversation
        from openhands.sdk.conversation.state import ConversationExecutionStatus

        keys = [(ns, META) for ns in namespaces]
        keys += [(ns, BASE_STATE) for ns in namespaces if ns in scan.state]
        contents = self.read(keys)
        records: dict[UUID, Any] = {}
        for namespace in namespaces:
            conversation_id = _conversation_id(namespace)
            meta = contents.get((namespace, META))
            if conversation_id is None or meta is None:
                continue
            try:
                stored = StoredConversation.model_validate_json(
                    meta, context={"cipher": service._cipher_for(conversation_id)}
                )
                status = ConversationExecutionStatus.IDLE
                signature = None
                state = contents.get((namespace, BASE_STATE))
                if state is not None:
                    # Strict, as the stock catalog: a corrupt state drops the entry.
                    payload = json.loads(state)
                    status = ConversationExecutionStatus(
                        payload.get("execution_status", ConversationExecutionStatus.IDLE.value)
                    )
                    signature = token(scan.state[namespace])
                records[stored.id] = _ConversationRecord(
                    stored=stored,
                    execution_status=status,
                    state_signature=signature,
                    base_state_path=str(service.conversations_dir / namespace / BASE_STATE),
                )
                with self._lock:
                    self._meta_tokens[namespace] = token(scan.meta[namespace])
            except Exception:
                logger.exception("error loading conversation %s from the database", namespace)
        return records

    # -- state tokens and statuses ---------------------------------------------------

    def state_token(self, namespace: str) -> Token | None:
        """``_state_signature``: the token of a conversation's ``base_state.json``.

        The catalog query that every list runs first has read them all; a lookup soon
        after reuses that, anything else asks the database.
        """
        with self._lock:
            cached = self._state_tokens.get(namespace)
        if cached is not None and time.monotonic() - cached[1] < TOKEN_REUSE:
            return cached[0]
        return self._token_of(self.scan(namespace), namespace)

    def statuses(self, targets: list[tuple[UUID, str, Token | None]]) -> dict[UUID, Any]:
        """``_refresh_persisted_statuses_sync``: re-read the statuses that changed.

        ``targets`` are ``(conversation_id, base_state_path, cached_token)``. The result
        maps a conversation to ``(status, token)``, ``(None, None)`` meaning "keep the
        cached status, unverified"; unchanged conversations are left out. One query for
        the tokens (unless the list query just read them) and one for the changed states.
        """
        from openhands.sdk.conversation.state import ConversationExecutionStatus

        tokens = {cid: self.state_token(cid.hex) for cid, _, _ in targets}
        changed = [
            (cid, tokens[cid])
            for cid, _, cached in targets
            if tokens[cid] is None or tokens[cid] != cached
        ]
        contents = self.read([(cid.hex, BASE_STATE) for cid, new in changed if new is not None])
        result: dict[UUID, Any] = {}
        for cid, new in changed:
            content = contents.get((cid.hex, BASE_STATE))
            if new is None or content is None:
                result[cid] = (None, None)
                continue
            try:
                value = json.loads(content).get(
                    "execution_status", ConversationExecutionStatus.IDLE.value
                )
                result[cid] = (ConversationExecutionStatus(value), new)
            except ValueError:
                result[cid] = (None, None)
        return result

    def status(self, namespace: str) -> Any:
        """``_read_execution_status_sync``: one conversation's status, ``None`` if unreadable."""
        from openhands.sdk.conversation.state import ConversationExecutionStatus

        content = self.read([(namespace, BASE_STATE)]).get((namespace, BASE_STATE))
        if content is None:
            return None
        try:
            value = json.loads(content).get(
                "execution_status", ConversationExecutionStatus.IDLE.value
            )
            return ConversationExecutionStatus(value)
        except ValueError:
            return None


def _conversation_id(namespace: str) -> UUID | None:
    """The conversation a namespace holds, if it is named like one (32 hex digits)."""
    if len(namespace) != 32:
        return None
    try:
        return UUID(hex=namespace)
    except ValueError:
        return None
