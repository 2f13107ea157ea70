"""Installing sqlstore into the OpenHands agent server process, and taking it out again."""

from __future__ import annotations

import asyncio
import atexit
import os
import sys
import threading
import warnings
from importlib import metadata
from types import ModuleType, TracebackType
from typing import Any, Self
from uuid import UUID

from sqlalchemy import Engine

from ..admin import require_schema
from ..sdk import ConversationRouting, route_conversations
from ..store import SQLFileStore
from . import events, forwarding, service, trajectory
from .catalog import Catalog
from .ownership import DEAD_AFTER, HEARTBEAT_INTERVAL, Replicas, SQLConversationLease, lease_class
from .patching import (
    ClassPatch,
    Patch,
    PropertyPatch,
    RoutePatch,
    missing_attributes,
    missing_fields,
)

#: The openhands-agent-server versions this is written and tested against.
TESTED_SERVER_VERSIONS = ">=1.56,<1.59"
#: Their release series (``major.minor``).
TESTED_SERIES = ("1.56", "1.57", "1.58")
#: Set to ``1`` to install on another release anyway, skipping what differs.
ALLOW_UNTESTED = "SQLSTORE_AGENT_SERVER_ALLOW_UNTESTED"


class Installation:
    """sqlstore installed in the agent server; ``uninstall()`` or leave the ``with`` block.

    Attributes:
        engine: The database.
        catalog: Reads the conversation catalog from it.
        replicas: This process's heartbeats and its view of the other replicas.
        active: False once uninstalled.
    """

    def __init__(self, engine: Engine, replicas: Replicas, modules: dict[str, ModuleType]) -> None:
        self.engine = engine
        self.catalog = Catalog(engine)
        self.replicas = replicas
        self.active = True
        self.lease_class: type[SQLConversationLease] = lease_class(replicas)
        self.event_service_class: Any = modules["event_service"].EventService
        self.read_view_class: Any = events.read_view_class(self.event_service_class)
        #: The server's ``ConversationService``, once the app has configured it.
        self.conversation_service: Any = None
        self._patches: list[Patch] = []
        self._routing: ConversationRouting | None = None

    def store(self, conversation_id: UUID) -> SQLFileStore:
        """The store of one conversation (its namespace)."""
        return SQLFileStore(self.engine, conversation_id.hex)

    async def sync(self, conversation_service: Any) -> None:
        """Bring the service's in-memory catalog in line with the database."""
        if conversation_service._event_services is None:
            return
        known = set(conversation_service._conversation_records)
        plan = await asyncio.to_thread(self.catalog.plan_sync, conversation_service, known)
        Catalog.apply(conversation_service, plan)

    async def refresh(self, conversation_service: Any, conversation_id: UUID) -> None:
        """Bring one conversation's catalog entry in line (unless it runs here)."""
        runtimes = conversation_service._event_services
        if runtimes is None:
            return
        runtime = runtimes.get(conversation_id)
        if runtime is not None and runtime.is_open():
            return
        known = conversation_id in conversation_service._conversation_records
        plan = await asyncio.to_thread(
            self.catalog.plan_refresh, conversation_service, conversation_id, known
        )
        Catalog.apply(conversation_service, plan)

    def uninstall(self) -> None:
        """Put the server's own code back and stop this process's heartbeats."""
        global _active
        with _lock:
            if not self.active:
                return
            self.active = False
            for patch in reversed(self._patches):
                patch.undo()
            self._patches = []
            if self._routing is not None:
                self._routing.uninstall()
            if _active is self:
                _active = None
        self.replicas.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.uninstall()


_lock = threading.RLock()
_active: Installation | None = None


def install(
    engine: Engine,
    *,
    heartbeat_interval: float = HEARTBEAT_INTERVAL,
    dead_after: float = DEAD_AFTER,
    replica_url: str | None = None,
) -> Installation:
    """Keep the agent server's conversations in sqlstore, in this process.

    Call it before the server's app is built (``openhands.agent_server.api`` imported);
    ``python -m openhands.agent_server --import-modules sqlstore.agent_server`` with
    ``SQLSTORE_URL`` set does it for you. Every server function this replaces is
    checked first. Calling it again replaces the previous installation.

    Args:
        engine: An engine from :func:`sqlstore.create_engine` on a migrated database,
            shared with every other replica.
        heartbeat_interval: Seconds between this replica's heartbeats.
        dead_after: Seconds without a heartbeat, as this replica counts them, after
            which it may take over another replica's conversations.
        replica_url: The URL the other replicas reach this server on; requests for
            conversations it owns are forwarded there (see :mod:`.forwarding`).
            ``None``: nothing is forwarded to it.

    Returns:
        A handle whose ``uninstall()`` (or ``with`` block exit) restores the server.

    Raises:
        RuntimeError: the installed server is not a tested release
            (:data:`TESTED_SERVER_VERSIONS`) or differs from the one this was written
            for (the message lists every difference), or its app is already built.
            With ``SQLSTORE_AGENT_SERVER_ALLOW_UNTESTED=1`` an untested release is
            installed anyway, with a warning, skipping each replacement that does not
            fit (that part of the server stays stock: at the operator's own risk).
        ImportError: the server is not installed (``pip install sqlstore[agent-server]``).
        SchemaError: the database is not migrated.
    """
    global _active
    modules = _server_modules()
    with _lock:
        if _active is not None:  # the checks below look at the server's own code
            _active.uninstall()
    if "openhands.agent_server.api" in sys.modules:
        raise RuntimeError(
            "sqlstore.agent_server.install() must run before openhands.agent_server.api is "
            "imported (its app copies the routes): start the server with "
            "`--import-modules sqlstore.agent_server`"
        )
    patches = _patches(modules)
    problems = [problem for patch in patches if (problem := patch.problem())]
    problems += [problem for problem in _needs(modules) if problem]
    version = server_version()
    tested = ".".join(version.split(".")[:2]) in TESTED_SERIES
    if problems or not tested:
        listing = "\n  ".join(problems or ["(no signature differs; the release is untested)"])
        message = (
            f"sqlstore.agent_server supports openhands-agent-server {TESTED_SERVER_VERSIONS}; "
            f"the installed {version} differs:\n  {listing}"
        )
        if os.environ.get(ALLOW_UNTESTED) != "1":
            raise RuntimeError(f"{message}\n(set {ALLOW_UNTESTED}=1 to run it anyway)")
        # The operator's choice: what still fits is installed, the rest stays stock.
        patches = [patch for patch in patches if patch.problem() is None]
        warnings.warn(
            f"{message}\n{ALLOW_UNTESTED}=1: installing only what fits, at your own risk",
            RuntimeWarning,
            stacklevel=2,
        )
    require_schema(engine)
    replicas = Replicas(engine, heartbeat_interval, dead_after, replica_url)
    with _lock:
        installation = Installation(engine, replicas, modules)
        installation._routing = route_conversations(engine)
        for patch in patches:
            patch.apply(installation)
            installation._patches.append(patch)
        _active = installation
    replicas.start()
    atexit.register(installation.uninstall)
    return installation


def server_version() -> str:
    """The installed openhands-agent-server's version."""
    return metadata.version("openhands-agent-server")


def _server_modules() -> dict[str, ModuleType]:
    try:
        from openhands.agent_server import (
            conversation_lease,
            conversation_registry,
            conversation_service,
            event_service,
            file_router,
            middleware,
            runtime_router,
        )
        from openhands.sdk.utils import cipher
    except ImportError as exc:
        raise ImportError(
            "sqlstore.agent_server needs the OpenHands agent server: "
            "pip install 'sqlstore[agent-server]'"
        ) from exc
    return {
        "conversation_lease": conversation_lease,
        "conversation_registry": conversation_registry,
        "conversation_service": conversation_service,
        "event_service": event_service,
        "file_router": file_router,
        "runtime_router": runtime_router,
        "middleware": middleware,
        "cipher": cipher,
    }


def _patches(modules: dict[str, ModuleType]) -> list[Patch]:
    conversations = modules["conversation_service"]
    service_class = conversations.ConversationService
    event_module = modules["event_service"]
    event_class = event_module.EventService
    registry = modules["conversation_registry"].ConversationRegistry
    one = ("self", "conversation_id")
    path = ("base_state_path",)
    return [
        Patch(service_class, "_load_catalog_sync", one, service.load_catalog),
        Patch(service_class, "_load_persisted_state_sync", one, service.load_persisted_state),
        Patch(
            service_class,
            "_refresh_persisted_statuses_sync",
            ("targets",),
            service.refresh_statuses,
        ),
        Patch(conversations, "_state_signature", path, service.state_signature),
        Patch(conversations, "_read_execution_status_sync", path, service.read_execution_status),
        Patch(
            service_class, "_reconcile_active_records", ("self",), service.reconcile_active_records
        ),
        Patch(service_class, "get_conversation", one, service.refreshing),
        Patch(service_class, "_get_or_load_event_service", one, service.refreshing),
        Patch(
            service_class,
            "_get_or_load_event_service_locked",
            (*one, "require_runtime_bindings", "agent"),
            service.get_or_load_locked,
        ),
        Patch(
            service_class, "_start_conversation", ("self", "request"), service.start_conversation
        ),
        Patch(
            service_class,
            "fork_conversation",
            ("self", "source_id", "fork_id", "title", "tags", "reset_metrics", "from_event_id"),
            service.fork_conversation,
        ),
        Patch(
            service_class, "get_persisted_event_service", one, service.get_persisted_event_service
        ),
        Patch(service_class, "delete_conversation", one, service.delete_conversation),
        Patch(service_class, "__aenter__", ("self",), service.enter),
        Patch(
            service_class,
            "__aexit__",
            ("self", "exc_type", "exc_value", "traceback"),
            service.leave,
        ),
        Patch(registry, "configure_service", ("self", "service"), service.configure_service),
        _serves_persisted_event_reads(registry),
        Patch(
            modules["runtime_router"],
            "bind_local_conversation_runtime",
            ("runtime_conversation_id", "request"),
            service.bind_runtime,
        ),
        Patch(event_class, "start", ("self",), events.start),
        Patch(event_class, "load_meta", ("self",), events.load_meta),
        Patch(event_class, "save_meta", ("self", "stored"), events.save_meta),
        Patch(
            event_class,
            "for_persisted_events",
            ("cls", "stored", "conversations_dir"),
            events.for_persisted_events,
        ),
        Patch(
            event_class,
            "_scrub_persisted_credentials",
            ("self", "credential_bindings"),
            events.scrub_persisted_credentials,
        ),
        ClassPatch(
            event_module,
            "ConversationLease",
            (),
            lambda installation, original: installation.lease_class,
            methods={
                "__init__": ("self", "conversation_dir", "owner_instance_id", "ttl_seconds"),
                "claim": ("self",),
                "renew": ("self", "generation"),
                "guarded_write": ("self", "generation"),
                "release": ("self", "generation"),
            },
        ),
        ClassPatch(
            modules["middleware"],
            "CORSDispatcher",
            (),
            forwarding.cors_dispatcher,
            methods={"__init__": ("self", "app", "allow_origins", "allow_origin_regex")},
        ),
        RoutePatch(
            modules["file_router"],
            "download_trajectory",
            ("conversation_id", "request"),
            trajectory.download_trajectory,
            router="file_router",
        ),
    ]


def _serves_persisted_event_reads(registry: Any) -> Patch:
    """A method taking the conversation since server 1.57; a property in 1.56."""
    if isinstance(vars(registry).get("serves_persisted_event_reads"), property):
        return PropertyPatch(
            registry,
            "serves_persisted_event_reads",
            ("self",),
            service.serves_persisted_event_reads_property,
        )
    return Patch(
        registry,
        "serves_persisted_event_reads",
        ("self", "_conversation_id"),
        service.serves_persisted_event_reads,
    )


def _needs(modules: dict[str, ModuleType]) -> list[str | None]:
    """What the replacements use of the server without replacing it."""
    conversations = modules["conversation_service"]
    event_module = modules["event_service"]
    lease = modules["conversation_lease"]
    return [
        missing_fields(
            conversations.ConversationService,
            {
                "conversations_dir",
                "owner_instance_id",
                "lease_ttl_seconds",
                "_conversation_records",
                "_event_services",
            },
        ),
        missing_attributes(conversations.ConversationService, {"_cipher_for"}),
        missing_fields(
            conversations._ConversationRecord,
            {"stored", "execution_status", "state_signature", "base_state_path", "cached_info"},
        ),
        missing_fields(
            event_module.EventService,
            {
                "stored",
                "conversations_dir",
                "agent",
                "cipher",
                "credential_bindings",
                "owner_instance_id",
                "lease_ttl_seconds",
                "_lease",
                "_lease_generation",
                "_persisted_events",
            },
        ),
        missing_attributes(
            event_module.EventService,
            {"conversation_dir", "_write_guard", "_without_stored_secret", "is_open", "close"},
        ),
        missing_attributes(
            event_module,
            {
                "HttpVersionedCredentialBinding",
                "CODEX_AUTH_SECRET_NAME",
                "CredentialNeedsReauthentication",
                "is_valid_codex_auth",
                "_without_agent_context_secret",
            },
        ),
        missing_attributes(
            lease, {"LeaseClaim", "ConversationLeaseHeldError", "ConversationOwnershipLostError"}
        ),
        missing_attributes(modules["file_router"], {"_create_zip_from_directory"}),
        missing_attributes(modules["cipher"].Cipher, {"try_decrypt_str"}),
        missing_attributes(modules["cipher"], {"FERNET_TOKEN_PREFIX"}),
    ]
