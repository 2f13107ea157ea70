"""Shared pieces of the real-SDK tests: scripted agents, events, worker processes.

Importing this module imports the OpenHands SDK (several seconds); ``conftest.py``
sets the environment that keeps it quiet and off the network.
"""

from __future__ import annotations

import multiprocessing
import uuid
from typing import Any

from openhands.sdk import Agent
from openhands.sdk.conversation.event_store import EventLog
from openhands.sdk.event import MessageEvent
from openhands.sdk.llm import Message, TextContent
from openhands.sdk.testing import TestLLM

import sqlstore


def agent(*replies: str) -> Agent:
    """An agent whose LLM answers with ``replies`` in turn (no model, no network)."""
    script = [Message(role="assistant", content=[TextContent(text=r)]) for r in replies]
    return Agent(llm=TestLLM.from_messages(script), tools=[])


def message_event(text: str) -> MessageEvent:
    """A user message event of about 1 KiB of JSON."""
    body = Message(role="user", content=[TextContent(text=text + " " + "x" * 800)])
    return MessageEvent(source="user", llm_message=body)


def summary(events: Any) -> list[tuple[str, str]]:
    """(type, id) of each event, in order."""
    return [(type(e).__name__, e.id) for e in events]


def append_worker(url: str, namespace: str, worker: int, count: int) -> list[str]:
    """Append ``count`` events to one conversation's log from a separate process."""
    engine = sqlstore.create_engine(url)
    try:
        log = EventLog(sqlstore.SQLFileStore(engine, namespace), dir_path="events")
        ids = []
        for i in range(count):
            event = message_event(f"worker {worker} event {i}")
            log.append(event)
            ids.append(event.id)
        return ids
    finally:
        engine.dispose()


def event_processes() -> Any:
    """A multiprocessing context whose children start with the SDK already imported.

    A fork server imports the SDK once; every worker forks from it, so N workers do
    not pay N SDK imports, and none inherits the test process's connections.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tests.sdk_helpers"])
    return context


def new_id() -> uuid.UUID:
    """A fresh conversation id."""
    return uuid.uuid4()


def threaded_append_worker(
    url: str, namespace: str, worker: int, threads: int, count: int
) -> list[str]:
    """``threads`` threads of one process each append ``count`` events to one log."""
    import threading

    engine = sqlstore.create_engine(url)
    ids: list[str] = []
    errors: list[BaseException] = []

    def run(thread: int) -> None:
        try:
            log = EventLog(sqlstore.SQLFileStore(engine, namespace), dir_path="events")
            for i in range(count):
                event = message_event(f"worker {worker} thread {thread} event {i}")
                log.append(event)
                ids.append(event.id)
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    engine.dispose()
    if errors:
        raise errors[0]
    return ids
