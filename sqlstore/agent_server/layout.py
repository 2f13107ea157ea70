"""Where the agent server's state lives in sqlstore.

Each conversation is one namespace, named as the server names its directory (the
conversation id in hex, :func:`sqlstore.sdk.namespace_for`). Everything durable about
it lies inside: the SDK's ``base_state.json`` and ``events/``, the server's
``meta.json``, and the ownership record under ``.sqlstore/``. Deleting the namespace
deletes the conversation. The replicas' heartbeats have a namespace of their own.
"""

from __future__ import annotations

from pathlib import PurePath
from uuid import UUID

#: The server's conversation metadata (``StoredConversation``), as on disk.
META = "meta.json"
#: The SDK's state snapshot (``openhands.sdk.conversation.persistence_const.BASE_STATE``).
BASE_STATE = "base_state.json"
#: The SDK's event log directory.
EVENTS = "events"
#: Which replica owns the conversation, and the generation of that ownership.
OWNER = ".sqlstore/owner.json"
#: The lock a claim and every fenced write take, so the two serialise.
OWNER_LOCK = ".sqlstore/owner.lock"
#: Files the trajectory download leaves out: sqlstore's bookkeeping.
PRIVATE_DIR = ".sqlstore"

#: The namespace of the replica heartbeats (one file per running server).
REPLICAS_NAMESPACE = "sqlstore-agent-server-replicas"
#: The directory of the heartbeats inside it.
REPLICAS_DIR = "replicas"


def namespace_of(conversation_id: UUID) -> str:
    """The namespace of a conversation."""
    return conversation_id.hex


def conversation_of(path: str | PurePath) -> UUID:
    """The conversation a server path belongs to: ``<conversations>/<hex>[/<file>]``.

    Raises:
        ValueError: no component of the path is a conversation id.
    """
    parts = PurePath(path).parts
    for part in reversed(parts[-2:]):
        try:
            return UUID(hex=part)
        except ValueError:
            continue
    raise ValueError(f"not a conversation path: {path}")
