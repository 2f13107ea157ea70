"""OpenHands SDK integration: one store per conversation, and SDK code paths routed to it.

This module imports the SDK (``openhands-sdk``, the ``openhands`` extra) only when a
function here is called.

* :func:`conversation_store` gives the store for a conversation id on a shared engine:
  ``LocalConversation(..., conversation_id=cid, file_store=conversation_store(engine, cid))``.
* :func:`route_conversations` makes every conversation the SDK creates *without* a
  ``file_store`` (the ``Conversation(...)`` factory, ``fork()``, agent-hook
  sub-conversations) persist in sqlstore too.
"""

from __future__ import annotations

import inspect
import threading
import warnings
from collections.abc import Callable
from importlib import metadata
from types import TracebackType
from typing import Any, Self
from uuid import UUID

from sqlalchemy import Engine

from .store import SQLFileStore

__all__ = [
    "TESTED_SDK_VERSIONS",
    "ConversationRouting",
    "StoreFactory",
    "conversation_store",
    "namespace_for",
    "route_conversations",
]

#: The openhands-sdk versions :func:`route_conversations` is tested against.
TESTED_SDK_VERSIONS = ">=1.58,<1.59"
_REQUIRED_PARAMETERS = ("cls", "id", "agent", "workspace", "persistence_dir", "file_store")

StoreFactory = Callable[[Any], Any]


def namespace_for(conversation_id: UUID | str) -> str:
    """The namespace of a conversation: its UUID in hex, as the SDK names its directories."""
    if isinstance(conversation_id, UUID):
        return conversation_id.hex
    return str(conversation_id)


def conversation_store(engine: Engine, conversation_id: UUID | str) -> SQLFileStore:
    """The store of one conversation on a shared engine (opens no connection).

    Args:
        engine: An engine from :func:`sqlstore.create_engine`, shared by all conversations.
        conversation_id: The SDK's conversation id (a ``UUID``) or any string.
    """
    return SQLFileStore(engine, namespace_for(conversation_id))


class ConversationRouting:
    """An installed :func:`route_conversations`; ``uninstall()`` or leave the ``with`` block."""

    def __init__(self, factory: StoreFactory) -> None:
        self.factory = factory

    def uninstall(self) -> None:
        """Restore the SDK's own ``ConversationState.create``."""
        _uninstall(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.uninstall()


_lock = threading.Lock()
_active: ConversationRouting | None = None
_original: Any = None


def route_conversations(target: Engine | StoreFactory) -> ConversationRouting:
    """Persist every SDK conversation created without a ``file_store`` in sqlstore.

    The SDK builds conversations without an injected store in several places: the
    ``Conversation(...)`` factory (which rejects ``file_store=``), ``fork()``, and
    agent-hook sub-conversations. This wraps the one function they all go through,
    ``ConversationState.create``: when it is called with no ``file_store``, it gets
    the conversation's sqlstore store. It also keeps ``persistence_dir`` ``None`` on
    resume when a store was given and no directory was (the SDK 1.58 otherwise
    restores its default ``workspace/conversations``, which sends later forks and
    hooks to the local disk).

    Process-wide; calling it again replaces the target. This relies on SDK internals,
    so it checks them and fails loudly instead of misbehaving.

    Args:
        target: An engine (each conversation gets ``conversation_store(engine, id)``),
            or a callable taking the conversation id and returning a ``FileStore``.

    Returns:
        A handle whose ``uninstall()`` (or ``with`` block exit) restores the SDK.

    Raises:
        RuntimeError: the installed SDK's ``ConversationState.create`` is not the one
            this was written for.
        ImportError: the SDK is not installed (``pip install sqlstore[openhands]``).
    """
    global _active, _original
    from openhands.sdk.conversation.state import ConversationState

    factory: StoreFactory
    if isinstance(target, Engine):
        engine = target

        def factory(conversation_id: Any) -> Any:
            return conversation_store(engine, conversation_id)

    else:
        factory = target
    routing = ConversationRouting(factory)
    with _lock:
        if _original is None:
            original = ConversationState.__dict__["create"]
            function = original.__func__
            _check_sdk(function)
            signature = inspect.signature(function)

            def create(cls: Any, *args: Any, **kwargs: Any) -> Any:
                bound = signature.bind(cls, *args, **kwargs)
                arguments = bound.arguments
                active = _active
                if arguments.get("file_store") is None and active is not None:
                    arguments["file_store"] = active.factory(arguments["id"])
                state = function(*bound.args, **bound.kwargs)
                if (
                    arguments.get("file_store") is not None
                    and arguments.get("persistence_dir") is None
                    and state.persistence_dir is not None
                ):
                    # Bypass the model's __setattr__, which would re-save base_state.
                    object.__setattr__(state, "persistence_dir", None)
                return state

            ConversationState.create = classmethod(create)  # type: ignore[assignment,method-assign]
            _original = original
        _active = routing
    return routing


def _uninstall(routing: ConversationRouting) -> None:
    global _active, _original
    from openhands.sdk.conversation.state import ConversationState

    with _lock:
        if _active is not routing:
            return
        _active = None
        if _original is not None:
            ConversationState.create = _original  # type: ignore[method-assign]
            _original = None


def _check_sdk(function: Any) -> None:
    version = metadata.version("openhands-sdk")
    parameters = tuple(inspect.signature(function).parameters)
    missing = [name for name in _REQUIRED_PARAMETERS if name not in parameters]
    if missing:
        raise RuntimeError(
            f"sqlstore.sdk.route_conversations supports openhands-sdk {TESTED_SDK_VERSIONS}; "
            f"the installed {version} has ConversationState.create{tuple(parameters)}, "
            f"without {missing}"
        )
    if not version.startswith("1.58."):
        warnings.warn(
            f"sqlstore.sdk.route_conversations is tested with openhands-sdk "
            f"{TESTED_SDK_VERSIONS}, not {version}",
            RuntimeWarning,
            stacklevel=3,
        )
