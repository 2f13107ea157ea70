"""The agent server's guarded write path: sqlstore against the same path on local disk.

Each event the server's runtime records is ``ConversationState.append_event``: the
event is appended to the event log (the write fenced by the ownership lease, inside
the log's lock) and ``base_state.json`` is saved (fenced too). This times exactly that,
in one process, one conversation per subject, the subjects interleaved round by round:

* ``local disk``: the stock server's path, a ``LocalFileStore`` and the file lease
  (``ConversationLease``: a ``FileLock`` and a JSON read per fenced write);
* ``sqlstore <database>``: the routed store and :mod:`sqlstore.agent_server`'s lease
  (the owner record read under the owner lock, in the same transaction as the write).

    uv run python -m bench.agent_server [--rounds 300] [--backends postgresql,sqlite,mysql]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OPENHANDS_SUPPRESS_BANNER", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LOG_LEVEL", "WARNING")

from bench.__main__ import MYSQL_URL, PG_URL
from bench.subjects import prepare

DEFAULT_PGBOUNCER_URL = (
    "postgresql+psycopg://postgres@127.0.0.1:6432/sqlstore_bench?prepare_threshold=none"
)


@dataclass
class Subject:
    """One conversation whose appends are timed."""

    name: str
    append: Callable[[], None]
    close: Callable[[], None]
    times: list[float] = field(default_factory=list)


def _event(index: int) -> Any:
    from openhands.sdk.event import MessageEvent
    from openhands.sdk.llm import Message, TextContent

    text = f"message {index} " + "x" * 800  # about 1 KiB of JSON, like a short turn
    return MessageEvent(
        source="user", llm_message=Message(role="user", content=[TextContent(text=text)])
    )


def _state(workspace: Path, **where: Any) -> Any:
    from openhands.sdk import LLM, Agent
    from openhands.sdk.conversation.state import ConversationState
    from openhands.sdk.utils.cipher import Cipher
    from openhands.sdk.workspace import LocalWorkspace
    from pydantic import SecretStr

    llm = LLM(model="openai/bench", api_key=SecretStr("k"), usage_id="agent")
    return ConversationState.create(
        id=where.pop("id"),
        agent=Agent(llm=llm, tools=[]),
        workspace=LocalWorkspace(working_dir=str(workspace)),
        cipher=Cipher("bench key"),
        **where,
    )


def local_subject(root: Path) -> Subject:
    """The stock server on local disk: ``LocalFileStore`` and the file lease."""
    from openhands.agent_server.conversation_lease import ConversationLease

    conversation_id = uuid.uuid4()
    directory = root / "conversations" / conversation_id.hex
    directory.mkdir(parents=True)
    state = _state(root / "workspace", id=conversation_id, persistence_dir=str(directory))
    lease = ConversationLease(conversation_dir=directory, owner_instance_id="bench")
    generation = lease.claim().generation
    state.set_write_guard(lambda: lease.guarded_write(generation))
    counter = iter(range(10**9))
    return Subject("local disk", lambda: state.append_event(_event(next(counter))), lambda: None)


def sqlstore_subject(label: str, url: str, root: Path) -> Subject:
    """The same server path on sqlstore: the routed store and the database lease."""
    import sqlstore
    from sqlstore.agent_server.ownership import Replicas, lease_class

    engine = sqlstore.create_engine(url)
    replicas = Replicas(engine)
    conversation_id = uuid.uuid4()
    store = sqlstore.SQLFileStore(engine, conversation_id.hex)
    state = _state(root / "workspace", id=conversation_id, file_store=store)
    lease = lease_class(replicas)(
        conversation_dir=root / "conversations" / conversation_id.hex, owner_instance_id="bench"
    )
    generation = lease.claim().generation
    state.set_write_guard(lambda: lease.guarded_write(generation))
    counter = iter(range(10**9))

    def close() -> None:
        store.delete("")
        replicas.stop()
        engine.dispose()

    return Subject(f"sqlstore {label}", lambda: state.append_event(_event(next(counter))), close)


def run(subjects: list[Subject], rounds: int, warmup: int = 20) -> None:
    """Time ``rounds`` appends per subject, one of each per round."""
    for index in range(warmup + rounds):
        for subject in subjects:
            started = time.perf_counter()
            subject.append()
            elapsed = time.perf_counter() - started
            if index >= warmup:
                subject.times.append(elapsed)


def report(subjects: list[Subject]) -> str:
    """A Markdown table of medians, with the ratio to local disk."""
    local = statistics.median(subjects[0].times)
    lines = [
        "| subject | median append (ms) | p90 (ms) | ÷ local disk |",
        "|---|---|---|---|",
    ]
    for subject in subjects:
        median = statistics.median(subject.times)
        p90 = statistics.quantiles(subject.times, n=10)[-1]
        lines.append(
            f"| {subject.name} | {median * 1000:.2f} | {p90 * 1000:.2f} | {median / local:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--backends", default="postgresql,sqlite,mysql,pgbouncer")
    parser.add_argument("--pg-url", default=PG_URL)
    parser.add_argument("--mysql-url", default=MYSQL_URL)
    parser.add_argument("--pgbouncer-url", default=DEFAULT_PGBOUNCER_URL)
    args = parser.parse_args()
    wanted = [name.strip() for name in args.backends.split(",") if name.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        direct = [name for name in wanted if name != "pgbouncer"]
        if "pgbouncer" in wanted and "postgresql" not in direct:
            direct.append("postgresql")  # PgBouncer fronts the bench's PostgreSQL database
        urls = {"postgresql": args.pg_url, "mysql": args.mysql_url, "sqlite": ""}
        prepared, versions = prepare(direct, urls, root)
        # The benchmark's own sqlstore subjects, one per database: their URLs.
        keys = {"postgresql": "pg", "sqlite": "sqlite", "mysql": "mysql"}
        subjects = [local_subject(root / "local")]
        for name in wanted:
            if name == "pgbouncer":
                if "pg" in prepared:
                    subjects.append(sqlstore_subject("PgBouncer", args.pgbouncer_url, root))
                continue
            found = prepared.get(keys.get(name, ""))
            if found is not None:
                label = found.title.removesuffix(" sqlstore").removesuffix(" FULL")
                subjects.append(sqlstore_subject(label, found.url, root))
        for name, version in versions.items():
            if version.startswith("skipped"):
                print(f"{name}: {version}")
        try:
            run(subjects, args.rounds)
        finally:
            for subject in subjects:
                subject.close()
    print(f"{args.rounds} appends per subject, interleaved; ratio = median / local disk median\n")
    print(report(subjects))


if __name__ == "__main__":
    main()
