"""The agent server's conversation service on sqlstore behaves as the stock one.

Each test runs the same steps twice in this process: once on the stock server (its
conversations in a directory, nothing installed) and once with
:func:`sqlstore.agent_server.install` on a database, and compares what each observes.
The stock run is the reference, not a value written into the test.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from openhands.agent_server.conversation_service import ConversationService
from openhands.agent_server.models import StartConversationRequest
from openhands.agent_server.persistence import FileSecretsStore
from openhands.sdk import AgentContext
from openhands.sdk.agent import ACPAgent
from openhands.sdk.secret import StaticSecret
from openhands.sdk.utils.cipher import Cipher
from openhands.sdk.workspace import LocalWorkspace
from pydantic import SecretStr

import sqlstore
from sqlstore import agent_server

CODEX = "CODEX_AUTH_JSON"
LEGACY_VALUES = ("legacy-context-copy", "legacy-copy")


class Files:
    """Reads a conversation's stored files where the server under test keeps them."""

    def __init__(self, conversations_dir: Path, engine: sa.Engine | None) -> None:
        self.conversations_dir = conversations_dir
        self.engine = engine

    def read(self, conversation_id: uuid.UUID, name: str) -> bytes:
        if self.engine is None:
            return (self.conversations_dir / conversation_id.hex / name).read_bytes()
        return sqlstore.SQLFileStore(self.engine, conversation_id.hex).read_bytes(name)

    def write(self, conversation_id: uuid.UUID, name: str, content: bytes) -> None:
        if self.engine is None:
            (self.conversations_dir / conversation_id.hex / name).write_bytes(content)
        else:
            sqlstore.SQLFileStore(self.engine, conversation_id.hex).write(name, content)


@contextmanager
def server(kind: str, engine: sa.Engine, root: Path) -> Iterator[Files]:
    """The stock server (``kind == "stock"``) or the server on sqlstore."""
    conversations = root / kind / "conversations"
    if kind == "stock":
        yield Files(conversations, None)
        return
    with agent_server.install(engine, heartbeat_interval=0.2, dead_after=1.0):
        yield Files(conversations, engine)


def both(
    engine: sa.Engine, root: Path, steps: Callable[[Files, Path], Awaitable[Any]]
) -> tuple[Any, Any]:
    """What ``steps`` observes on the stock server, then on sqlstore."""
    observed = []
    for kind in ("stock", "sqlstore"):
        with server(kind, engine, root) as files:
            observed.append(asyncio.run(steps(files, root / kind)))
    return observed[0], observed[1]


# -- a credential the stock server scrubs on resume -------------------------------------


def _codex_request(workspace: Path) -> StartConversationRequest:
    agent = ACPAgent(
        acp_command=["codex-acp"],
        acp_server="codex",
        agent_context=AgentContext(
            secrets={
                CODEX: StaticSecret(value=SecretStr("legacy-context-copy")),
                "KEEP": StaticSecret(value=SecretStr("keep-context")),
            }
        ),
    )
    return StartConversationRequest(
        agent=agent,
        workspace=LocalWorkspace(working_dir=str(workspace)),
        secrets={CODEX: StaticSecret(value=SecretStr("legacy-copy"))},
    )


def _secret_names(state: Any) -> dict[str, list[str]]:
    context = state.agent.agent_context
    return {
        "agent": sorted((context.secrets or {}) if context else {}),
        "registry": sorted(state.secret_registry.secret_sources),
    }


def _resume_scrubs(cipher: Cipher | None) -> Callable[[Files, Path], Awaitable[Any]]:
    async def steps(files: Files, root: Path) -> dict[str, Any]:
        from openhands.sdk.conversation.state import ConversationState

        secrets_store = FileSecretsStore(root / "settings")
        request = _codex_request(root / "workspace")
        service = ConversationService(
            conversations_dir=files.conversations_dir, secrets_store=secrets_store, cipher=cipher
        )
        async with service:
            info, _ = await service.start_conversation(request)
            assert service._event_services is not None
            first = service._event_services.pop(info.id)
            state = await first.get_state()
            state.tags = {"persist": "registry"}
            await first.close()
            # The credential now has a canonical home: a resume must drop the copies
            # the conversation still persists (written before bindings existed).
            canonical = {"auth_mode": "chatgpt", "tokens": {"refresh_token": "canonical"}}
            secrets_store.set_secret(CODEX, json.dumps(canonical))

            _, started = await service.start_conversation(
                request.model_copy(update={"conversation_id": info.id, "secrets": {}})
            )
            resumed = service._event_services[info.id]
            live = await resumed.get_state()
            observed: dict[str, Any] = {
                "started": started,
                "live": _secret_names(live),
                "live agent": sorted(resumed.get_conversation().agent.agent_context.secrets),
            }
            live.tags = {"saved": "after the resume"}  # the next state save
        context = {"cipher": cipher} if cipher else None
        text = files.read(info.id, "base_state.json")
        stored = ConversationState.model_validate_json(text, context=context)
        meta = json.loads(files.read(info.id, "meta.json"))
        observed["stored"] = _secret_names(stored)
        observed["meta"] = sorted(meta.get("secrets") or {})
        observed["legacy values stored"] = [
            value
            for value in LEGACY_VALUES
            for stored_text in (text, files.read(info.id, "meta.json"))
            if value.encode() in stored_text
        ]
        if cipher is not None:  # encrypted: what decrypts must not be the credential
            decrypted = stored.model_dump_json(context={"expose_secrets": True})
            observed["legacy values decrypted"] = [v for v in LEGACY_VALUES if v in decrypted]
        return observed

    return steps


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "OH_SECRET_KEY"])
def test_a_resume_keeps_no_credential_the_stock_server_scrubs(
    engine: sa.Engine, tmp_path: Path, encrypted: bool
) -> None:
    cipher = Cipher("stock-comparison-key") if encrypted else None
    stock, ours = both(engine, tmp_path, _resume_scrubs(cipher))
    assert stock["live"]["agent"] == ["KEEP"], stock  # the reference scrubs
    assert ours == stock


# -- a create for a conversation another live server owns -------------------------------


async def _create_on_a_non_owner(files: Files, root: Path) -> dict[str, Any]:
    request = _codex_request(root / "workspace").model_copy(
        update={"secrets": {CODEX: StaticSecret(value=SecretStr("persisted-copy"))}}
    )
    async with ConversationService(conversations_dir=files.conversations_dir) as owner:
        info, _ = await owner.start_conversation(request)
        before = [files.read(info.id, name) for name in ("meta.json", "base_state.json")]
        canonical = FileSecretsStore(root / "settings")
        canonical.set_secret(CODEX, "canonical")
        async with ConversationService(
            conversations_dir=files.conversations_dir, secrets_store=canonical
        ) as non_owner:
            try:
                answer, started = await non_owner.start_conversation(
                    request.model_copy(update={"conversation_id": info.id, "secrets": {}})
                )
                outcome: Any = {"started": started, "id": answer.id == info.id}
            except Exception as error:  # what the API would answer 409 for
                outcome = type(error).__name__
        after = [files.read(info.id, name) for name in ("meta.json", "base_state.json")]
        return {"outcome": outcome, "stored files unchanged": after == before}


def test_a_create_on_a_server_that_does_not_own_the_conversation_answers_as_stock(
    engine: sa.Engine, tmp_path: Path
) -> None:
    stock, ours = both(engine, tmp_path, _create_on_a_non_owner)
    assert stock == {"outcome": {"started": False, "id": True}, "stored files unchanged": True}
    assert ours == stock


# -- lists after a state write -----------------------------------------------------------


async def _lists_after_a_state_write(files: Files, root: Path) -> dict[str, int]:
    from sqlstore.agent_server.catalog import FRESH

    request = _codex_request(root / "workspace").model_copy(update={"secrets": {}})
    async with ConversationService(conversations_dir=files.conversations_dir) as service:
        info, _ = await service.start_conversation(request)
        assert service._event_services is not None
        await service._event_services.pop(info.id).close()
        await service.search_conversations()  # the catalog knows the persisted state

        reads = 0
        load = service._load_persisted_state_sync

        def counted(conversation_id: uuid.UUID) -> Any:
            nonlocal reads
            reads += 1
            return load(conversation_id)

        service._load_persisted_state_sync = counted  # type: ignore[method-assign]
        state = json.loads(files.read(info.id, "base_state.json"))
        state["tags"] = {"written": "by another process"}
        files.write(info.id, "base_state.json", json.dumps(state).encode())
        titles = set()
        for _ in range(5):  # a sidebar polling right after the write
            page = await service.search_conversations()
            titles.add(tuple(sorted(page.items[0].tags.items())))
        soon = reads
        await asyncio.sleep(FRESH + 0.5)
        for _ in range(3):  # and once the write has settled
            await service.search_conversations()
        return {"reads soon after": soon, "reads in all": reads, "tags seen": len(titles)}


def test_a_list_after_a_fresh_state_write_reads_it_at_most_once_more_than_stock(
    engine: sa.Engine, tmp_path: Path
) -> None:
    stock, ours = both(engine, tmp_path, _lists_after_a_state_write)
    assert stock["reads soon after"] == stock["reads in all"] == 1, stock
    assert ours["tags seen"] == stock["tags seen"] == 1
    assert ours["reads soon after"] == stock["reads soon after"], ours
    assert ours["reads in all"] <= stock["reads in all"] + 1, ours
