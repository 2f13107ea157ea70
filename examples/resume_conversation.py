"""An OpenHands conversation that survives its process, persisted by sqlstore.

Runs a scripted agent (the SDK's ``TestLLM``: no model, no network) through the real
``LocalConversation`` with a sqlstore ``file_store``, ends the process, resumes the
conversation in a new process, continues it there, and prints the events each process
sees. The default database is a SQLite file in the current directory; ``--url`` takes
any sqlstore URL, e.g. ``postgresql+psycopg://postgres@127.0.0.1/test`` or
``mysql+pymysql://root@127.0.0.1/test``.

    uv run python examples/resume_conversation.py [--url URL]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import uuid
from typing import Any

DEFAULT_URL = "sqlite:///sqlstore-demo.db"


def _quiet_sdk() -> None:
    # Before importing the SDK: no banner, no INFO logging, no fetch of litellm's
    # model price list (this example needs no network).
    os.environ.setdefault("OPENHANDS_SUPPRESS_BANNER", "1")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


def _agent(reply: str) -> Any:
    from openhands.sdk import Agent
    from openhands.sdk.llm import Message, TextContent
    from openhands.sdk.testing import TestLLM

    script = [Message(role="assistant", content=[TextContent(text=reply)])]
    return Agent(llm=TestLLM.from_messages(script), tools=[])


def _describe(event: Any) -> dict[str, str]:
    text = ""
    message = getattr(event, "llm_message", None)
    if message is not None and message.content:
        text = getattr(message.content[0], "text", "")
    return {"id": event.id, "type": type(event).__name__, "source": str(event.source), "text": text}


def phase(url: str, conversation_id: str, step: str) -> None:
    """One process's part: ``start`` a conversation, or ``resume`` and continue it."""
    _quiet_sdk()
    from openhands.sdk.conversation.impl.local_conversation import LocalConversation

    import sqlstore
    from sqlstore.sdk import conversation_store

    engine = sqlstore.create_engine(url)
    cid = uuid.UUID(conversation_id)
    workspace = os.path.join(tempfile.gettempdir(), "sqlstore-demo-workspace")
    reply = "Hello! I am a scripted agent." if step == "start" else "Still here, after a restart."
    conversation = LocalConversation(
        agent=_agent(reply),
        workspace=workspace,
        conversation_id=cid,
        file_store=conversation_store(engine, cid),
        visualizer=None,
    )
    resumed = [_describe(e) for e in conversation.state.events]
    conversation.send_message("hi" if step == "start" else "are you still there?")
    conversation.run()
    after = [_describe(e) for e in conversation.state.events]
    conversation.close()
    engine.dispose()
    print(json.dumps({"resumed": resumed, "after": after}))


def _run_phase(url: str, conversation_id: str, step: str) -> dict[str, list[dict[str, str]]]:
    command = [sys.executable, __file__, "--url", url, "--phase", step, "--id", conversation_id]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"the {step} process failed with exit code {done.returncode}")
    result: dict[str, list[dict[str, str]]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _show(title: str, events: list[dict[str, str]], start: int = 0) -> None:
    print(title)
    for index, event in enumerate(events, start=start):
        text = f"  {event['text']!r}" if event["text"] else ""
        print(f"  {index:2d} {event['type']:<20} {event['source']:<6} {event['id'][:8]}{text}")


def main() -> None:
    """Run the two processes and compare what they saw."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("SQLSTORE_URL", DEFAULT_URL))
    parser.add_argument("--phase", choices=["start", "resume"], help=argparse.SUPPRESS)
    parser.add_argument("--id", help="conversation id to resume (default: a new one)")
    args = parser.parse_args()
    if args.phase:
        phase(args.url, args.id, args.phase)
        return

    import sqlstore

    sqlstore.migrate(args.url)
    conversation_id = args.id or str(uuid.uuid4())
    from sqlalchemy.engine import make_url

    print(f"database:     {make_url(args.url).render_as_string(hide_password=True)}")
    print(f"conversation: {conversation_id} (namespace {uuid.UUID(conversation_id).hex})\n")

    first = _run_phase(args.url, conversation_id, "start")
    _show(f"process 1 wrote {len(first['after'])} events:", first["after"])
    second = _run_phase(args.url, conversation_id, "resume")
    _show(
        f"\nprocess 2 resumed {len(second['resumed'])} events from the database:", second["resumed"]
    )
    same = [e["id"] for e in second["resumed"]] == [e["id"] for e in first["after"]]
    print(f"  identical to what process 1 wrote: {same}")
    _show(
        f"\nprocess 2 continued; the conversation now has {len(second['after'])} events:",
        second["after"][len(second["resumed"]) :],
        start=len(second["resumed"]),
    )
    if not same:
        raise SystemExit("resumed events differ from the events written")


if __name__ == "__main__":
    main()
