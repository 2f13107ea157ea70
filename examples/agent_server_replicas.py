"""Two OpenHands agent server replicas share their conversations through sqlstore.

Starts a scripted OpenAI-compatible model on 127.0.0.1 (no model key, no network),
then two real agent servers (``python -m openhands.agent_server --import-modules
sqlstore.agent_server``) on one database, each with a conversations directory of its
own. A conversation is created on replica A; replica B lists it and reads its events,
and a message sent to B is forwarded to A, which owns and runs the conversation; A is
killed (SIGKILL); B takes the conversation over and continues it. The default database
is a SQLite file in the current directory; ``--url`` takes any sqlstore URL.

Where the OpenTelemetry SDK is installed, each replica also records sqlstore's telemetry
(``sqlstore.telemetry``, through ``replica_telemetry.py`` beside this file) and the demo
ends by printing it: one SDK append as a span tree, the lock waits, the retries, timeouts
and refusals. ``--no-telemetry`` leaves it off.

    uv run python examples/agent_server_replicas.py [--url URL] [--no-telemetry]

The pieces (the scripted model, the replica launcher, the HTTP client) are reused by
the end-to-end tests.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

DEFAULT_URL = "sqlite:///agent-server-demo.db"
ROOT = Path(__file__).resolve().parent.parent
#: The module a replica imports to record its telemetry (examples/replica_telemetry.py).
TELEMETRY_MODULE = "examples.replica_telemetry"
#: Every replica must decrypt what the others encrypted: one shared OH_SECRET_KEY.
SECRET_KEY = "sqlstore-demo-secret-key"


# -- a scripted, OpenAI-compatible model --------------------------------------------------


class ScriptedLLM:
    """``POST /v1/chat/completions`` answering "You said: <the user's last text>".

    The agent server takes its model as JSON configuration, so the SDK's in-process
    ``TestLLM`` cannot be sent; this serves the same purpose over HTTP on 127.0.0.1.
    """

    def __init__(self) -> None:
        self.requests = 0

        llm = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                llm.requests += 1
                data = json.dumps(llm.completion(body)).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        """The OpenAI-compatible base URL."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    @staticmethod
    def reply_to(text: str) -> str:
        """What the model answers to a user message."""
        return f"You said: {text}"

    def completion(self, request: dict[str, Any]) -> dict[str, Any]:
        """A chat completion answering the last user message."""
        text = ""
        for message in request.get("messages", []):
            if message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, list):  # consecutive user messages are one turn
                    content = content[-1].get("text", "") if content else ""
                text = str(content)
        return {
            "id": f"scripted-{self.requests}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model", "scripted"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": self.reply_to(text)},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()


# -- replicas ------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def replica_env(
    url: str, home: Path, secret_key: str = SECRET_KEY, *, telemetry: bool = False
) -> dict[str, str]:
    """The environment of one replica: the shared database and key, its own directories.

    With ``telemetry``, the replica writes sqlstore's spans and metrics into
    ``home/telemetry`` (see ``server_argv``).
    """
    env = {
        "SQLSTORE_URL": url,
        "OH_SECRET_KEY": secret_key,
        "OH_CONVERSATIONS_PATH": str(home / "conversations"),
        "OH_WORKSPACE_PATH": str(home / "workspace"),
        "OH_BASH_EVENTS_DIR": str(home / "bash_events"),
        "OH_PERSISTENCE_DIR": str(home / "state"),
        # Services this demo does not use, off for a quicker start.
        "OH_ENABLE_VSCODE": "false",
        "OH_PRELOAD_TOOLS": "false",
        "OH_ENABLE_BROWSER": "false",
        # No banner, no INFO logging, no fetch of litellm's model price list.
        "OPENHANDS_SUPPRESS_BANNER": "1",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LOG_LEVEL": "WARNING",
    }
    if telemetry:
        env["SQLSTORE_DEMO_TELEMETRY"] = str(home / "telemetry")
        # The replica imports examples.replica_telemetry from this checkout.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return env


def server_argv(port: int, *, telemetry: bool = False) -> list[str]:
    """The arguments after ``python -m openhands.agent_server``."""
    modules = "sqlstore.agent_server" + (f",{TELEMETRY_MODULE}" if telemetry else "")
    return ["--port", str(port), "--import-modules", modules]


def start_replica(
    url: str, home: Path, port: int, telemetry: bool = False
) -> subprocess.Popen[bytes]:
    """Start one agent server exactly as a deployment would."""
    home.mkdir(parents=True, exist_ok=True)
    log = (home / "server.log").open("wb")
    argv = server_argv(port, telemetry=telemetry)
    env = {**os.environ, **replica_env(url, home, telemetry=telemetry)}
    command = [sys.executable, "-m", "openhands.agent_server", *argv]
    return subprocess.Popen(command, env=env, stdout=log, stderr=log, cwd=home)


def wait_ready(base: str, alive: Any, timeout: float = 300.0) -> None:
    """Wait until the server at ``base`` answers ``/ready``; ``alive()`` false stops it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"the server at {base} exited during start-up")
        try:
            with urllib.request.urlopen(f"{base}/ready", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"the server at {base} was not ready after {timeout}s")


# -- the server's REST API -----------------------------------------------------------------


class Client:
    """The few agent server endpoints the demo and the tests use."""

    def __init__(self, base: str) -> None:
        self.base = base

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One request; returns the status and the decoded JSON (or raw bytes)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.base}{path}", data=data, method=method)
        request.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                status, raw = answer.status, answer.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw

    def create(self, llm_url: str, workspace: str, text: str) -> str:
        """Start a conversation with a first message; returns its id."""
        agent = {
            "kind": "Agent",
            "llm": {
                "model": "openai/scripted",
                "base_url": llm_url,
                "api_key": "not-a-real-key",
                "usage_id": "agent",
            },
            "tools": [],
        }
        body = {
            "agent": agent,
            "workspace": {"working_dir": workspace},
            "initial_message": {"role": "user", "content": [{"type": "text", "text": text}]},
        }
        status, answer = self.call("POST", "/api/conversations", body)
        if status not in (200, 201):
            raise RuntimeError(f"create answered {status}: {answer}")
        return str(answer["id"])

    def send(self, conversation_id: str, text: str) -> tuple[int, Any]:
        """Send a user message and run the agent."""
        body = {"role": "user", "content": [{"type": "text", "text": text}], "run": True}
        return self.call("POST", f"/api/conversations/{conversation_id}/events", body)

    def events(self, conversation_id: str) -> list[dict[str, Any]]:
        """Every event of a conversation, oldest first."""
        found: list[dict[str, Any]] = []
        page = ""
        while True:
            query = f"?limit=100{f'&page_id={page}' if page else ''}"
            status, answer = self.call(
                "GET", f"/api/conversations/{conversation_id}/events/search{query}"
            )
            if status != 200:
                raise RuntimeError(f"events answered {status}: {answer}")
            found.extend(answer["items"])
            page = answer.get("next_page_id") or ""
            if not page:
                return found

    def conversation_ids(self) -> list[str]:
        """The ids of every conversation this replica lists."""
        ids: list[str] = []
        page = ""
        while True:
            query = f"?limit=100{f'&page_id={page}' if page else ''}"
            status, answer = self.call("GET", f"/api/conversations/search{query}")
            if status != 200:
                raise RuntimeError(f"search answered {status}: {answer}")
            ids.extend(item["id"] for item in answer["items"])
            page = answer.get("next_page_id") or ""
            if not page:
                return ids

    def wait_reply(self, conversation_id: str, text: str, timeout: float = 60.0) -> list[Any]:
        """Wait until the agent has answered ``text``; returns the events then."""
        wanted = ScriptedLLM.reply_to(text)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            events = self.events(conversation_id)
            if any(message_text(e) == wanted and e.get("source") == "agent" for e in events):
                return events
            time.sleep(0.2)
        raise TimeoutError(f"no reply to {text!r} in {conversation_id} after {timeout}s")


def message_text(event: dict[str, Any]) -> str:
    """The text of a message event ("" for other events)."""
    message = event.get("llm_message") or {}
    return " ".join(part.get("text", "") for part in message.get("content") or [])


# -- the demo ------------------------------------------------------------------------------


#: Starts one replica (database URL, home directory, port, whether it records telemetry);
#: returns a Popen-like handle.
Launcher = Callable[[str, Path, int, bool], Any]


@contextmanager
def _replicas(
    url: str, root: Path, launch: Launcher, telemetry: bool
) -> Iterator[list[tuple[Any, Client]]]:
    started: list[tuple[Any, Client]] = []
    try:
        homes = [root / name for name in ("a", "b")]
        logs = [_log_size(home) for home in homes]
        for home in homes:  # both start at once: start-up is mostly imports
            started.append(_launch(url, home, launch, telemetry))
        for index, home in enumerate(homes):
            # A port picked free can be taken before the server binds it (any process's
            # outgoing connection may get it): then that replica starts on another one.
            for attempt in range(3):
                process, client = started[index]
                try:
                    wait_ready(client.base, lambda process=process: process.poll() is None)
                    break
                except RuntimeError as exc:
                    log = _log_since(home, logs[index])
                    if "address already in use" not in log.lower() or attempt == 2:
                        raise RuntimeError(f"{exc}; the end of its log:\n{log}") from None
                logs[index] = _log_size(home)
                started[index] = _launch(url, home, launch, telemetry)
        yield started
    finally:
        for process, _ in started:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=30)


def _launch(url: str, home: Path, launch: Launcher, telemetry: bool) -> tuple[Any, Client]:
    port = free_port()
    return launch(url, home, port, telemetry), Client(f"http://127.0.0.1:{port}")


def _log_size(home: Path) -> int:
    log = home / "server.log"
    return log.stat().st_size if log.exists() else 0


def _log_since(home: Path, offset: int, lines: int = 40) -> str:
    """The last ``lines`` of what a replica logged after ``offset`` (its log may be appended to)."""
    log = home / "server.log"
    if not log.exists():
        return "(no log)"
    with log.open("rb") as handle:
        # A launcher that truncates the log on start (``start_replica``) starts it again at 0.
        handle.seek(offset if log.stat().st_size >= offset else 0)
        text = handle.read().decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def _show(events: list[dict[str, Any]]) -> None:
    for index, event in enumerate(events):
        text = message_text(event)
        if event["kind"] == "ConversationStateUpdateEvent":
            continue
        shown = f"  {text!r}" if text else ""
        print(f"  {index:2d} {event['kind']:<18} {event['source']:<6}{shown}".rstrip())


def main(argv: list[str] | None = None, launch: Launcher = start_replica) -> None:
    """Run the two replicas and show who does what.

    ``launch`` starts one replica (default: ``python -m openhands.agent_server``) and
    returns a ``subprocess.Popen``-like handle; the tests pass a quicker one.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("SQLSTORE_URL", DEFAULT_URL))
    parser.add_argument(
        "--no-telemetry",
        dest="telemetry",
        action="store_false",
        default=importlib.util.find_spec("opentelemetry.sdk") is not None,
        help="do not record and print sqlstore's telemetry",
    )
    args = parser.parse_args(argv)
    from sqlalchemy.engine import make_url

    url = make_url(args.url)
    print(f"database: {url.render_as_string(hide_password=True)}")
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).is_absolute():
        # The replicas run in directories of their own: one file for both of them.
        url = url.set(database=str(Path(url.database).resolve()))
    shared = url.render_as_string(hide_password=False)
    llm = ScriptedLLM()
    with tempfile.TemporaryDirectory() as tmp:
        with _replicas(shared, Path(tmp), launch, args.telemetry) as replicas:
            _demo(llm, Path(tmp), replicas)
        if args.telemetry:  # the replicas have stopped: everything is written
            _print_telemetry(Path(tmp))


def _demo(llm: ScriptedLLM, tmp: Path, replicas: list[tuple[Any, Client]]) -> None:
    """Create a conversation on A, read it from B, kill A, continue it on B."""
    (server_a, a), (_, b) = replicas
    print(f"replica A: {a.base}   replica B: {b.base}   (two processes, one database)\n")
    workspace = str(tmp / "workspace")
    conversation = a.create(llm.url, workspace, "hello from A")
    a.wait_reply(conversation, "hello from A")
    print(f"A created conversation {conversation} and ran it")
    print(f"B lists it: {conversation in b.conversation_ids()}")
    print(f"B reads its {len(b.events(conversation))} events")
    status, _ = b.send(conversation, "hello from B")
    a.wait_reply(conversation, "hello from B")
    print(f"B forwards a write to A, which owns it: {status}, and A ran it\n")

    server_a.send_signal(signal.SIGKILL)
    server_a.wait()
    killed = time.monotonic()
    print("A killed (SIGKILL)")
    while (status := b.send(conversation, "are you still there?")[0]) == 409:
        time.sleep(0.1)
    if status != 200:
        raise SystemExit(f"B answered {status}")
    print(f"B took the conversation over {time.monotonic() - killed:.1f}s later and continued it:")
    _show(b.wait_reply(conversation, "are you still there?"))


def _print_telemetry(root: Path) -> None:
    """What the replicas recorded with sqlstore.telemetry (examples/replica_telemetry.py)."""
    path = Path(__file__).with_name("replica_telemetry.py")
    spec = importlib.util.spec_from_file_location("replica_telemetry", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    print("\nsqlstore telemetry of both replicas (A's until it was killed):")
    for line in module.summary(root):
        print(f"  {line}")


if __name__ == "__main__":
    main()
