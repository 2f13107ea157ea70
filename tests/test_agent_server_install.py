"""Installing sqlstore into the agent server: checked first, undone exactly, failing clearly.

These run in the test process (no server is started): ``install()`` patches the
server's classes and ``uninstall()`` must put every original back.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from openhands.agent_server import conversation_service, event_service, file_router
from openhands.agent_server.conversation_lease import ConversationLease
from openhands.agent_server.models import StoredConversation
from openhands.sdk.conversation.state import ConversationState
from openhands.sdk.secret import StaticSecret
from openhands.sdk.utils.cipher import Cipher
from openhands.sdk.workspace import LocalWorkspace

import sqlstore
from sqlstore import agent_server
from sqlstore.agent_server.install import _patches, _server_modules
from tests.sdk_helpers import agent


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[sa.Engine]:
    url = f"sqlite:///{tmp_path / 'server.db'}"
    sqlstore.migrate(url)
    engine = sqlstore.create_engine(url)
    yield engine
    engine.dispose()


def _originals() -> dict[str, Any]:
    return {
        patch.where: (vars(patch.owner).get(patch.name) if patch.name else None)
        for patch in _patches(_server_modules())
    } | {"route": _trajectory_route().endpoint}


def _trajectory_route() -> Any:
    return next(
        route
        for route in file_router.file_router.routes
        if getattr(route, "endpoint", None) in (file_router.download_trajectory,)
        or getattr(route, "path", "").endswith("/download-trajectory/{conversation_id}")
    )


def test_install_replaces_the_disk_paths_and_uninstall_puts_every_original_back(
    sqlite_engine: sa.Engine,
) -> None:
    before = _originals()
    installation = agent_server.install(sqlite_engine)
    try:
        assert event_service.ConversationLease is installation.lease_class
        assert (
            conversation_service.ConversationService._load_catalog_sync
            is not (
                before[
                    "openhands.agent_server.conversation_service:ConversationService._load_catalog_sync"
                ]
            )
        )
        assert _trajectory_route().endpoint is not before["route"]
        heartbeats = sqlstore.SQLFileStore(sqlite_engine, "sqlstore-agent-server-replicas")
        assert heartbeats.list("") == []  # nothing beats before a conversation is claimed
    finally:
        installation.uninstall()
    assert _originals() == before
    assert event_service.ConversationLease is ConversationLease
    installation.uninstall()  # twice is harmless


def test_installing_again_replaces_the_previous_installation(sqlite_engine: sa.Engine) -> None:
    before = _originals()
    first = agent_server.install(sqlite_engine)
    second = agent_server.install(sqlite_engine)
    try:
        assert not first.active and second.active
        assert event_service.ConversationLease is second.lease_class
    finally:
        second.uninstall()
    assert _originals() == before


def test_install_fails_listing_every_server_function_that_differs(
    sqlite_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def save_meta(self: Any, stored: Any = None, *, fsync: bool = True) -> None: ...

    monkeypatch.setattr(event_service.EventService, "save_meta", save_meta)
    monkeypatch.delattr(conversation_service, "_state_signature")
    before = _originals()
    with pytest.raises(RuntimeError) as failure:
        agent_server.install(sqlite_engine)
    message = str(failure.value)
    assert "openhands-agent-server >=1.58,<1.59" in message
    assert "event_service:EventService.save_meta takes ('self', 'stored', 'fsync')" in message
    assert "conversation_service:_state_signature is missing" in message
    assert _originals() == before, "a failed installation must change nothing"


def test_install_refuses_once_the_servers_app_is_built(
    sqlite_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "openhands.agent_server.api", object())  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match=r"--import-modules sqlstore\.agent_server"):
        agent_server.install(sqlite_engine)


def test_the_server_importing_sqlstore_without_a_url_fails_clearly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SQLSTORE_URL", raising=False)
    monkeypatch.setattr(
        sys, "argv", ["agent_server", "--import-modules", "x,sqlstore.agent_server"]
    )
    with pytest.raises(RuntimeError, match="SQLSTORE_URL is not set"):
        agent_server.install_from_environment()
    monkeypatch.setattr(sys, "argv", ["some-other-program"])
    assert agent_server.install_from_environment() is None


def test_a_conversation_encrypted_with_another_key_is_refused_by_name(
    sqlite_engine: sa.Engine, tmp_path: Path
) -> None:
    from sqlstore.agent_server.decryption import check_decryptable

    conversation = uuid.uuid4()
    token = Cipher("the key of replica A").encrypt(_secret("sk-live"))
    documents = {"base_state.json": json.dumps({"agent": {"llm": {"api_key": token}}}).encode()}
    check_decryptable(conversation, documents, Cipher("the key of replica A"))
    with pytest.raises(agent_server.ConversationDecryptionError, match=r"1 in base_state\.json"):
        check_decryptable(conversation, documents, Cipher("the key of replica B"))
    with pytest.raises(agent_server.ConversationDecryptionError, match="no OH_SECRET_KEY"):
        check_decryptable(conversation, documents, None)
    # A rotated-away key listed as a previous one still decrypts.
    check_decryptable(conversation, documents, Cipher("new key", ["the key of replica A"]))


def _secret(value: str) -> Any:
    from pydantic import SecretStr

    return SecretStr(value)


def test_bound_credentials_are_scrubbed_from_the_stored_conversation(
    sqlite_engine: sa.Engine, tmp_path: Path
) -> None:
    cipher = Cipher("shared key")
    conversation = uuid.uuid4()
    store = sqlstore.SQLFileStore(sqlite_engine, conversation.hex)
    workspace = LocalWorkspace(working_dir=str(tmp_path / "workspace"))
    state = ConversationState.create(
        id=conversation, agent=agent("hi"), workspace=workspace, cipher=cipher, file_store=store
    )
    state.secret_registry.update_secrets({"GITHUB_TOKEN": "ghp-x", "OTHER": "kept"})
    state._save_base_state(store)
    token = StaticSecret(value=_secret("ghp-x"))
    stored = StoredConversation(
        id=conversation, workspace=workspace, secrets={"GITHUB_TOKEN": token}
    )
    store.write("meta.json", stored.model_dump_json(context={"cipher": cipher}))

    installation = agent_server.install(sqlite_engine)
    try:
        service = event_service.EventService(
            stored=stored, conversations_dir=tmp_path / "conversations", cipher=cipher
        )
        asyncio.run(service._scrub_persisted_credentials({"GITHUB_TOKEN": object()}))
    finally:
        installation.uninstall()

    persisted = ConversationState.model_validate_json(
        store.read("base_state.json"), context={"cipher": cipher}
    )
    assert set(persisted.secret_registry.secret_sources) == {"OTHER"}
    meta = StoredConversation.model_validate_json(
        store.read("meta.json"), context={"cipher": cipher}
    )
    assert "GITHUB_TOKEN" not in meta.secrets and "GITHUB_TOKEN" not in service.stored.secrets
