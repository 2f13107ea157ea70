"""Event-shaped content: real OpenHands SDK events, serialised as the SDK stores them."""

from __future__ import annotations

import random

from openhands.sdk.event import Event, MessageEvent
from openhands.sdk.llm import Message, TextContent

_TEXT = (
    "the agent ran a command in the workspace and read the output file to decide what "
    "to change next tests passed after editing module function class return value error "
    "trace import path config build install run check result observation action tool call"
)
_WORDS = _TEXT.split(" ")


def _text(length: int, seed: int) -> str:
    rng = random.Random(seed)
    parts: list[str] = []
    total = 0
    while total < length:
        word = rng.choice(_WORDS)
        parts.append(word)
        total += len(word) + 1
    return " ".join(parts)[:length]


def message_event(size: int, seed: int = 0, source: str = "agent") -> MessageEvent:
    """A ``MessageEvent`` whose JSON (``model_dump_json(exclude_none=True)``) is ``size`` bytes.

    The text is words drawn at random, so it compresses about as well as real output.
    """
    role = "assistant" if source == "agent" else "user"
    empty = MessageEvent(
        source=source,  # type: ignore[arg-type]
        llm_message=Message(role=role, content=[TextContent(text="")]),  # type: ignore[arg-type]
    )
    overhead = len(empty.model_dump_json(exclude_none=True).encode())
    text = _text(max(0, size - overhead), seed)
    return MessageEvent(
        source=source,  # type: ignore[arg-type]
        llm_message=Message(role=role, content=[TextContent(text=text)]),  # type: ignore[arg-type]
    )


def event_json(size: int, seed: int = 0) -> str:
    """The stored form of an event of about ``size`` bytes."""
    return message_event(size, seed).model_dump_json(exclude_none=True)


def events(count: int, size: int, seed: int = 0) -> list[Event]:
    """``count`` distinct events (fresh ids) of about ``size`` bytes each."""
    template = message_event(size, seed)
    return [template.model_copy(update={"id": _new_id()}) for _ in range(count)]


def _new_id() -> str:
    import uuid

    return str(uuid.uuid4())
