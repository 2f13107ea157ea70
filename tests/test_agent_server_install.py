"""Installing sqlstore into the agent server: checked first, undone exactly, failing clearly.

These run in the test process (no server is started): ``install()`` patches the
server's classes and ``uninstall()`` must put every original back.
"""

from __future__ import annotations

import asyncio
import importlib
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
    assert "openhands-agent-server >=1.56,<1.59" in message
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


def test_a_patched_attribute_that_is_no_longer_a_function_is_listed_not_a_crash(
    sqlite_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(event_service.EventService, "load_meta", property(lambda self: None))
    with pytest.raises(
        RuntimeError, match=r"EventService\.load_meta is a property, not a function"
    ):
        agent_server.install(sqlite_engine)


def test_an_untested_release_is_refused_unless_the_operator_allows_it(
    sqlite_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    installing = importlib.import_module("sqlstore.agent_server.install")

    async def save_meta(self: Any, stored: Any = None, *, fsync: bool = True) -> None: ...

    monkeypatch.setattr(installing, "server_version", lambda: "1.59.0")
    monkeypatch.delenv(installing.ALLOW_UNTESTED, raising=False)
    with pytest.raises(RuntimeError, match="the release is untested") as refused:
        agent_server.install(sqlite_engine)
    assert f"{installing.ALLOW_UNTESTED}=1" in str(refused.value)

    monkeypatch.setattr(event_service.EventService, "save_meta", save_meta)
    monkeypatch.setenv(installing.ALLOW_UNTESTED, "1")
    before = _originals()
    with pytest.warns(RuntimeWarning, match="installing only what fits") as warned:
        installation = agent_server.install(sqlite_engine)
    try:
        assert "EventService.save_meta takes" in str(warned[0].message)
        assert event_service.EventService.save_meta is save_meta  # what differs stays stock
        assert event_service.ConversationLease is installation.lease_class  # the rest is in
    finally:
        installation.uninstall()
    assert _originals() == before


def test_the_1_56_registry_property_is_replaced_and_put_back(
    sqlite_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Server 1.56 asks ``serves_persisted_event_reads`` as a property (no conversation)."""
    from openhands.agent_server.conversation_registry import ConversationRegistry

    stock = property(lambda self: False)
    monkeypatch.setattr(ConversationRegistry, "serves_persisted_event_reads", stock)
    installation = agent_server.install(sqlite_engine)
    try:
        replaced = vars(ConversationRegistry)["serves_persisted_event_reads"]
        assert isinstance(replaced, property) and replaced is not stock
        registry = ConversationRegistry.__new__(ConversationRegistry)
        assert registry.serves_persisted_event_reads is False  # no service configured yet
        registry._sqlstore_conversation_service = object()  # type: ignore[attr-defined]
        assert registry.serves_persisted_event_reads is True
    finally:
        installation.uninstall()
    assert vars(ConversationRegistry)["serves_persisted_event_reads"] is stock
