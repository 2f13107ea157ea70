"""What replaces the disk paths of the server's ``ConversationService`` (the catalog).

* The catalog (``_load_catalog_sync``), state tokens (``_state_signature``), statuses
  (``_read_execution_status_sync``, ``_refresh_persisted_statuses_sync``) and the
  persisted state (``_load_persisted_state_sync``) come from the database
  (:mod:`.catalog`).
* Every list and count first brings the in-memory catalog up to date with the
  database (``_reconcile_active_records`` runs first in both), and every call naming
  one conversation first refreshes that one: other replicas' conversations appear,
  change and disappear without a restart.
* ``get_persisted_event_service`` serves event reads from the database; the routes
  bound to a conversation's runtime load the runtime, as the stock server does.
* ``delete_conversation`` also deletes the namespace, unless another replica took
  the conversation over in between.
* A runtime whose fenced write was refused (another replica took the conversation
  over) is closed before the next call, so this replica may claim it again later.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from typing import TYPE_CHECKING, Any
from uuid import UUID

from .layout import BASE_STATE, OWNER_LOCK, conversation_of
from .ownership import free_to_delete, not_loaded_when_owned

if TYPE_CHECKING:
    from .install import Installation

logger = logging.getLogger(__name__)


def load_catalog(installation: Installation, original: Any) -> Any:
    """``ConversationService._load_catalog_sync``."""

    @functools.wraps(original)
    def _load_catalog_sync(self: Any, conversation_id: UUID | None = None) -> dict[UUID, Any]:
        return installation.catalog.load(self, conversation_id)

    return _load_catalog_sync


def load_persisted_state(installation: Installation, original: Any) -> Any:
    """``ConversationService._load_persisted_state_sync``."""

    @functools.wraps(original)
    def _load_persisted_state_sync(self: Any, conversation_id: UUID) -> Any:
        from openhands.sdk.conversation.state import ConversationState

        try:
            text = installation.store(conversation_id).read(BASE_STATE)
        except FileNotFoundError:
            return None
        cipher = self._cipher_for(conversation_id)
        context = {"cipher": cipher} if cipher else None
        return ConversationState.model_validate_json(text, context=context)

    return _load_persisted_state_sync


def refresh_statuses(installation: Installation, original: Any) -> Any:
    """``ConversationService._refresh_persisted_statuses_sync`` (a static method)."""

    def _refresh_persisted_statuses_sync(targets: list[Any]) -> dict[UUID, Any]:
        return installation.catalog.statuses(targets)

    return staticmethod(functools.wraps(original.__func__)(_refresh_persisted_statuses_sync))


def state_signature(installation: Installation, original: Any) -> Any:
    """``conversation_service._state_signature`` (a module function taking a path)."""

    @functools.wraps(original)
    def _state_signature(base_state_path: str) -> tuple[int, int] | None:
        return installation.catalog.state_token(conversation_of(base_state_path).hex)

    return _state_signature


def read_execution_status(installation: Installation, original: Any) -> Any:
    """``conversation_service._read_execution_status_sync`` (a module function)."""

    @functools.wraps(original)
    def _read_execution_status_sync(base_state_path: str) -> Any:
        return installation.catalog.status(conversation_of(base_state_path).hex)

    return _read_execution_status_sync


def reconcile_active_records(installation: Installation, original: Any) -> Any:
    """``ConversationService._reconcile_active_records``: also sync the catalog."""

    @functools.wraps(original)
    async def _reconcile_active_records(self: Any) -> None:
        await original(self)
        await installation.sync(self)

    return _reconcile_active_records


def refreshing(installation: Installation, original: Any) -> Any:
    """A ``ConversationService`` method naming one conversation, refreshed first."""

    @functools.wraps(original)
    async def method(self: Any, conversation_id: UUID, *args: Any, **kwargs: Any) -> Any:
        await installation.refresh(self, conversation_id)
        return await original(self, conversation_id, *args, **kwargs)

    return method


def start_conversation(installation: Installation, original: Any) -> Any:
    """``ConversationService._start_conversation``: a client-chosen id is refreshed first.

    A create naming a conversation another live replica runs answers as the stock
    server does when another server holds the lease: the existing conversation, not
    started here (``started=false``), nothing of it changed.
    """

    @functools.wraps(original)
    async def _start_conversation(self: Any, request: Any) -> Any:
        if request.conversation_id is not None:
            await installation.refresh(self, request.conversation_id)
        token = not_loaded_when_owned.set(True)
        try:
            return await original(self, request)
        finally:
            not_loaded_when_owned.reset(token)

    return _start_conversation


def fork_conversation(installation: Installation, original: Any) -> Any:
    """``ConversationService.fork_conversation``: source and fork id refreshed first."""

    @functools.wraps(original)
    async def fork(self: Any, source_id: UUID, **kwargs: Any) -> Any:
        await installation.refresh(self, source_id)
        if kwargs.get("fork_id") is not None:
            await installation.refresh(self, kwargs["fork_id"])
        return await original(self, source_id, **kwargs)

    return fork


def get_or_load_locked(installation: Installation, original: Any) -> Any:
    """``ConversationService._get_or_load_event_service_locked``: drop a lost runtime."""

    @functools.wraps(original)
    async def locked(self: Any, conversation_id: UUID, **kwargs: Any) -> Any:
        runtime = (self._event_services or {}).get(conversation_id)
        lease = getattr(runtime, "_lease", None)
        if runtime is not None and runtime.is_open() and getattr(lease, "lost", False):
            self._event_services.pop(conversation_id, None)
            try:
                await runtime.close()
            except Exception:
                logger.warning("closing the superseded runtime of %s failed", conversation_id)
        return await original(self, conversation_id, **kwargs)

    return locked


def get_persisted_event_service(installation: Installation, original: Any) -> Any:
    """``ConversationService.get_persisted_event_service``: events from the database."""

    @functools.wraps(original)
    async def get_persisted_event_service(self: Any, conversation_id: UUID) -> Any:
        if self._event_services is None:
            raise ValueError("inactive_service")
        runtime = self._event_services.get(conversation_id)
        if runtime is not None and runtime.is_open() and not getattr(runtime._lease, "lost", False):
            return runtime  # it runs here: its memory is authoritative
        await installation.refresh(self, conversation_id)
        record = self._conversation_records.get(conversation_id)
        if record is None:
            return None
        view = await asyncio.to_thread(
            installation.event_service_class.for_persisted_events,
            record.stored,
            self.conversations_dir,
        )
        view._sqlstore_conversation_service = self
        return view

    return get_persisted_event_service


def delete_conversation(installation: Installation, original: Any) -> Any:
    """``ConversationService.delete_conversation``: the namespace goes too."""

    @functools.wraps(original)
    async def delete_conversation(self: Any, conversation_id: UUID) -> bool:
        await installation.refresh(self, conversation_id)
        deleted = bool(await original(self, conversation_id))
        if deleted:
            await asyncio.to_thread(_delete_namespace, installation, conversation_id, self)
        return deleted

    return delete_conversation


def _delete_namespace(installation: Installation, conversation_id: UUID, service: Any) -> None:
    store = installation.store(conversation_id)
    with store.lock(OWNER_LOCK):
        if free_to_delete(store, service.owner_instance_id):
            store.delete("")
            return
    logger.warning(
        "conversation %s was taken over by another replica while being deleted; kept",
        conversation_id,
    )


def enter(installation: Installation, original: Any) -> Any:
    """``ConversationService.__aenter__``: recovery skips conversations owned elsewhere."""

    @functools.wraps(original)
    async def __aenter__(self: Any) -> Any:
        token = not_loaded_when_owned.set(True)
        try:
            return await original(self)
        finally:
            not_loaded_when_owned.reset(token)

    return __aenter__


def leave(installation: Installation, original: Any) -> Any:
    """``ConversationService.__aexit__``: this replica's heartbeat ends with it."""

    @functools.wraps(original)
    async def __aexit__(self: Any, exc_type: Any, exc_value: Any, traceback: Any) -> Any:
        try:
            return await original(self, exc_type, exc_value, traceback)
        finally:
            await asyncio.to_thread(installation.replicas.forget, self.owner_instance_id)

    return __aexit__


#: Set while a route bound to a conversation's runtime resolves it.
runtime_required: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "sqlstore_agent_server_runtime_required", default=False
)


def bind_runtime(installation: Installation, original: Any) -> Any:
    """``runtime_router.bind_local_conversation_runtime``: the runtime, never a view.

    The routes under ``/api/conversations/{id}/`` that use the conversation's runtime
    (its workspace, terminal, VS Code, git) get the runtime, loaded (and claimed) as
    the stock server loads it, never the database read view, which has none.
    """

    @functools.wraps(original)
    async def bind_local_conversation_runtime(runtime_conversation_id: UUID, request: Any) -> None:
        if _TRAJECTORY in request.url.path:
            # Served from the database (see .trajectory): no runtime to bind, so any
            # replica answers it, the owner running elsewhere or not.
            _check_trajectory_id(
                request.path_params.get("conversation_id"), runtime_conversation_id
            )
            return
        token = runtime_required.set(True)
        try:
            await original(runtime_conversation_id, request)
        finally:
            runtime_required.reset(token)

    return bind_local_conversation_runtime


_TRAJECTORY = "/file/download-trajectory/"


def _check_trajectory_id(trajectory_id: str | None, runtime_conversation_id: UUID) -> None:
    """The stock route's check: the trajectory must be the selected conversation's."""
    from fastapi import HTTPException

    try:
        matches = UUID(str(trajectory_id)) == runtime_conversation_id
    except ValueError as exc:
        raise HTTPException(422, "Invalid trajectory conversation id") from exc
    if not matches:
        raise HTTPException(422, "Trajectory must belong to the selected conversation")


def configure_service(installation: Installation, original: Any) -> Any:
    """``ConversationRegistry.configure_service``: remember the service for event reads."""

    @functools.wraps(original)
    def configure(self: Any, service: Any) -> None:
        self._sqlstore_conversation_service = service
        installation.conversation_service = service
        original(self, service)

    return configure


def serves_persisted_event_reads_property(installation: Installation, original: Any) -> Any:
    """The getter of ``ConversationRegistry.serves_persisted_event_reads`` (server 1.56).

    Before 1.57 the question names no conversation: the answer is yes, except for the
    routes bound to a runtime, and :func:`get_persisted_event_service` hands out the
    runtime itself when the conversation runs here.
    """

    @functools.wraps(original)
    def serves(self: Any) -> bool:
        service = getattr(self, "_sqlstore_conversation_service", None)
        if service is None or runtime_required.get():
            return bool(original(self))
        return True

    return serves


def serves_persisted_event_reads(installation: Installation, original: Any) -> Any:
    """``ConversationRegistry.serves_persisted_event_reads``: yes, unless running here.

    Event reads of a conversation this replica does not run (or no longer owns) come
    from the database and claim nothing, so any replica can read any conversation.
    Not for the runtime-bound routes (:func:`bind_runtime`): they need the runtime.
    """

    @functools.wraps(original)
    def serves(self: Any, conversation_id: UUID) -> bool:
        service = getattr(self, "_sqlstore_conversation_service", None)
        if service is None or runtime_required.get():
            return bool(original(self, conversation_id))
        runtime = (service._event_services or {}).get(conversation_id)
        if runtime is None or not runtime.is_open():
            return True
        return bool(getattr(runtime._lease, "lost", False))  # taken over: not ours to read

    return serves
