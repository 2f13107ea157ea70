"""Installing sqlstore as the docs say, with uv and with pip, on the lowest Python it claims.

The install block of the "Getting started" guide is the source: each of its install
commands runs as written, in a fresh directory beside a copy of the checkout (so
``../sqlstore`` is that copy, with the wheel its ``uv build`` line wrote in ``dist/``),
after the lines its group starts with (``uv venv --python 3.12``, ``python3.12 -m venv
.venv``). Then the environment it made runs ``sqlstore --help``, a write and a read on
SQLite through the package, and ``sqlstore namespaces`` on that database; the
PostgreSQL driver the extra names is there. The README's install lines must be among
the commands tested here. Python 3.11, which sqlstore does not claim, is refused.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import sqlstore

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "guides" / "getting-started.md"
#: What ``uv build`` needs of the checkout to build the wheel.
CHECKOUT = ["sqlstore", "migrations", "pyproject.toml", "README.md", "LICENSE"]
#: The lowest Python sqlstore claims (``requires-python``), and the one below it.
LOWEST, BELOW = "3.12", "3.11"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _install_block() -> str:
    """The bash block of the guide that holds the install commands."""
    blocks = re.findall(r"^```bash\n(.*?)^```$", GUIDE.read_text(), re.M | re.S)
    (block,) = [block for block in blocks if "uv pip install" in block]
    return block


def _groups() -> list[list[str]]:
    """The block's commands, in its groups (separated by blank lines), comments dropped."""
    groups = []
    for text in _install_block().split("\n\n"):
        commands = [line for line in text.splitlines() if line and not line.startswith("#")]
        if commands:
            groups.append(commands)
    return groups


def _is_install(command: str) -> bool:
    return bool(re.match(r"(uv add|uv pip install|\.venv/bin/pip install) ", command))


def _cases() -> list[tuple[list[str], str]]:
    """(the commands its group starts with, the install command), for each install."""
    cases = []
    for group in _groups()[1:]:  # the first builds the wheel
        setup = [command for command in group if not _is_install(command)]
        cases += [(setup, command) for command in group if _is_install(command)]
    return cases


def test_the_guide_installs_in_each_way_the_issue_asks_for() -> None:
    (build,), *_ = _groups()
    assert build == "uv build"
    commands = [command for _, command in _cases()]
    assert len(commands) == 7
    wheel = f"../sqlstore/dist/sqlstore-{sqlstore.__version__}-py3-none-any.whl[postgresql]"
    for way in ("uv add", "uv add --editable", "uv pip install", ".venv/bin/pip install"):
        assert any(command.startswith(way + ' "') for command in commands), way
    assert sum(wheel in command for command in commands) == 3  # uv add, uv pip, pip
    assert [setup for setup, _ in _cases()].count([f"uv venv --python {LOWEST}"]) == 2
    assert [setup for setup, _ in _cases()].count([f"python{LOWEST} -m venv .venv"]) == 2


def test_the_readme_installs_only_as_tested() -> None:
    readme = (ROOT / "README.md").read_text()
    tested = {command for _, command in _cases()} | {"uv build"}
    # Every line of the README that runs uv or a pip, without its comment.
    shown = re.findall(
        r"^((?:uv (?:add|pip|build|venv)|\S*pip|python\S* -m (?:pip|venv))\b[^#\n]*?)\s*(?:#.*)?$",
        readme,
        re.M,
    )
    installs = [command for command in shown if _is_install(command) or command == "uv build"]
    assert installs, "the README shows no install command"
    assert set(shown) <= tested | {setup for setups, _ in _cases() for setup in setups}, (
        set(shown) - tested
    )


@pytest.fixture(scope="module")
def beside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding ``sqlstore/`` (the checkout, its wheel built by ``uv build``)."""
    top = tmp_path_factory.mktemp("install")
    checkout = top / "sqlstore"
    checkout.mkdir()
    for name in CHECKOUT:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, checkout / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, checkout / name)
    _ok("uv build", checkout)
    assert (checkout / "dist" / f"sqlstore-{sqlstore.__version__}-py3-none-any.whl").is_file()
    return top


def _environment() -> dict[str, str]:
    """This shell's, without what would point the commands at the test's own environment."""
    drop = {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "SQLSTORE_URL", "UV_PROJECT_ENVIRONMENT"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("PYTEST_")}
    uv = os.environ.get("UV")  # set by `uv run`: the uv that runs these tests
    if uv:
        env["PATH"] = os.pathsep.join([str(Path(uv).parent), env.get("PATH", "")])
    return env


def _ok(command: str | list[str], cwd: Path) -> str:
    """Run a shell command line (or an argument list); it must succeed."""
    done = subprocess.run(
        ["bash", "-e", "-c", command] if isinstance(command, str) else command,
        cwd=cwd,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert done.returncode == 0, f"$ {command}\n{done.stdout}\n{done.stderr}"
    return done.stdout


#: Run by the installed Python, in a directory with no sqlstore in it.
WRITE_AND_READ = """
import json, sys
import psycopg  # the extra's driver
import sqlstore
url = sys.argv[1]
sqlstore.migrate(url)
with sqlstore.SQLFileStore.from_url(url, "installed") as store:
    store.write("events/event-00000-a.json", '{"kind": "MessageEvent"}')
    read = store.read("events/event-00000-a.json")
    print(json.dumps({"python": "%d.%d" % sys.version_info[:2], "module": sqlstore.__file__,
                      "read": read, "list": store.list("events")}))
"""


@pytest.mark.parametrize(("setup", "install"), _cases(), ids=[command for _, command in _cases()])
def test_an_install_command_of_the_guide_gives_a_working_sqlstore(
    beside: Path, setup: list[str], install: str
) -> None:
    work = beside / re.sub(r"\W+", "-", install)[:60]
    work.mkdir()
    if install.startswith("uv add"):  # a project managed by uv, on the lowest Python
        _ok(f"uv init --bare --name app --python {LOWEST}", work)
    for command in [*setup, install]:
        _ok(command, work)
    python, script = work / ".venv" / "bin" / "python", work / ".venv" / "bin" / "sqlstore"
    assert _ok(f"{script} --help", work).startswith("usage: sqlstore ")
    url = f"sqlite:///{work / 'installed.db'}"
    elsewhere = work / "elsewhere"
    elsewhere.mkdir()
    done = json.loads(_ok([str(python), "-I", "-c", WRITE_AND_READ, url], elsewhere))
    assert done["python"] == LOWEST
    module = Path(done["module"])
    if "--editable" in install:
        assert module == beside / "sqlstore" / "sqlstore" / "__init__.py"
    else:
        assert module.is_relative_to(work / ".venv"), module
    assert done["read"] == '{"kind": "MessageEvent"}'
    assert done["list"] == ["events/event-00000-a.json"]
    listed = _ok(f"{script} --url {url} namespaces", elsewhere)
    assert re.search(r"^installed\s+1\s+24\s", listed, re.M), listed


def test_a_python_older_than_the_lowest_claimed_is_refused(beside: Path) -> None:
    found = subprocess.run(
        ["uv", "python", "find", BELOW],
        env=_environment(),
        capture_output=True,
        text=True,
        check=False,
    )
    if found.returncode != 0:
        pytest.skip(f"no Python {BELOW} here to try")
    work = beside / "too-old"
    work.mkdir()
    _ok(f"{found.stdout.strip()} -m venv .venv", work)
    wheel = f"../sqlstore/dist/sqlstore-{sqlstore.__version__}-py3-none-any.whl"
    done = subprocess.run(
        [str(work / ".venv" / "bin" / "pip"), "install", wheel],
        cwd=work,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode != 0
    assert "requires a different Python" in done.stderr, done.stderr
