"""The OpenHands agent server on sqlstore, end to end: real server processes, one database.

For each database (SQLite, PostgreSQL, MariaDB, and PostgreSQL behind PgBouncer in
transaction pooling) three replicas run ``python -m openhands.agent_server
--import-modules sqlstore.agent_server`` on a fresh database that they migrate together
at start-up: A and B share ``OH_SECRET_KEY``, C has another key. The model is a
scripted OpenAI-compatible server on 127.0.0.1 (no network). Every replica of every
database starts at once and serves all the tests of its database; the tests that stop
or kill a replica come last.
"""

from __future__ import annotations

import io
import json
import signal
import time
import uuid
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

import sqlstore
from sqlstore import admin
from tests.agent_server_harness import Replica, Zygote, example, send_until_accepted
from tests.backends import database
from tests.conftest import _server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

AGENT_BACKENDS = ("sqlite", "postgresql", "mysql", "pgbouncer")
#: The issue's bound for a takeover after the owner was killed.
TAKEOVER_BOUND = 5.0
#: What each takeover took, by database, printed at the end (``pytest -s``).
TAKEOVERS: dict[str, dict[str, float]] = {}


@dataclass
class Pair:
    """The replicas of one database, and a store-level view of that database."""

    backend: str
    url: URL
    a: Replica
    b: Replica
    c: Replica
    engine: sa.Engine
    workspace: Path
    llm_url: str

    def create(self, replica: Replica, text: str) -> str:
        conversation = replica.client.create(self.llm_url, str(self.workspace), text)
        replica.client.wait_reply(conversation, text)
        return conversation

    def files(self, conversation_id: str) -> list[str]:
        try:
            entries = admin.ls(self.engine, uuid.UUID(conversation_id).hex, recursive=True)
        except FileNotFoundError:
            return []
        return [entry.path for entry in entries]

    def owner(self, conversation_id: str) -> dict[str, Any]:
        store = sqlstore.SQLFileStore(self.engine, uuid.UUID(conversation_id).hex)
        record: dict[str, Any] = json.loads(store.read(".sqlstore/owner.json"))
        return record

    def wait_quiet(self, conversation_id: str, quiet: float = 1.0, timeout: float = 30.0) -> None:
        """Wait until nothing of the conversation has changed for ``quiet`` seconds.

        The owner finishes a run with a few writes after the reply (state, title); a
        process frozen inside one of those transactions would hold the owner lock
        until it wakes (see the README on frozen owners), which is not what the
        frozen-owner test is about.
        """
        namespace = uuid.UUID(conversation_id).hex
        last: object = None
        since = time.monotonic()
        deadline = since + timeout
        while time.monotonic() < deadline:
            entries = admin.ls(self.engine, namespace, recursive=True)
            now = [(e.path, e.size, e.updated_at) for e in entries]
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return
            time.sleep(0.1)
        raise TimeoutError(f"{conversation_id} kept changing for {timeout}s")

    def stored_events(self, conversation_id: str) -> list[dict[str, Any]]:
        store = sqlstore.SQLFileStore(self.engine, uuid.UUID(conversation_id).hex)
        names = sorted(p for p in store.list("events") if p.endswith(".json"))
        return [json.loads(store.read(name)) for name in names]


@dataclass
class Cluster:
    pairs: dict[str, Pair | str]


def _url(backend: str, stack: ExitStack, tmp: Path) -> URL:
    if backend == "sqlite":
        return make_url(f"sqlite:///{tmp / 'agent-server.db'}")
    return stack.enter_context(database(_server(backend)))


def _selected(request: pytest.FixtureRequest) -> list[str]:
    """The databases whose tests this session runs (all of them unless deselected)."""
    wanted = set()
    for item in request.session.items:
        spec = getattr(item, "callspec", None)
        if spec is not None and item.module is request.module:
            wanted.update(
                spec.params[name] for name in ("pair", "direct_pair") if name in spec.params
            )
    return [backend for backend in AGENT_BACKENDS if backend in wanted]


@pytest.fixture(scope="module")
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("agent-server")
    llm = example.ScriptedLLM()
    zygote = Zygote()
    replicas: list[Replica] = []
    pairs: dict[str, Pair | str] = {}
    with ExitStack() as stack:
        try:
            for backend in _selected(request):
                try:
                    url = _url(backend, stack, root / backend)
                except pytest.skip.Exception as skip:
                    pairs[backend] = str(skip)
                    continue
                (root / backend).mkdir(exist_ok=True)
                text = url.render_as_string(hide_password=False)
                a, b, c = (
                    Replica(zygote, name, text, root / backend / name, key)
                    for name, key in (
                        ("a", example.SECRET_KEY),
                        ("b", example.SECRET_KEY),
                        ("c", "another-secret-key"),
                    )
                )
                engine = sqlstore.create_engine(url)
                stack.callback(engine.dispose)
                pairs[backend] = Pair(backend, url, a, b, c, engine, root / "workspace", llm.url)
                replicas += [a, b, c]
            for replica in replicas:  # all at once: each migrates the fresh database
                replica.start()
            for replica in replicas:
                replica.wait_ready()
            yield Cluster(pairs)
        finally:
            for replica in replicas:
                if replica.pid and replica.alive():
                    replica.signal(signal.SIGCONT)
                    replica.kill()
            zygote.close()
            llm.close()
            for backend, times in TAKEOVERS.items():
                print(
                    f"\ntakeover on {backend}: "
                    + ", ".join(f"{k} {v:.2f}s" for k, v in times.items())
                )


def _pair(cluster: Cluster, backend: str) -> Pair:
    found = cluster.pairs.get(backend, "not selected")
    if isinstance(found, str):
        pytest.skip(found)
    return found


@pytest.fixture(scope="module", params=AGENT_BACKENDS)
def pair(request: pytest.FixtureRequest, cluster: Cluster) -> Pair:
    """The replicas of each database, PgBouncer included (for what ownership does)."""
    return _pair(cluster, request.param)


@pytest.fixture(scope="module", params=[b for b in AGENT_BACKENDS if b != "pgbouncer"])
def direct_pair(request: pytest.FixtureRequest, cluster: Cluster) -> Pair:
    """The replicas of each database, connected directly (catalog and files)."""
    return _pair(cluster, request.param)


def _texts(events: list[dict[str, Any]]) -> list[str]:
    return [example.message_text(e) for e in events if e["kind"] == "MessageEvent"]


# -- one replica -----------------------------------------------------------------------


def test_create_and_messages_land_in_the_database(pair: Pair) -> None:
    conversation = pair.create(pair.a, "first message")
    status, _ = pair.a.client.send(conversation, "second message")
    assert status == 200
    events = pair.a.client.wait_reply(conversation, "second message")

    assert _texts(events) == [
        "first message",
        "You said: first message",
        "second message",
        "You said: second message",
    ]
    stored = pair.stored_events(conversation)
    assert [e["id"] for e in stored] == [e["id"] for e in events]
    files = pair.files(conversation)
    assert {"meta.json", "base_state.json", ".sqlstore/owner.json"} <= set(files)
    assert pair.owner(conversation)["owner"] is not None
    # Nothing of the conversation on the replica's disk.
    on_disk = pair.a.conversations_dir / uuid.UUID(conversation).hex
    assert not [p for p in on_disk.rglob("*") if p.is_file()]


# -- two replicas ----------------------------------------------------------------------


def test_replicas_list_get_and_read_each_others_conversations(direct_pair: Pair) -> None:
    on_a = direct_pair.create(direct_pair.a, "made on A")
    on_b = direct_pair.create(direct_pair.b, "made on B")
    owners = {on_a: direct_pair.owner(on_a), on_b: direct_pair.owner(on_b)}

    for reader in (direct_pair.a, direct_pair.b):
        assert {on_a, on_b} <= set(reader.client.conversation_ids())
        status, count = reader.client.call("GET", "/api/conversations/count")
        assert status == 200 and count >= 2
        for conversation in (on_a, on_b):
            status, info = reader.client.call("GET", f"/api/conversations/{conversation}")
            assert status == 200, info
            assert info["id"] == conversation and info["execution_status"] == "finished"
    assert direct_pair.b.client.events(on_a) == direct_pair.a.client.events(on_a)
    assert direct_pair.a.client.events(on_b) == direct_pair.b.client.events(on_b)
    # Reading claimed nothing.
    assert {on_a: direct_pair.owner(on_a), on_b: direct_pair.owner(on_b)} == owners


def test_a_write_to_a_replica_that_does_not_own_the_conversation_is_409(pair: Pair) -> None:
    conversation = pair.create(pair.a, "owned by A")
    before = pair.stored_events(conversation)

    status, answer = pair.b.client.send(conversation, "from B")
    assert status == 409
    assert answer["detail"] == (
        "Conversation is owned by another agent server instance; the write was refused"
    )
    status, _ = pair.b.client.call("POST", f"/api/conversations/{conversation}/pause")
    assert status == 409
    assert pair.stored_events(conversation) == before
    # The owner goes on.
    assert pair.a.client.send(conversation, "from A again")[0] == 200
    pair.a.client.wait_reply(conversation, "from A again")


def test_eight_conversations_created_at_once_across_both_replicas_are_listed_by_both(
    direct_pair: Pair,
) -> None:
    replicas = [direct_pair.a, direct_pair.b] * 4
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [
            pool.submit(direct_pair.create, replica, f"concurrent {index}")
            for index, replica in enumerate(replicas)
        ]
        created = {future.result(timeout=120) for future in futures}
    assert len(created) == 8
    for replica in (direct_pair.a, direct_pair.b):
        assert created <= set(replica.client.conversation_ids())


def test_a_fork_lands_in_the_database(direct_pair: Pair) -> None:
    source = direct_pair.create(direct_pair.a, "to be forked")
    status, fork = direct_pair.a.client.call("POST", f"/api/conversations/{source}/fork", {})
    assert status == 201, fork
    fork_id = fork["id"]

    files = direct_pair.files(fork_id)
    assert {"meta.json", "base_state.json"} <= set(files)
    assert [e["id"] for e in direct_pair.stored_events(fork_id)] == [
        e["id"] for e in direct_pair.stored_events(source)
    ]
    assert fork_id in direct_pair.b.client.conversation_ids()
    assert direct_pair.b.client.events(fork_id) == direct_pair.a.client.events(fork_id)


def test_the_trajectory_download_comes_from_the_database(direct_pair: Pair) -> None:
    conversation = direct_pair.create(direct_pair.a, "download me")
    hex_id = uuid.UUID(conversation).hex
    # B never ran it: it has no directory for it.
    assert not (direct_pair.b.conversations_dir / hex_id).exists()
    status, body = direct_pair.b.client.call("GET", f"/api/file/download-trajectory/{conversation}")
    assert status == 200
    names = zipfile.ZipFile(io.BytesIO(body)).namelist()
    assert f"{hex_id}/meta.json" in names and f"{hex_id}/base_state.json" in names
    events = [n for n in names if n.startswith(f"{hex_id}/events/event-")]
    assert len(events) == len(direct_pair.stored_events(conversation))
    assert not [n for n in names if ".sqlstore" in n]
    status, _ = direct_pair.b.client.call("GET", f"/api/file/download-trajectory/{uuid.uuid4()}")
    assert status == 404


def test_delete_removes_the_namespace(direct_pair: Pair) -> None:
    conversation = direct_pair.create(direct_pair.b, "delete me")
    assert direct_pair.files(conversation)
    assert conversation in direct_pair.a.client.conversation_ids()

    status, _ = direct_pair.b.client.call("DELETE", f"/api/conversations/{conversation}")
    assert status == 200
    assert direct_pair.files(conversation) == []
    assert conversation not in direct_pair.a.client.conversation_ids()
    assert direct_pair.a.client.call("GET", f"/api/conversations/{conversation}")[0] == 404


def _stock_server_directory(root: Path, llm_url: str, workspace: Path) -> tuple[uuid.UUID, Path]:
    """A conversation as the stock server leaves it on disk, lease files included."""
    from openhands.agent_server.conversation_lease import ConversationLease
    from openhands.agent_server.models import StoredConversation
    from openhands.sdk import LLM, Agent
    from openhands.sdk.conversation.impl.local_conversation import LocalConversation
    from openhands.sdk.utils.cipher import Cipher
    from openhands.sdk.workspace import LocalWorkspace
    from pydantic import SecretStr

    cipher = Cipher(example.SECRET_KEY)
    conversation_id = uuid.uuid4()
    llm = LLM(model="openai/scripted", base_url=llm_url, api_key=SecretStr("k"), usage_id="agent")
    conversation = LocalConversation(
        agent=Agent(llm=llm, tools=[]),
        workspace=str(workspace),
        persistence_dir=str(root),
        conversation_id=conversation_id,
        cipher=cipher,
        visualizer=None,
    )
    conversation.send_message("written by a stock server")
    conversation.close()
    directory = root / conversation_id.hex
    stored = StoredConversation(
        id=conversation_id, workspace=LocalWorkspace(working_dir=str(workspace))
    )
    (directory / "meta.json").write_text(stored.model_dump_json(context={"cipher": cipher}))
    ConversationLease(conversation_dir=directory, owner_instance_id="stock-server").claim()
    return conversation_id, directory


def test_sqlstore_import_of_a_stock_server_directory_carries_meta_and_skips_the_lease(
    direct_pair: Pair, tmp_path: Path
) -> None:
    root = tmp_path / "conversations"
    conversation_id, directory = _stock_server_directory(
        root, direct_pair.llm_url, direct_pair.workspace
    )
    assert {"owner_lease.json", ".owner_lease.lock", "meta.json"} <= {
        p.name for p in directory.iterdir()
    }

    report = admin.import_directory(direct_pair.engine, root)
    hex_id = conversation_id.hex
    assert sorted(report.skipped_paths) == [
        f"{hex_id}/.owner_lease.lock (lock file)",
        f"{hex_id}/events/.eventlog.lock (lock file)",
        f"{hex_id}/owner_lease.json (lease file)",
    ]
    store = sqlstore.SQLFileStore(direct_pair.engine, hex_id)
    assert store.read_bytes("meta.json") == (directory / "meta.json").read_bytes()

    # Any replica lists it, and the first to write claims it (no stale lease blocks it).
    conversation = str(conversation_id)
    assert conversation in direct_pair.b.client.conversation_ids()
    assert direct_pair.b.client.send(conversation, "after the import")[0] == 200
    events = direct_pair.b.client.wait_reply(conversation, "after the import")
    assert _texts(events) == [
        "written by a stock server",
        "after the import",
        "You said: after the import",
    ]


# -- replicas stopping ------------------------------------------------------------------


def test_restart_with_a_wiped_directory_resumes_and_continues(pair: Pair) -> None:
    conversation = pair.create(pair.a, "before the restart")
    before = pair.a.client.events(conversation)

    pair.a.terminate()  # SIGTERM: a clean stop gives the conversation up
    assert pair.owner(conversation)["owner"] is None

    # A replica with another OH_SECRET_KEY may claim it, but refuses to run it.
    status, answer = pair.c.client.send(conversation, "from the wrong key")
    assert status == 500
    assert "OH_SECRET_KEY" in answer["exception"], answer
    assert pair.owner(conversation)["owner"] is None, "the refused replica kept the claim"
    assert [e["id"] for e in pair.stored_events(conversation)] == [e["id"] for e in before]

    pair.a.restart(wipe=True)
    status, info = pair.a.client.call("GET", f"/api/conversations/{conversation}")
    assert status == 200 and info["execution_status"] == "finished"
    assert pair.a.client.events(conversation) == before
    assert pair.a.client.send(conversation, "after the restart")[0] == 200
    after = pair.a.client.wait_reply(conversation, "after the restart")
    assert after[: len(before)] == before
    assert _texts(after)[-2:] == ["after the restart", "You said: after the restart"]


def test_a_frozen_owner_is_taken_over_and_its_late_write_is_refused(pair: Pair) -> None:
    conversation = pair.create(pair.a, "owned by A, then frozen")
    first_owner = pair.owner(conversation)
    pair.wait_quiet(conversation)

    pair.a.signal(signal.SIGSTOP)
    try:
        status, elapsed, answer = send_until_accepted(pair.b, conversation, "taken over", 30)
        assert status == 200, answer
        pair.b.client.wait_reply(conversation, "taken over")
    finally:
        pair.a.signal(signal.SIGCONT)
    TAKEOVERS.setdefault(pair.backend, {})["after SIGSTOP"] = elapsed
    owner = pair.owner(conversation)
    assert owner["owner"] != first_owner["owner"]
    assert owner["generation"] == first_owner["generation"] + 1
    events = pair.stored_events(conversation)

    status, answer = pair.a.client.send(conversation, "late write")
    assert status == 409, answer
    time.sleep(1.0)
    assert pair.stored_events(conversation) == events
    assert "late write" not in _texts(events)
    assert pair.owner(conversation) == owner
    # The woken replica still reads it, and B goes on writing.
    assert pair.a.client.events(conversation) == pair.b.client.events(conversation)
    assert pair.b.client.send(conversation, "B goes on")[0] == 200
    pair.b.client.wait_reply(conversation, "B goes on")


def test_a_killed_owner_is_taken_over_within_the_bound(pair: Pair) -> None:
    conversation = pair.create(pair.a, "owned by A, then killed")

    pair.a.kill()
    status, elapsed, answer = send_until_accepted(pair.b, conversation, "after the kill", 30)
    assert status == 200, answer
    TAKEOVERS.setdefault(pair.backend, {})["after SIGKILL"] = elapsed
    assert elapsed <= TAKEOVER_BOUND
    events = pair.b.client.wait_reply(conversation, "after the kill")
    assert _texts(events)[-2:] == ["after the kill", "You said: after the kill"]
