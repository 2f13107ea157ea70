"""What replaces the disk paths of the server's ``EventService`` (one conversation's runtime).

* ``start``: the stock method decides resume-or-new by looking for ``base_state.json``
  on disk. Here ownership is claimed first (a live owner elsewhere: refused) and the
  stored secrets are checked to decrypt with this server's key; when a state exists,
  its agent is read right after the stock method's credential scrub (as the stock
  resume reads it from disk after that scrub) and handed to it as the conversation's
  agent, so the SDK resumes the stored conversation (``ConversationState.create``
  reads it through the routed store) with the scrubbed agent.
* ``load_meta``/``save_meta``: ``meta.json`` in the conversation's namespace, the save
  fenced like every other write.
* ``for_persisted_events``: the event log read from the database (the stock method
  hard-codes a ``LocalFileStore``), as a read-only view whose write calls go to this
  replica's own runtime for the conversation (claiming it, or 409).
* ``_scrub_persisted_credentials``: the same scrub of bound credentials, on the stored
  ``base_state.json`` and ``meta.json`` (during ``start``, then the agent's read).
"""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING, Any

from .decryption import check_decryptable
from .layout import BASE_STATE, EVENTS, META

if TYPE_CHECKING:
    from .install import Installation


def start(installation: Installation, original: Any) -> Any:
    """``EventService.start``, resuming from the database."""

    @functools.wraps(original)
    async def start(self: Any) -> None:
        lease = None
        if self.lease_ttl_seconds > 0:
            # Claim before reading the state, so what is read is final: only the owner
            # writes it. The stock start claims again; the same owner keeps its claim.
            lease = installation.lease_class(
                conversation_dir=self.conversation_dir,
                owner_instance_id=self.owner_instance_id,
                ttl_seconds=self.lease_ttl_seconds,
            )
            claim = await asyncio.to_thread(lease.claim)
        try:
            resuming = self.agent is None and await asyncio.to_thread(
                _check_stored, installation, self
            )
            if not resuming:
                await original(self)
                return
            # The stored agent is read by the scrub the stock start runs after its
            # claim (see scrub_persisted_credentials), so the agent handed over is
            # the scrubbed one, as the stock start's resume from disk reads it.
            self._sqlstore_resuming = True
            try:
                await original(self)
            finally:
                self._sqlstore_resuming = False
                self.agent = None
        except BaseException:
            if lease is not None:  # a runtime that did not start owns nothing
                await asyncio.to_thread(lease.release, claim.generation)
            raise

    return start


def _check_stored(installation: Installation, service: Any) -> bool:
    """Whether a stored state exists, after checking that its secrets decrypt."""
    namespace = service.stored.id.hex
    found = installation.catalog.read([(namespace, BASE_STATE), (namespace, META)])
    documents = {path: content for (_, path), content in found.items()}
    check_decryptable(service.stored.id, documents, service.cipher)
    return BASE_STATE in documents


def _stored_agent(installation: Installation, service: Any) -> Any:
    """The agent of the stored state (``None`` when there is none)."""
    from openhands.sdk.conversation.state import ConversationState

    try:
        state = installation.store(service.stored.id).read(BASE_STATE)
    except FileNotFoundError:
        return None
    context = {"cipher": service.cipher} if service.cipher else None
    return ConversationState.model_validate_json(state, context=context).agent


def load_meta(installation: Installation, original: Any) -> Any:
    """``EventService.load_meta`` from the conversation's namespace."""

    @functools.wraps(original)
    async def load_meta(self: Any) -> None:
        from openhands.agent_server.models import StoredConversation

        text = installation.store(self.stored.id).read(META)
        self.stored = StoredConversation.model_validate_json(text, context={"cipher": self.cipher})

    return load_meta


def save_meta(installation: Installation, original: Any) -> Any:
    """``EventService.save_meta`` into the conversation's namespace, fenced."""

    @functools.wraps(original)
    async def save_meta(self: Any, stored: Any = None) -> None:
        new_stored = self.stored if stored is None else stored
        payload = new_stored.model_dump_json(context={"cipher": self.cipher})
        store = installation.store(self.stored.id)
        # Synchronous, as the stock method's disk write: no other task runs between the
        # write and the assignment, so concurrent saves cannot reorder.
        with self._write_guard():
            store.write(META, payload)
        self.stored = new_stored

    return save_meta


def for_persisted_events(installation: Installation, original: Any) -> Any:
    """``EventService.for_persisted_events`` on the database."""

    def for_persisted_events(cls: Any, stored: Any, conversations_dir: Any) -> Any:
        from openhands.sdk.conversation.event_store import EventLog

        service = installation.read_view_class(stored=stored, conversations_dir=conversations_dir)
        store: Any = installation.store(stored.id)  # an SDK FileStore (registered virtually)
        service._persisted_events = EventLog(store, dir_path=EVENTS)
        return service

    return classmethod(functools.wraps(original.__func__)(for_persisted_events))


def read_view_class(event_service_class: Any) -> Any:
    """An ``EventService`` serving reads from the database and writes from the owner.

    The server answers event reads of a conversation this replica does not run from
    ``for_persisted_events``. The same route dependency serves the event writes
    (send a message, answer a confirmation); those go to this replica's runtime for
    the conversation, which claims it (or answers 409 when a live replica owns it).
    """

    async def _runtime(self: Any) -> Any:
        from fastapi import HTTPException

        service = getattr(self, "_sqlstore_conversation_service", None)
        runtime = None if service is None else await service.get_event_service(self.stored.id)
        if runtime is None:
            raise HTTPException(status_code=404, detail=f"Conversation not found: {self.stored.id}")
        return runtime

    async def send_message(
        self: Any,
        message: Any,
        run: bool = False,
        _from_goal_loop: bool = False,
        *,
        run_slot: Any = None,
    ) -> Any:
        runtime = await _runtime(self)
        return await runtime.send_message(message, run, _from_goal_loop, run_slot=run_slot)

    async def respond_to_confirmation(self: Any, request: Any) -> Any:
        runtime = await _runtime(self)
        return await runtime.respond_to_confirmation(request)

    return type(
        "PersistedEventService",
        (event_service_class,),
        {
            "__doc__": read_view_class.__doc__,
            "send_message": send_message,
            "respond_to_confirmation": respond_to_confirmation,
        },
    )


def scrub_persisted_credentials(installation: Installation, original: Any) -> Any:
    """``EventService._scrub_persisted_credentials`` on the stored files.

    Bound credentials (resolved at run time) must not stay in the stored conversation:
    their secrets leave ``meta.json``, the state's secret registry and the agent's
    context, in one fenced transaction.
    """

    @functools.wraps(original)
    async def scrub(self: Any, credential_bindings: Any = None) -> None:
        await _scrub(self, credential_bindings)
        if getattr(self, "_sqlstore_resuming", False):
            # The stock start resumes from the scrubbed state right after this call.
            self._sqlstore_resuming = False
            self.agent = await asyncio.to_thread(_stored_agent, installation, self)

    async def _scrub(self: Any, credential_bindings: Any) -> None:
        from openhands.agent_server import event_service as module
        from openhands.sdk.conversation.state import ConversationState

        bindings = self.credential_bindings if credential_bindings is None else credential_bindings
        if not bindings:
            return
        required = {
            name
            for name, binding in bindings.items()
            if isinstance(binding, module.HttpVersionedCredentialBinding)
        }
        if required:
            # A scrubbed credential must never come back as a stored fallback.
            self.stored = self.stored.model_copy(
                update={
                    "required_runtime_credential_bindings": (
                        self.stored.required_runtime_credential_bindings | required
                    )
                }
            )
        # The ACP agent's own credentials file stays on local disk (runtime scratch).
        legacy_auth_file = self.conversation_dir / "acp" / "codex" / "auth.json"
        codex_binding = bindings.get(module.CODEX_AUTH_SECRET_NAME)
        if codex_binding is not None and legacy_auth_file.exists():
            resolved = await codex_binding.load()
            if not module.is_valid_codex_auth(resolved.value):
                raise module.CredentialNeedsReauthentication(
                    "ChatGPT authentication is invalid. Please sign in again."
                )
        for name in bindings:
            self.stored = self._without_stored_secret(name)

        context = {"cipher": self.cipher}
        store = installation.store(self.stored.id)

        def rewrite() -> None:
            with self._write_guard(), store.lock(".sqlstore/scrub.lock"):
                try:
                    text = store.read(BASE_STATE)
                except FileNotFoundError:
                    text = None
                if text is not None:
                    state = ConversationState.model_validate_json(text, context=context)
                    sources = dict(state.secret_registry.secret_sources)
                    for name in bindings:
                        sources.pop(name, None)
                        state.agent = module._without_agent_context_secret(state.agent, name)
                    state.secret_registry = state.secret_registry.model_copy(
                        update={"secret_sources": sources}
                    )
                    store.write(
                        BASE_STATE, state.model_dump_json(exclude_none=True, context=context)
                    )
                if store.exists(META):
                    store.write(META, self.stored.model_dump_json(context=context))

        await asyncio.to_thread(rewrite)
        if codex_binding is not None:
            legacy_auth_file.unlink(missing_ok=True)

    return scrub
