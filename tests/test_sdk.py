"""sqlstore under the real OpenHands SDK: conversations persist, resume and continue."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from openhands.sdk.conversation.event_store import EventLog
from openhands.sdk.conversation.impl.local_conversation import LocalConversation
from openhands.sdk.conversation.state import ConversationState
from openhands.sdk.io import FileStore
from openhands.sdk.workspace import LocalWorkspace

import sqlstore
from sqlstore.sdk import conversation_store, namespace_for, route_conversations
from tests.sdk_helpers import (
    agent,
    append_worker,
    event_processes,
    message_event,
    new_id,
    summary,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "resume_conversation.py"


def _url(url: sa.URL) -> str:
    return url.render_as_string(hide_password=False)


def _example(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=240,
    )


def _phase(url: sa.URL, cid: str, step: str) -> dict[str, list[dict[str, str]]]:
    done = _example("--url", _url(url), "--phase", step, "--id", cid)
    assert done.returncode == 0, done.stderr
    result: dict[str, list[dict[str, str]]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_store_is_a_file_store(store: sqlstore.SQLFileStore) -> None:
    assert isinstance(store, FileStore)


def test_conversation_survives_processes(
    migrated_url: sa.URL, engine: sa.Engine, tmp_path: Path
) -> None:
    """Process 1 starts a conversation, process 2 resumes and continues it, this one reads it."""
    cid = str(new_id())
    first = _phase(migrated_url, cid, "start")
    assert [e["type"] for e in first["after"]] == [
        "SystemPromptEvent",
        "MessageEvent",
        "MessageEvent",
    ]
    assert first["resumed"] == []

    second = _phase(migrated_url, cid, "resume")
    assert second["resumed"] == first["after"]  # same types, ids and order
    assert len(second["after"]) == len(first["after"]) + 2
    assert second["after"][-1]["text"] == "Still here, after a restart."

    # A third process (this one) sees everything and can continue once more.
    store = conversation_store(engine, uuid.UUID(cid))
    conversation = LocalConversation(
        agent=agent("Third process."),
        workspace=str(tmp_path),
        conversation_id=uuid.UUID(cid),
        file_store=store,
        visualizer=None,
    )
    seen = [{"id": e.id, "type": type(e).__name__} for e in conversation.state.events]
    assert seen == [{"id": e["id"], "type": e["type"]} for e in second["after"]]
    conversation.send_message("one more")
    conversation.run()
    conversation.close()
    files = [p for p in store.list("events") if p.endswith(".json")]
    assert len(files) == len(second["after"]) + 2


def test_resume_example_runs_from_the_readme(tmp_path: Path) -> None:
    """The README's first command: the example on the embedded SQLite default."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    assert "identical to what process 1 wrote: True" in done.stdout
    assert (tmp_path / "sqlstore-demo.db").exists()
    assert "Still here, after a restart." in done.stdout


def test_conversation_state_create_and_resume(store: sqlstore.SQLFileStore, tmp_path: Path) -> None:
    cid = new_id()
    workspace = LocalWorkspace(working_dir=str(tmp_path))
    state = ConversationState.create(
        id=cid, agent=agent("unused"), workspace=workspace, file_store=store
    )
    assert store.exists("base_state.json")
    for i in range(3):
        state.events.append(message_event(f"event {i}"))
    written = summary(state.events)

    resumed = ConversationState.create(id=cid, agent=None, workspace=workspace, file_store=store)
    assert summary(resumed.events) == written
    assert resumed.agent.llm.model == state.agent.llm.model
    assert resumed.id == cid


def test_event_log_threads(store: sqlstore.SQLFileStore) -> None:
    errors: list[BaseException] = []
    ids: list[str] = []

    def appender(worker: int) -> None:
        log = EventLog(store, dir_path="events")
        try:
            for i in range(10):
                event = message_event(f"thread {worker} event {i}")
                log.append(event)
                ids.append(event.id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=appender, args=(w,)) for w in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    _assert_log(store, ids, 50)


def test_event_log_processes(migrated_url: sa.URL, engine: sa.Engine) -> None:
    namespace = namespace_for(new_id())
    context = event_processes()
    with context.Pool(4) as pool:
        results = pool.starmap(
            append_worker, [(_url(migrated_url), namespace, w, 50) for w in range(4)]
        )
    ids = [i for worker_ids in results for i in worker_ids]
    _assert_log(sqlstore.SQLFileStore(engine, namespace), ids, 200)


def _assert_log(store: sqlstore.SQLFileStore, ids: list[str], count: int) -> None:
    log = EventLog(store, dir_path="events")
    assert len(log) == count
    assert sorted(e.id for e in log) == sorted(ids)
    names = [p.rsplit("/", 1)[1] for p in store.list("events") if p.endswith(".json")]
    assert [int(n.split("-")[1]) for n in names] == list(range(count))  # contiguous
    assert store.list("events").count(f"events/.eventlog-len-{count}.marker") == 1
    assert not store.exists("events/.eventlog.lock")


def test_files_the_sdk_relies_on(store: sqlstore.SQLFileStore) -> None:
    """Markers, dotfiles and the events/ listing behave as the EventLog expects."""
    log = EventLog(store, dir_path="events")
    assert len(log) == 0
    first = message_event("one")
    log.append(first)
    listing = store.list("events")
    assert listing == ["events/.eventlog-len-1.marker", f"events/event-00000-{first.id}.json"]
    assert store.read("events/.eventlog-len-1.marker") == ""
    store.delete("events/.eventlog-len-0.marker")  # a missing marker: no error
    # A second log on the same store catches up from the listing.
    other = EventLog(store, dir_path="events")
    other.append(message_event("two"))
    log.append(message_event("three"))
    assert len(EventLog(store, dir_path="events")) == 3
    # The SDK's own base-state file sits beside the events/ directory.
    store.write("base_state.json", "{}")
    assert store.list("") == ["base_state.json", "events/"]


def test_fork_lands_in_sqlstore(engine: sa.Engine, tmp_path: Path) -> None:
    cid = new_id()
    with route_conversations(engine):
        conversation = LocalConversation(
            agent=agent("original"),
            workspace=str(tmp_path),
            conversation_id=cid,
            file_store=conversation_store(engine, cid),
            visualizer=None,
        )
        conversation.send_message("hi")
        conversation.run()
        fork = conversation.fork()
        assert isinstance(fork.state._fs, sqlstore.SQLFileStore)
        assert fork.state._fs.namespace == namespace_for(fork.id)
        events = summary(conversation.state.events)
        assert [t for t, _ in summary(fork.state.events)] == [t for t, _ in events]
        fork.close()
        conversation.close()

        # The fork reopens from its own namespace in the database.
        fork_store = conversation_store(engine, fork.id)
        assert fork_store.exists("base_state.json")
        reopened = LocalConversation(
            agent=None,
            workspace=str(tmp_path),
            conversation_id=fork.id,
            file_store=fork_store,
            visualizer=None,
        )
        assert len(reopened.state.events) == len(events)
        assert reopened.state.persistence_dir is None
        reopened.close()


def test_routing_covers_the_conversation_factory(engine: sa.Engine, tmp_path: Path) -> None:
    from openhands.sdk import Conversation

    cid = new_id()
    with route_conversations(engine):
        conversation = Conversation(
            agent=agent("hello"),
            workspace=str(tmp_path),
            conversation_id=cid,
            visualizer=None,
        )
        conversation.send_message("hi")
        conversation.run()
        conversation.close()
    store = conversation_store(engine, cid)
    assert store.exists("base_state.json")
    assert len([p for p in store.list("events") if p.endswith(".json")]) == 3
    assert not list(tmp_path.glob("**/base_state.json"))  # nothing went to disk


def test_routing_uninstalls(engine: sa.Engine) -> None:
    original = ConversationState.__dict__["create"]
    routing = route_conversations(engine)
    assert ConversationState.__dict__["create"] is not original
    routing.uninstall()
    assert ConversationState.__dict__["create"] is original


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_routing_fails_loudly_when_the_sdk_changes(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def create(cls: object, id: object, agent: object) -> None:  # a different signature
        raise AssertionError("must not be called")

    monkeypatch.setattr(ConversationState, "create", classmethod(create))
    with pytest.raises(RuntimeError, match=r"ConversationState\.create"):
        route_conversations(engine)
