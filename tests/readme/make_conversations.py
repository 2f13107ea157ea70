"""Write the two conversations the command-line guide's session starts from.

The "Command line" guide (``docs/guides/cli.md``) is a real session on what the
OpenHands SDK wrote to ``conversations/``
(``LocalConversation(..., persistence_dir="conversations")``); ``tests/test_readme.py``
copies ``tests/readme/conversations`` into a temporary directory and runs the session
there. This script made that directory, with the real SDK and a scripted
agent (no model, no network)::

    uv run python tests/readme/make_conversations.py

Run again, it writes new event ids and times: the guide's session output then has to
be brought up to date with what ``uv run pytest tests/test_readme.py`` reports.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

# Before importing the SDK: no banner, no INFO logging, no fetch of litellm's price list.
os.environ.setdefault("OPENHANDS_SUPPRESS_BANNER", "1")
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from openhands.sdk import Agent
from openhands.sdk.conversation.impl.local_conversation import LocalConversation
from openhands.sdk.llm import Message, TextContent
from openhands.sdk.testing import TestLLM

HERE = Path(__file__).resolve().parent
#: The conversation ids the README's session names.
IDS = ["124a90f4-1324-48a8-8753-0e27488d64ef", "2969d8ef-5978-4818-8eb5-3b325b7c1d46"]


def main() -> None:
    """Replace ``conversations/`` next to this script with two fresh conversations."""
    # The SDK records absolute paths (workspace, persistence directory): made in a
    # neutral directory, they name no developer's checkout.
    scratch = Path(tempfile.gettempdir()) / "sqlstore-readme"
    shutil.rmtree(scratch, ignore_errors=True)
    (scratch / "workspace").mkdir(parents=True)
    os.chdir(scratch)
    for text in IDS:
        script = [Message(role="assistant", content=[TextContent(text="Hello! How can I help?")])]
        conversation = LocalConversation(
            agent=Agent(llm=TestLLM.from_messages(script), tools=[]),
            workspace="workspace",
            persistence_dir="conversations",
            conversation_id=uuid.UUID(text),
            visualizer=None,
        )
        conversation.send_message("hi")
        conversation.run()
        conversation.close()
    target = HERE / "conversations"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(scratch / "conversations", target)
    shutil.rmtree(scratch)
    for path in sorted(target.rglob("*")):
        print(path.relative_to(HERE), path.stat().st_size if path.is_file() else "")


if __name__ == "__main__":
    main()
