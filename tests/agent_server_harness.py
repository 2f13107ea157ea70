"""Real agent server replicas for the end-to-end tests, started in parallel and shared.

The scripted model, the replica environment and the HTTP client are the example's
(``examples/agent_server_replicas.py``); the processes come from a zygote
(:mod:`tests.agent_server_zygote`) that has imported the SDK once, so a replica starts
in a few seconds instead of ~17 s of imports each.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _load_example() -> ModuleType:
    path = ROOT / "examples" / "agent_server_replicas.py"
    spec = importlib.util.spec_from_file_location("agent_server_replicas", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


example = _load_example()


class Zygote:
    """The forking parent of the replicas (see :mod:`tests.agent_server_zygote`)."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.agent_server_zygote"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"the zygote did not start: {line!r}")

    def spawn(self, env: dict[str, str], argv: list[str], cwd: Path, log: Path) -> int:
        """Fork a server process; returns its pid."""
        assert self.process.stdin is not None and self.process.stdout is not None
        spec = {"env": env, "argv": argv, "cwd": str(cwd), "log": str(log)}
        self.process.stdin.write(json.dumps(spec) + "\n")
        self.process.stdin.flush()
        return int(self.process.stdout.readline())

    def close(self) -> None:
        """Stop forking (the servers are stopped by their owners)."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=30)


class Replica:
    """One agent server process on a database, with a home directory of its own."""

    def __init__(
        self,
        zygote: Zygote,
        name: str,
        url: str,
        home: Path,
        secret_key: str = example.SECRET_KEY,
        stock: bool = False,
    ) -> None:
        #: The stock server (sqlstore not imported, conversations on its disk).
        self.stock = stock
        self.zygote = zygote
        self.name = name
        self.url = url
        self.home = home
        self.secret_key = secret_key
        self.port = _unused_port()
        self.client = example.Client(f"http://127.0.0.1:{self.port}")
        self.pid = 0
        self.marker = ""

    @property
    def conversations_dir(self) -> Path:
        """Where the stock server would keep its conversations."""
        return self.home / "conversations"

    def start(self) -> None:
        """Start the process (without waiting for it to serve)."""
        self.home.mkdir(parents=True, exist_ok=True)
        env = example.replica_env(self.url, self.home, self.secret_key)
        # Shown by /server_info: proves that what answers on the port is this process.
        self.marker = env["OPENHANDS_BUILD_GIT_SHA"] = f"replica-{uuid.uuid4().hex}"
        argv = example.server_argv(self.port)
        if self.stock:
            del env["SQLSTORE_URL"]
            argv = argv[: argv.index("--import-modules")]
        self.pid = self.zygote.spawn(env, argv, self.home, self.home / "server.log")

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Wait until it serves; its log is in the error if it died.

        A port picked free may be taken by another process before the server binds it:
        then the server starts again on another port.
        """
        for attempt in range(3):
            try:
                example.wait_ready(self.client.base, self.alive, timeout)
                status, info = self.client.call("GET", "/server_info")
                if status == 200 and info.get("build_git_sha") == self.marker:
                    return
                problem = f"another server answers on port {self.port}"
            except (RuntimeError, TimeoutError) as exc:
                problem = str(exc)
            taken = "another server answers" in problem or "address already in use" in (
                self.log_tail().lower()
            )
            if not taken or attempt == 2:
                raise RuntimeError(f"replica {self.name}: {problem}\n{self.log_tail()}")
            self.kill()
            self.port = _unused_port()
            self.client = example.Client(f"http://127.0.0.1:{self.port}")
            self.start()

    def alive(self) -> bool:
        """Whether the process exists (a stopped one does)."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def signal(self, number: int) -> None:
        """Send a signal to the process."""
        os.kill(self.pid, number)

    def terminate(self, timeout: float = 60.0) -> None:
        """SIGTERM and wait until it is gone (SIGKILL if it lingers)."""
        self.signal(signal.SIGTERM)
        if not self._gone(timeout):
            self.kill()

    def kill(self) -> None:
        """SIGKILL and wait until it is gone."""
        if self.alive():
            self.signal(signal.SIGKILL)
            self._gone(30)

    def restart(self, wipe: bool = False) -> None:
        """Start again on the same port (after a terminate or kill); ``wipe`` its disk first."""
        if wipe:
            shutil.rmtree(self.conversations_dir, ignore_errors=True)
        self.start()
        self.wait_ready()

    def log_tail(self, lines: int = 40) -> str:
        """The end of its log."""
        log = self.home / "server.log"
        if not log.exists():
            return "(no log)"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

    def _gone(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                return True
            time.sleep(0.05)
        return False


class ZygoteProcess:
    """A server forked by the zygote, behind the few ``subprocess.Popen`` methods the
    example uses (see ``launch`` of the example's ``main``)."""

    def __init__(
        self, zygote: Zygote, url: str, home: Path, port: int, *, telemetry: bool = False
    ) -> None:
        home.mkdir(parents=True, exist_ok=True)
        env = example.replica_env(url, home, telemetry=telemetry)
        argv = example.server_argv(port, telemetry=telemetry)
        self.pid = zygote.spawn(env, argv, home, home / "server.log")

    def poll(self) -> int | None:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return 0
        return None

    def send_signal(self, number: int) -> None:
        os.kill(self.pid, number)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"server {self.pid} still runs after {timeout}s")
            time.sleep(0.05)
        return 0


_handed_out: set[int] = set()


def _unused_port() -> int:
    """A free port not handed to another replica of this session already."""
    while True:
        port = example.free_port()
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def send_until_accepted(replica: Replica, conversation_id: str, text: str, timeout: float) -> Any:
    """Send ``text`` to ``replica`` until it stops answering 409; returns (status, seconds)."""
    started = time.monotonic()
    while True:
        status, answer = replica.client.send(conversation_id, text)
        elapsed = time.monotonic() - started
        if status != 409 or elapsed > timeout:
            return status, elapsed, answer
        time.sleep(0.05)
