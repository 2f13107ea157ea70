"""The OpenHands agent server on sqlstore, end to end: real server processes, one database.

For each database (SQLite, PostgreSQL, MariaDB, and PostgreSQL behind PgBouncer in
transaction pooling, for what ownership does) two replicas A and B run ``python -m
openhands.agent_server --import-modules sqlstore.agent_server`` on a fresh database that
they migrate together at start-up; on SQLite a third, C, has another ``OH_SECRET_KEY``.
The model is a scripted OpenAI-compatible server on 127.0.0.1 (no network). Every
replica of every database starts at once and serves all the tests of its database; the
tests that stop or kill a replica come last.
"""

from __future__ import annotations

import io
import json
import re
import signal
import socket
import sqlite3
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

import sqlstore
from sqlstore import admin
from tests.agent_server_harness import (
    Replica,
    Zygote,
    ZygoteProcess,
    example,
    send_until_accepted,
)
from tests.backends import database
from tests.conftest import _server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

AGENT_BACKENDS = ("sqlite", "postgresql", "mysql", "pgbouncer", "citus")
DIRECT_BACKENDS = ("sqlite", "postgresql", "mysql", "citus")
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
        until it wakes (see docs/guides/agent-server.md on frozen owners), which is not what the
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

    def freeze(self, replica: Replica, attempts: int = 50) -> None:
        """SIGSTOP ``replica`` at a moment it holds no write transaction of the database.

        On SQLite one writer at a time holds the whole file: a replica frozen inside
        any write (its heartbeat's, every second) stops every other replica's writes
        until it wakes (see docs/guides/agent-server.md on frozen owners). That is the
        embedded database's limit, not what the frozen-owner test is about; on the
        servers a frozen heartbeat holds only its own row.
        """
        for _ in range(attempts):
            replica.signal(signal.SIGSTOP)
            if self.backend != "sqlite" or not _sqlite_write_locked(self.url):
                return
            replica.signal(signal.SIGCONT)
            time.sleep(0.05)
        raise AssertionError(f"{replica} held the SQLite write lock at every try")

    def stored_events(self, conversation_id: str) -> list[dict[str, Any]]:
        store = sqlstore.SQLFileStore(self.engine, uuid.UUID(conversation_id).hex)
        names = sorted(p for p in store.list("events") if p.endswith(".json"))
        return [json.loads(store.read(name)) for name in names]


def _sqlite_write_locked(url: URL) -> bool:
    """Whether another connection holds the SQLite database's write lock right now."""
    assert url.database is not None
    probe = sqlite3.connect(url.database, timeout=0.2, isolation_level=None)
    try:
        probe.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as error:
        if error.sqlite_errorcode & 0xFF not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            raise
        return True
    else:
        probe.execute("ROLLBACK")
        return False
    finally:
        probe.close()


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
            wanted.update(spec.params[name] for name in ("pair",) if name in spec.params)
    return [backend for backend in AGENT_BACKENDS if backend in wanted]


@pytest.fixture(scope="module")
def zygote() -> Iterator[Zygote]:
    forker = Zygote()
    yield forker
    forker.close()


@pytest.fixture(scope="module")
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, zygote: Zygote
) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("agent-server")
    llm = example.ScriptedLLM()
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
                a, b = (Replica(zygote, name, text, root / backend / name) for name in ("a", "b"))
                # A replica with another OH_SECRET_KEY: one database shows what it does.
                c = Replica(zygote, "c", text, root / backend / "c", "another-secret-key")
                engine = sqlstore.create_engine(url)
                stack.callback(engine.dispose)
                pairs[backend] = Pair(backend, url, a, b, c, engine, root / "workspace", llm.url)
                replicas += [a, b, c] if backend == "sqlite" else [a, b]
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
            llm.close()
            for backend, seen in LATENCIES.items():
                median = sorted(seen)[len(seen) // 2]
                print(
                    f"\nlive events on {backend} through the non-owner: {len(seen)} events, "
                    f"max {max(seen) * 1000:.0f} ms, median {median * 1000:.0f} ms"
                )
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


#: Catalog and file tests run on the databases connected directly only.
direct = pytest.mark.parametrize("pair", DIRECT_BACKENDS, indirect=True)


def _texts(events: list[dict[str, Any]]) -> list[str]:
    return [example.message_text(e) for e in events if e["kind"] == "MessageEvent"]


# -- one replica -----------------------------------------------------------------------


def test_create_and_messages_land_in_the_database(pair: Pair) -> None:
    conversation = pair.create(pair.a, "first message")
    status, _ = pair.a.client.send(conversation, "second message")
    assert status == 200
    pair.a.client.wait_reply(conversation, "second message")
    pair.wait_quiet(conversation)  # the run's last state updates follow the reply
    events = pair.a.client.events(conversation)

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


@direct
def test_replicas_list_get_and_read_each_others_conversations(pair: Pair) -> None:
    on_a = pair.create(pair.a, "made on A")
    on_b = pair.create(pair.b, "made on B")
    owners = {on_a: pair.owner(on_a), on_b: pair.owner(on_b)}

    for reader in (pair.a, pair.b):
        assert {on_a, on_b} <= set(reader.client.conversation_ids())
        status, count = reader.client.call("GET", "/api/conversations/count")
        assert status == 200 and count >= 2
        for conversation in (on_a, on_b):
            status, info = reader.client.call("GET", f"/api/conversations/{conversation}")
            assert status == 200, info
            assert info["id"] == conversation and info["execution_status"] == "finished"
    assert pair.b.client.events(on_a) == pair.a.client.events(on_a)
    assert pair.a.client.events(on_b) == pair.b.client.events(on_b)
    # Reading claimed nothing.
    assert {on_a: pair.owner(on_a), on_b: pair.owner(on_b)} == owners


def test_a_write_to_a_replica_that_does_not_own_the_conversation_is_run_by_the_owner(
    pair: Pair,
) -> None:
    conversation = pair.create(pair.a, "owned by A")
    owner = pair.owner(conversation)

    status, answer = pair.b.client.send(conversation, "from B")
    assert status == 200, answer
    events = pair.b.client.wait_reply(conversation, "from B")
    assert _texts(events)[-2:] == ["from B", "You said: from B"]
    status, _ = pair.b.client.call("POST", f"/api/conversations/{conversation}/pause")
    assert status == 200
    assert pair.owner(conversation) == owner  # A ran both: nothing moved to B
    # The owner goes on.
    assert pair.a.client.send(conversation, "from A again")[0] == 200
    pair.a.client.wait_reply(conversation, "from A again")


@direct
def test_eight_conversations_created_at_once_across_both_replicas_are_listed_by_both(
    pair: Pair,
) -> None:
    replicas = [pair.a, pair.b] * 4
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [
            pool.submit(pair.create, replica, f"concurrent {index}")
            for index, replica in enumerate(replicas)
        ]
        created = {future.result(timeout=120) for future in futures}
    assert len(created) == 8
    for replica in (pair.a, pair.b):
        assert created <= set(replica.client.conversation_ids())


@direct
def test_a_fork_lands_in_the_database(pair: Pair) -> None:
    source = pair.create(pair.a, "to be forked")
    status, fork = pair.a.client.call("POST", f"/api/conversations/{source}/fork", {})
    assert status == 201, fork
    fork_id = fork["id"]

    files = pair.files(fork_id)
    assert {"meta.json", "base_state.json"} <= set(files)
    assert [e["id"] for e in pair.stored_events(fork_id)] == [
        e["id"] for e in pair.stored_events(source)
    ]
    assert fork_id in pair.b.client.conversation_ids()
    assert pair.b.client.events(fork_id) == pair.a.client.events(fork_id)


@direct
def test_the_trajectory_download_comes_from_the_database(pair: Pair) -> None:
    conversation = pair.create(pair.a, "download me")
    hex_id = uuid.UUID(conversation).hex
    # B never ran it: it has no directory for it.
    assert not (pair.b.conversations_dir / hex_id).exists()
    status, body = pair.b.client.call("GET", f"/api/file/download-trajectory/{conversation}")
    assert status == 200
    names = zipfile.ZipFile(io.BytesIO(body)).namelist()
    assert f"{hex_id}/meta.json" in names and f"{hex_id}/base_state.json" in names
    events = [n for n in names if n.startswith(f"{hex_id}/events/event-")]
    assert len(events) == len(pair.stored_events(conversation))
    assert not [n for n in names if ".sqlstore" in n]
    status, _ = pair.b.client.call("GET", f"/api/file/download-trajectory/{uuid.uuid4()}")
    assert status == 404


@direct
def test_delete_removes_the_namespace(pair: Pair) -> None:
    conversation = pair.create(pair.b, "delete me")
    assert pair.files(conversation)
    assert conversation in pair.a.client.conversation_ids()

    status, _ = pair.b.client.call("DELETE", f"/api/conversations/{conversation}")
    assert status == 200
    assert pair.files(conversation) == []
    assert conversation not in pair.a.client.conversation_ids()
    assert pair.a.client.call("GET", f"/api/conversations/{conversation}")[0] == 404


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


@direct
def test_sqlstore_import_of_a_stock_server_directory_carries_meta_and_skips_the_lease(
    pair: Pair, tmp_path: Path
) -> None:
    root = tmp_path / "conversations"
    conversation_id, directory = _stock_server_directory(root, pair.llm_url, pair.workspace)
    assert {"owner_lease.json", ".owner_lease.lock", "meta.json"} <= {
        p.name for p in directory.iterdir()
    }

    report = admin.import_directory(pair.engine, root)
    hex_id = conversation_id.hex
    assert sorted(report.skipped_paths) == [
        f"{hex_id}/.owner_lease.lock (lock file)",
        f"{hex_id}/events/.eventlog.lock (lock file)",
        f"{hex_id}/owner_lease.json (lease file)",
    ]
    store = sqlstore.SQLFileStore(pair.engine, hex_id)
    assert store.read_bytes("meta.json") == (directory / "meta.json").read_bytes()

    # Any replica lists it, and the first to write claims it (no stale lease blocks it).
    conversation = str(conversation_id)
    assert conversation in pair.b.client.conversation_ids()
    assert pair.b.client.send(conversation, "after the import")[0] == 200
    events = pair.b.client.wait_reply(conversation, "after the import")
    assert _texts(events) == [
        "written by a stock server",
        "after the import",
        "You said: after the import",
    ]


@direct
def test_a_restarted_non_owner_answers_the_runtime_routes_without_a_server_error(
    pair: Pair,
) -> None:
    """The routes bound to a conversation's runtime, asked of a replica that does not
    run it (restarted, so nothing of it is in memory) while its owner lives."""
    conversation = pair.create(pair.a, "owned by A, asked of B")
    owner = pair.owner(conversation)
    pair.b.terminate()
    pair.b.restart()
    base = f"/api/conversations/{conversation}"
    status, body = pair.b.client.call("GET", f"{base}/file/download-trajectory/{conversation}")
    assert status == 200, body
    hex_id = uuid.UUID(conversation).hex
    assert f"{hex_id}/meta.json" in zipfile.ZipFile(io.BytesIO(body)).namelist()
    for route in ("bash/bash_events/search", "vscode/status", "git/changes"):
        query = f"?path={pair.workspace}" if route.startswith("git") else ""
        status, body = pair.b.client.call("GET", f"{base}/{route}{query}")
        assert status == 200, (route, status, body)  # answered by A, which runs it
    assert pair.owner(conversation) == owner


# -- replicas stopping ------------------------------------------------------------------


@direct
def test_restart_with_a_wiped_directory_resumes_and_continues(pair: Pair) -> None:
    conversation = pair.create(pair.a, "before the restart")
    before = pair.a.client.events(conversation)

    pair.a.terminate()  # SIGTERM: a clean stop gives the conversation up
    assert pair.owner(conversation)["owner"] is None

    if pair.backend == "sqlite":
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

    pair.freeze(pair.a)
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

    # A client's request to the woken replica: A itself never writes. Either A still
    # takes itself for the owner and its fenced write is refused (409, nothing lands),
    # or one of its own late writes was refused already and it forwards the request to
    # B, the owner, which runs it (200).
    pair.wait_quiet(conversation)  # B's run is over: a 409 can only be the refusal
    events = pair.stored_events(conversation)
    status, answer = pair.a.client.send(conversation, "late write")
    assert status in (200, 409), answer
    if status == 409:
        assert "owned by another agent server instance" in answer["detail"], answer
        time.sleep(1.0)
        assert pair.stored_events(conversation) == events
    else:
        after = pair.b.client.wait_reply(conversation, "late write")
        assert [e["id"] for e in after[: len(events)]] == [e["id"] for e in events]
        assert _texts(after).count("late write") == 1
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


# -- a client of the replica that does not own the conversation ------------------------

#: Seconds from an event's creation to its arrival on a socket of another replica.
LIVE_BOUND = {"postgresql": 0.25, "sqlite": 1.0, "mysql": 1.0, "citus": 1.0}
#: The live-event latencies measured, by database (printed with ``pytest -s``).
LATENCIES: dict[str, list[float]] = {}


class Watcher:
    """The event socket of one replica, read in a thread: each event with its arrival."""

    def __init__(self, replica: Replica, conversation_id: str) -> None:
        from websockets.sync.client import connect

        base = replica.client.base.replace("http://", "ws://")
        self.socket = connect(f"{base}/sockets/events/{conversation_id}?resend_mode=all")
        self.arrivals: list[tuple[float, dict[str, Any]]] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            for frame in self.socket:
                self.arrivals.append((time.time(), json.loads(frame)))
        except ConnectionClosed:
            pass

    def ids(self) -> list[str]:
        return [event["id"] for _, event in self.arrivals]

    def close(self) -> None:
        self.socket.close()
        self.thread.join(timeout=10)


def _created(event: dict[str, Any]) -> float:
    """When the server created an event (its ``timestamp``, local time of this host)."""
    return datetime.fromisoformat(event["timestamp"]).timestamp()


@direct
def test_a_client_of_the_non_owner_runs_a_conversation_sees_every_event_live_and_goes_on(
    pair: Pair,
) -> None:
    """A client that only ever talks to B, while A owns and runs the conversation."""
    if not pair.a.alive():
        pair.a.restart()
    conversation = pair.create(pair.a, "owned by A, driven through B")
    owner = pair.owner(conversation)
    client = pair.b.client
    watcher = Watcher(pair.b, conversation)
    try:
        watched = time.time()
        assert client.send(conversation, "first through B")[0] == 200
        client.wait_reply(conversation, "first through B")
        # A message sent on B's socket reaches the agent on A.
        text = "second, on B's socket"
        watcher.socket.send(
            json.dumps({"role": "user", "content": [{"type": "text", "text": text}]})
        )
        client.wait_reply(conversation, text)
        pair.wait_quiet(conversation)
        status, body = client.call("GET", f"/api/file/download-trajectory/{conversation}")
        assert status == 200 and zipfile.ZipFile(io.BytesIO(body)).namelist()
    finally:
        watcher.close()
    stored = [event["id"] for event in pair.stored_events(conversation)]
    seen = [event_id for event_id in watcher.ids() if event_id in stored]
    assert len(seen) == len(set(seen)), "an event came twice"
    assert seen == stored, "an event is missing or out of order"
    latencies = [
        arrival - _created(event)
        for arrival, event in watcher.arrivals
        if event["id"] in stored and _created(event) > watched
    ]
    assert latencies
    LATENCIES.setdefault(pair.backend, []).extend(latencies)
    assert max(latencies) <= LIVE_BOUND[pair.backend], sorted(latencies)[-5:]
    assert pair.owner(conversation) == owner  # A ran it all

    pair.a.kill()  # the owner dies: the same client goes on with B
    status, _, answer = send_until_accepted(pair.b, conversation, "after A died", 30)
    assert status == 200, answer
    events = client.wait_reply(conversation, "after A died")
    again = Watcher(pair.b, conversation)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(again.ids()) < len(events):
            time.sleep(0.05)
    finally:
        again.close()
    assert [e["id"] for e in events] == [i for i in again.ids() if i in {e["id"] for e in events}]
    pair.a.restart()


# -- the example ------------------------------------------------------------------------


def test_the_example_shares_a_conversation_and_survives_killing_its_owner(
    zygote: Zygote,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``examples/agent_server_replicas.py`` as the agent-server guide runs it (its default,
    relative SQLite URL), with the replicas forked by the zygote instead of started cold.

    The first port it picks is taken (as when another process's connection gets a port
    between the pick and the server's bind): that replica starts again on another one.
    """
    monkeypatch.chdir(tmp_path)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = taken.getsockname()[1]
    ports = [busy]
    picked = example.free_port
    monkeypatch.setattr(example, "free_port", lambda: ports.pop(0) if ports else picked())
    launched: list[int] = []

    def launch(url: str, home: Path, port: int, telemetry: bool) -> ZygoteProcess:
        launched.append(port)
        return ZygoteProcess(zygote, url, home, port, telemetry=telemetry)

    with taken:
        example.main([], launch=launch)
    assert len(launched) == 3 and launched[0] == busy not in launched[1:]
    out = capsys.readouterr().out
    assert "database: sqlite:///agent-server-demo.db" in out
    assert "B lists it: True" in out
    assert "B forwards a write to A, which owns it: 200, and A ran it" in out
    took = re.search(r"B took the conversation over (\d+\.\d)s later", out)
    assert took is not None, out
    assert float(took.group(1)) <= TAKEOVER_BOUND
    assert "MessageEvent       agent   'You said: are you still there?'" in out
    assert (tmp_path / "agent-server-demo.db").is_file()
    # sqlstore's telemetry of the replicas: an append's span tree and the lock waits.
    assert "the last lock block that wrote (an append), as a span tree:" in out
    assert re.search(r"\n\s+sqlstore\.lock .* µs  \(waited [\d.]+ ms for the lock\)\n", out), out
    assert re.search(r"\n\s+sqlstore\.write ", out), out
    assert re.search(r"lock waits \(acquired\): \d+, mean", out), out
