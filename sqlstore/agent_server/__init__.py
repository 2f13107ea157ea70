r"""The OpenHands agent server on sqlstore: conversations outlive containers; replicas share.

Run the server with this module imported and a database URL::

    SQLSTORE_URL=postgresql+psycopg://app@db/agents OH_SECRET_KEY=... \\
        python -m openhands.agent_server --import-modules sqlstore.agent_server

Importing this module with ``SQLSTORE_URL`` set migrates the database (unless
``SQLSTORE_MIGRATE=0``) and calls :func:`install`. Without it, nothing happens on
import, except when the server itself was told to import this module: then the
missing URL is an error rather than a server that silently keeps its conversations
on local disk. Embedders call :func:`install` themselves before building the app.

Environment: ``SQLSTORE_URL`` (the database), ``SQLSTORE_MIGRATE`` (``0``: do not
migrate), ``SQLSTORE_REPLICA_DEAD_AFTER`` (seconds without a heartbeat before another
replica takes a replica's conversations over; default 3; heartbeats every third of it),
``SQLSTORE_REPLICA_URL`` (the URL the other replicas reach this one on, for forwarding;
default ``http://127.0.0.1:<--port>``, which works for replicas on one host; ``off``:
nothing is forwarded to this replica).
"""

from __future__ import annotations

import os
import sys

from .decryption import ConversationDecryptionError
from .install import TESTED_SERVER_VERSIONS, Installation, install
from .ownership import DEAD_AFTER, owned_elsewhere_error

__all__ = [
    "TESTED_SERVER_VERSIONS",
    "ConversationDecryptionError",
    "Installation",
    "install",
    "install_from_environment",
    "installation",
    "owned_elsewhere_error",
]


def install_from_environment() -> Installation | None:
    """Install on ``SQLSTORE_URL``, migrating first unless ``SQLSTORE_MIGRATE=0``.

    Returns:
        The installation, or ``None`` when ``SQLSTORE_URL`` is not set (outside the
        server).

    Raises:
        RuntimeError: ``SQLSTORE_URL`` is not set but the agent server was told to
            import this module.
    """
    url = os.environ.get("SQLSTORE_URL")
    if not url:
        if _imported_by_server():
            raise RuntimeError(
                "the agent server imports sqlstore.agent_server but SQLSTORE_URL is not "
                "set: set it to the database every replica shares"
            )
        return None
    import sqlstore

    engine = sqlstore.create_engine(url)
    if os.environ.get("SQLSTORE_MIGRATE", "1") != "0":
        sqlstore.migrate(engine)
    dead_after = float(os.environ.get("SQLSTORE_REPLICA_DEAD_AFTER", DEAD_AFTER))
    url = os.environ.get("SQLSTORE_REPLICA_URL") or f"http://127.0.0.1:{_server_port()}"
    return install(
        engine,
        heartbeat_interval=dead_after / 3,
        dead_after=dead_after,
        replica_url=None if url == "off" else url,
    )


def _server_port() -> int:
    """The port the server was told to listen on (``--port``; its default 8000)."""
    argv = sys.argv[1:]
    for index, argument in enumerate(argv):
        if argument == "--port" and index + 1 < len(argv):
            return int(argv[index + 1])
        if argument.startswith("--port="):
            return int(argument.split("=", 1)[1])
    return 8000


def _imported_by_server() -> bool:
    """Whether this process is the agent server started with ``--import-modules`` us."""
    argv = sys.argv[1:]
    for index, argument in enumerate(argv):
        value = None
        if argument == "--import-modules" and index + 1 < len(argv):
            value = argv[index + 1]
        elif argument.startswith("--import-modules="):
            value = argument.split("=", 1)[1]
        if value and __name__ in [name.strip() for name in value.split(",")]:
            return True
    return False


#: The installation made on import from ``SQLSTORE_URL``, if any.
installation = install_from_environment()
