"""Every code block of the README and of the docs runs as written, or says why it does not.

The README and the guides under ``docs/`` are what a newcomer copies from, so each fenced
block with a language is run here, in a temporary directory, the way a reader would run
it:

* ``python`` starting with ``>>>``: a doctest session, in a namespace of its own.
* other ``python``: a fresh interpreter executes it (a traceback names the file and line).
* ``python`` marked ``run with pytest``: a test file, run by pytest in a fresh process
  (so sqlstore's pytest plugin loads as it does for users); every test must pass.
* ``console``: each ``$ command`` runs in bash, in order, in a directory and shell the
  block keeps; each must exit with 0 (a command shown failing ends with
  ``; echo "exit code $?"``), and prints exactly the lines that follow it in the block.
* ``bash``: the whole block runs under ``bash -e``; it must exit with 0.

What a block needs is said in an HTML comment on the line just before its opening
fence, as directives separated by ``;`` (GitHub and PyPI show no such comment):

* ``not run: WHY`` -- the block is not run; a block of any other language (``sql``)
  must say this, and so must a block that would install packages, start a server or
  need one. It goes alone: the rest of the comment is its reason.
* ``output varies: WHY`` (``console``) -- only the exit codes are checked.
* ``continues`` -- the block goes on where the block of its kind before it in the same
  file left off: same directory, same shell or interpreter; the chain is one test.
* ``setup: NAME`` -- the directory starts with more than nothing (see ``SETUPS``).
* ``run with pytest`` (``python``) -- see above.

Blocks without a language are output listings, and are not run. Commands find the
environment this test runs in: its interpreter's ``sqlstore`` and ``python`` first on
``PATH``, ``uv run`` outside a project uses its virtual environment. ``SQLSTORE_URL``
and ``SQLSTORE_TEST_URL`` are removed, so a block uses the database it names.

Links are checked too: the README's point at a heading of its own, at a page of
``docs/`` (and a heading there), or are absolute; a page of ``docs/`` links to pages of
``docs/`` and their headings (``mkdocs build --strict`` checks those as well).
"""

from __future__ import annotations

import doctest
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from markdown.extensions.toc import slugify

import sqlstore

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
#: Every file whose blocks run: the README, then each page of the docs site.
DOCUMENTS = [README, *sorted(DOCS.rglob("*.md"))]
#: The languages this test runs; a block in any other must be marked ``not run``.
RUNNABLE = {"python", "console", "bash"}
DIRECTIVES = {"not run", "output varies", "continues", "setup", "run with pytest"}
#: Seconds one chain of blocks may take (the slowest, the resume example, takes ~40 s
#: on a busy 2-core machine).
TIMEOUT = 240


@dataclass(frozen=True)
class Block:
    """One fenced block of the README or of a page of the docs."""

    source: Path
    line: int  # of the opening fence, counted from 1
    language: str
    text: str
    directives: dict[str, str]

    @property
    def kind(self) -> str:
        """How the block runs: ``doctest``, ``pytest``, ``python``, ``console``, ``bash``."""
        if self.language == "python" and self.text.startswith(">>>"):
            return "doctest"
        if self.language == "python" and "run with pytest" in self.directives:
            return "pytest"
        return self.language

    @property
    def file(self) -> str:
        """The block's file, relative to the checkout (``docs/guides/cli.md``)."""
        return self.source.relative_to(ROOT).as_posix()

    def __str__(self) -> str:
        return f"{self.file}:{self.line} ({self.language})"


def _directives(line: str) -> dict[str, str]:
    """``<!-- not run: why; setup: x -->`` as ``{"not run": "why", "setup": "x"}``."""
    found = re.fullmatch(r"<!--(.*)-->", line.strip())
    if found is None:
        return {}
    text = found.group(1).strip()
    if text.startswith("not run:"):  # goes alone, so its reason may hold a ";"
        return {"not run": text.removeprefix("not run:").strip()}
    directives = {}
    for part in text.split(";"):
        key, _, value = part.partition(":")
        directives[key.strip()] = value.strip()
    return directives


def readme_blocks(source: Path) -> list[Block]:
    """Every fenced block of ``source``, with the directives on the line before it."""
    lines = source.read_text().splitlines()
    blocks = []
    index = 0
    while index < len(lines):
        opening = re.fullmatch(r"```(\S*)\s*", lines[index])
        if opening is None:
            index += 1
            continue
        end = lines.index("```", index + 1)
        before = lines[index - 1] if index else ""
        body = "\n".join(lines[index + 1 : end]) + "\n"
        blocks.append(Block(source, index + 1, opening.group(1), body, _directives(before)))
        index = end + 1
    return blocks


BLOCKS = [block for document in DOCUMENTS for block in readme_blocks(document)]


def chains(blocks: list[Block]) -> list[list[Block]]:
    """The blocks that run, grouped: a block marked ``continues`` joins the chain of the
    last block of its kind in its file."""
    result: list[list[Block]] = []
    last: dict[tuple[Path, str], list[Block]] = {}
    for block in blocks:
        if block.language not in RUNNABLE or "not run" in block.directives:
            continue  # an output listing, or said why (else the test above fails)
        key = (block.source, block.kind)
        if "continues" in block.directives and key in last:
            last[key].append(block)
        else:
            last[key] = [block]
            result.append(last[key])
    return result


# -- what the directory of a chain starts with ------------------------------------------

#: When the command-line guide's session says the SDK wrote its two conversations: to the
#: microsecond, as a file system keeps it (``--json`` shows what the database kept).
WRITTEN = {
    "124a90f4132448a887530e27488d64ef": datetime(2026, 11, 30, 7, 7, 46, 205183, tzinfo=UTC),
    "2969d8ef597848188eb53b325b7c1d46": datetime(2026, 9, 1, 10, 0, 0, 412906, tzinfo=UTC),
}


def _checkout(work: Path) -> None:
    """What the README's commands that say "in a checkout" use: ``examples/``."""
    shutil.copytree(
        ROOT / "examples", work / "examples", ignore=shutil.ignore_patterns("__pycache__")
    )


def _sdk_conversations(work: Path) -> None:
    """``conversations/``: two conversations as the OpenHands SDK wrote them.

    Made by ``tests/readme/make_conversations.py``; each file gets the modification
    time the session shows (``sqlstore import`` keeps it), as git keeps none.
    """
    shutil.copytree(ROOT / "tests" / "readme" / "conversations", work / "conversations")
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for namespace, written in WRITTEN.items():
        stamp = (written - epoch) // timedelta(microseconds=1) * 1000  # exact, in ns
        for path in (work / "conversations" / namespace).rglob("*"):
            if path.is_file():
                os.utime(path, ns=(stamp, stamp))


SETUPS: dict[str, Callable[[Path], None]] = {
    "checkout": _checkout,
    "sdk-conversations": _sdk_conversations,
}


# -- running ----------------------------------------------------------------------------


def _environment() -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in {"SQLSTORE_URL", "SQLSTORE_TEST_URL"} and not name.startswith("PYTEST_")
    }
    path = [str(Path(sys.executable).parent)]
    uv = os.environ.get("UV")  # set by `uv run`: the uv that runs these tests
    if uv:
        path.append(str(Path(uv).parent))
    env["PATH"] = os.pathsep.join([*path, env.get("PATH", "")])
    if sys.prefix != sys.base_prefix:
        env["VIRTUAL_ENV"] = sys.prefix  # `uv run` outside a project uses it
    return env


def _run(
    command: list[str], cwd: Path, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        cwd=cwd,
        env=_environment(),
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def _tail(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit code {done.returncode}\n{(done.stdout + done.stderr)[-4000:]}"


def _run_doctest(chain: list[Block], work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(work)  # the sessions create their databases here
    parser = doctest.DocTestParser()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    globs: dict[str, object] = {}
    for block in chain:
        test = parser.get_doctest(block.text, globs, str(block), str(block.source), block.line)
        runner.run(test, clear_globs=False)  # a chain's sessions share them
    result = runner.summarize(verbose=False)
    assert result.attempted > 0
    assert result.failed == 0, f"{chain[0]}: see the doctest report above"


#: Runs the blocks of a chain one after another in one namespace, each compiled so that
#: a traceback names its file and line.
_PYTHON_RUNNER = """
import json, sys
namespace = {"__name__": "__main__"}
for name, line, source in json.load(sys.stdin):
    exec(compile("\\n" * line + source, name, "exec"), namespace)
"""


def _run_python(chain: list[Block], work: Path) -> None:
    sources = [[block.file, block.line, block.text] for block in chain]
    done = _run([sys.executable, "-c", _PYTHON_RUNNER], work, stdin=json.dumps(sources))
    assert done.returncode == 0, f"{chain[0]}: {_tail(done)}"


def _run_pytest(chain: list[Block], work: Path) -> None:
    (block,) = chain
    (work / "test_readme_block.py").write_text(block.text)
    done = _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], work)
    assert done.returncode == 0, f"{block}: {_tail(done)}"
    assert re.search(r"\b\d+ passed\b", done.stdout), done.stdout


@dataclass
class Command:
    """One ``$ command`` of a console block, and what the README says it prints."""

    block: Block
    command: str
    shown: list[str]


def _commands(block: Block) -> list[Command]:
    commands: list[Command] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            commands.append(Command(block, line[2:], []))
        else:
            assert commands, f"{block}: output before the first `$ ` command"
            commands[-1].shown.append(line)
    assert commands, f"{block}: no `$ ` command"
    return commands


def _run_console(chain: list[Block], work: Path) -> None:
    commands = [command for block in chain for command in _commands(block)]
    results = work.parent / "results"  # outside the directory the commands see
    results.mkdir()
    # One shell for the chain, so `export` and `cd` carry on; each command's output
    # (stdout and stderr, in order) and exit code go to files of their own.
    script = [
        f"{{\n{command.command}\n}} > {results}/{number}.out 2>&1\necho $? > {results}/{number}.rc"
        for number, command in enumerate(commands)
    ]
    done = _run(["bash", "-c", "\n".join(script)], work)
    assert done.returncode == 0, f"{chain[0]}: the shell failed: {_tail(done)}"
    wrong = []
    for number, command in enumerate(commands):
        code = (results / f"{number}.rc").read_text().strip()
        printed = (results / f"{number}.out").read_text(errors="replace").rstrip("\n")
        varies = "output varies" in command.block.directives
        if code != "0" or (not varies and printed != "\n".join(command.shown)):
            wrong.append(f"{command.block}: $ {command.command}\n(exit code {code})\n{printed}")
    assert not wrong, "commands that failed or printed otherwise:\n\n" + "\n\n".join(wrong)


def _run_bash(chain: list[Block], work: Path) -> None:
    script = "\n".join(block.text for block in chain)
    done = _run(["bash", "-e", "-o", "pipefail", "-c", script], work)
    assert done.returncode == 0, f"{chain[0]}: {_tail(done)}"


# -- the tests --------------------------------------------------------------------------


def test_every_block_runs_or_says_why_not() -> None:
    problems = []
    for block in BLOCKS:
        unknown = set(block.directives) - DIRECTIVES
        if unknown:
            problems.append(f"{block}: unknown directive(s) {sorted(unknown)}")
        for needs_reason in ("not run", "output varies", "setup"):
            if needs_reason in block.directives and not block.directives[needs_reason]:
                problems.append(f"{block}: `{needs_reason}` needs its text after a colon")
        if "not run" in block.directives:
            continue
        if block.language and block.language not in RUNNABLE:
            problems.append(f"{block}: a {block.language} block needs `<!-- not run: why -->`")
        if not block.language and block.directives:
            problems.append(f"{block}: a block without a language is not run; say which")
        setup = block.directives.get("setup")
        if setup and setup not in SETUPS:
            problems.append(f"{block}: no setup named {setup!r} (known: {sorted(SETUPS)})")
        if "output varies" in block.directives and block.kind != "console":
            problems.append(f"{block}: `output varies` is for console blocks")
        if "run with pytest" in block.directives and block.language != "python":
            problems.append(f"{block}: `run with pytest` is for python blocks")
    for chain in chains(BLOCKS):
        if "continues" in chain[0].directives:
            problems.append(f"{chain[0]}: `continues`, but no {chain[0].kind} block before it")
        if chain[0].kind == "pytest" and len(chain) > 1:
            problems.append(f"{chain[1]}: a pytest block cannot be continued")
        for block in chain[1:]:
            if "setup" in block.directives:
                problems.append(f"{block}: `setup` goes on the first block of a chain")
    assert not problems, "\n".join(problems)


def test_the_wheel_named_is_this_version() -> None:
    """The install lines name the wheel ``uv build`` writes now."""
    assert f"dist/sqlstore-{sqlstore.__version__}-py3-none-any.whl" in README.read_text()


RUNNERS = {
    "python": _run_python,
    "pytest": _run_pytest,
    "console": _run_console,
    "bash": _run_bash,
}


@pytest.mark.parametrize(
    "chain",
    chains(BLOCKS),
    ids=lambda chain: f"{chain[0].file}:{chain[0].line}-{chain[0].kind}",
)
def test_readme_block_runs(
    chain: list[Block], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    setup = chain[0].directives.get("setup")
    if setup:
        SETUPS[setup](work)
    kind = chain[0].kind
    if kind == "doctest":
        _run_doctest(chain, work, monkeypatch)
    else:
        RUNNERS[kind](chain, work)


def _anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _site_anchor(heading: str) -> str:
    """The anchor the docs site gives it (Python-Markdown's ``toc``, as mkdocs.yml sets it)."""
    return slugify(re.sub(r"`([^`]*)`", r"\1", heading.strip()), "-")


def _prose(text: str) -> str:
    """``text`` without its fenced blocks, whose ``#`` lines are no headings."""
    return re.sub(r"^```\S*\n.*?^```$", "", text, flags=re.M | re.S)


def _anchors(document: Path) -> set[str]:
    """The anchors of ``document``'s headings that GitHub and the site give alike."""
    headings = re.findall(r"^#+ (.+)$", _prose(document.read_text()), re.M)
    return {_anchor(h) for h in headings if _anchor(h) == _site_anchor(h)}


def _links(document: Path) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)\)", _prose(document.read_text()))


def _broken(document: Path, target: str) -> str | None:
    """Why the link ``target`` of ``document`` leads nowhere, or None."""
    if re.match(r"https?://", target):
        return None
    page, _, anchor = target.partition("#")
    goes_to = (document.parent / page).resolve() if page else document
    if page and not goes_to.is_relative_to(DOCS):
        return f"{target}: a relative link must lead to a page under docs/"
    if not goes_to.is_file():
        return f"{target}: no such page"
    if anchor and anchor not in _anchors(goes_to):
        return f"{target}: no heading #{anchor} in {goes_to.relative_to(ROOT)}"
    return None


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_links_lead_to_a_page_and_heading(document: Path) -> None:
    """A relative link leads to a page of docs/ (a heading of it, if it names one).

    Links in the README go into docs/ too: the repository shows the pages there, and the
    site is built from them. A link that is absolute is not followed (no network)."""
    broken = [why for target in _links(document) if (why := _broken(document, target))]
    assert not broken, f"{document.relative_to(ROOT)}:\n" + "\n".join(broken)


def test_the_readme_links_every_guide() -> None:
    linked = {
        (README.parent / target.partition("#")[0]).resolve()
        for target in _links(README)
        if not re.match(r"https?://", target)
    }
    guides = set((DOCS / "guides").glob("*.md"))
    assert guides, "no guides under docs/guides"
    assert not guides - linked, f"not linked from the README: {sorted(guides - linked)}"


def test_every_page_is_in_the_site_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = {path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md")}
    assert not {page for page in pages if f": {page}\n" not in nav}
