"""The docs site as a reader sees it: built with ``mkdocs build --strict``, served over
HTTP and opened in headless Chromium, driven through the Chrome DevTools protocol.

The home page and a guide render (their headings, navigation, tables and code, the
theme's styles), search finds a guide, and the site loads nothing from the network.
Chromium is Debian's ``chromium`` package (``.ci/run`` installs it); without it these
tests are not run, unless ``SQLSTORE_TEST_REQUIRE`` names ``chromium``.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from tests.backends import required

ROOT = Path(__file__).resolve().parent.parent
#: Seconds a page may take to show what a test waits for (search loads its index in a
#: web worker first).
WAIT = 30.0
#: The flags of a browser that runs once, quietly: no sandbox (CI runs as root), no
#: GPU, no update or sync traffic, and a profile of its own.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        reason = "no chromium on PATH (Debian: apt-get install chromium)"
        if "chromium" in required():
            pytest.fail(f"{reason} (required by SQLSTORE_TEST_REQUIRE)", pytrace=False)
        pytest.skip(reason)
    return found


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The site, built from this checkout and served on 127.0.0.1; its base URL."""
    built = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(built)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass  # a request is no news

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=built))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class Page:
    """One browser tab, driven by DevTools protocol commands over its WebSocket."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send a command and return its result (events that arrive meanwhile are
        not needed here and are dropped)."""
        number = next(self.ids)
        self.socket.send(json.dumps({"id": number, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=WAIT))
            if message.get("id") == number:
                assert "error" not in message, f"{method}: {message['error']}"
                result: dict[str, Any] = message["result"]
                return result

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, f"{expression}: {result['exceptionDetails']}"
        return result["result"].get("value")

    def wait_for(self, expression: str) -> Any:
        """The first truthy value of ``expression``, polled until ``WAIT`` runs out."""
        deadline = time.monotonic() + WAIT
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            assert time.monotonic() < deadline, f"still false after {WAIT}s: {expression}"
            time.sleep(0.1)

    def open(self, url: str) -> None:
        """Load ``url`` and wait until it and what it loads are in."""
        self.call("Page.navigate", url=url)
        self.wait_for(f"location.href === {json.dumps(url)} && document.readyState === 'complete'")


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    """A tab of a headless Chromium started for these tests, in a fresh profile."""
    profile = tmp_path_factory.mktemp("chromium-profile")
    browser = subprocess.Popen(
        [
            _chromium(),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",  # the port it took is in DevToolsActivePort
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its helper processes end with it (killpg below)
    )
    try:
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + WAIT
        while not active.is_file() or not active.read_text().strip():
            assert browser.poll() is None, f"chromium exited with {browser.returncode}"
            assert time.monotonic() < deadline, "chromium opened no DevTools port"
            time.sleep(0.1)
        port = active.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=WAIT) as r:
            targets = json.load(r)
        (tab,) = [target for target in targets if target["type"] == "page"]
        with connect(tab["webSocketDebuggerUrl"], max_size=None, open_timeout=WAIT) as socket:
            yield Page(socket)
    finally:
        os.killpg(browser.pid, signal.SIGTERM)
        try:
            browser.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            os.killpg(browser.pid, signal.SIGKILL)
            browser.wait()


#: The page's title heading, without the permalink sign the theme appends.
H1 = "document.querySelector('h1').textContent.replace('\u00b6', '').trim()"
#: The origins a page loaded something from (its own and every resource's).
ORIGINS = """[location.origin, ...performance.getEntriesByType('resource')
    .map(entry => new URL(entry.name).origin)]"""


def test_the_home_page_renders_with_the_guides_and_the_reference(site: str, page: Page) -> None:
    page.open(site + "index.html")
    assert page.evaluate("document.title").startswith("sqlstore")
    assert page.evaluate(H1) == "sqlstore"
    # The theme's styles apply: the navigation bar is laid out at the top, not inline text.
    assert page.evaluate("document.styleSheets.length") >= 2
    assert page.evaluate("getComputedStyle(document.querySelector('.navbar')).position") in {
        "fixed",
        "sticky",
        "relative",
    }
    menus = page.evaluate(
        "[...document.querySelectorAll('.navbar .dropdown-toggle')].map(a => a.textContent.trim())"
    )
    assert {"Guides", "Reference"} <= set(menus)
    guides = page.evaluate(
        "[...document.querySelectorAll('.navbar a[href*=\"guides/\"]')].map(a => a.href)"
    )
    assert len(set(guides)) == len(list((ROOT / "docs" / "guides").glob("*.md")))
    assert set(page.evaluate(ORIGINS)) == {site.rstrip("/")}


def test_a_guide_renders_its_headings_tables_and_code(site: str, page: Page) -> None:
    page.open(site + "guides/using-the-store.html")
    assert page.evaluate(H1) == "Using the store"
    headings = page.evaluate("[...document.querySelectorAll('h2')].map(h => h.id)")
    assert {"locks", "errors"} <= set(headings)
    # The errors table is a table, with a row per exception.
    assert page.evaluate("document.querySelectorAll('table tbody tr').length") >= 10
    code = page.evaluate("document.querySelector('pre code').textContent")
    assert code.startswith(">>> import sqlstore")
    # The directives for tests/test_readme.py are comments, never shown.
    assert "not run" not in page.evaluate("document.body.innerText")
    # The table of contents in the sidebar links the page's own headings.
    assert page.evaluate("!!document.querySelector('a[href=\"#locks\"]')")
    assert set(page.evaluate(ORIGINS)) == {site.rstrip("/")}


def test_search_finds_the_guide_that_holds_a_word(site: str, page: Page) -> None:
    # A query in the address, as the theme's search box sends it.
    page.open(site + "index.html?q=PgBouncer")
    found = page.wait_for(
        "[...document.querySelectorAll('#mkdocs-search-results a')].map(a => a.href)"
    )
    assert site + "guides/scaling-out.html#pgbouncer" in found or any(
        link.startswith(site + "guides/scaling-out.html") for link in found
    ), found
    # Typed into the search box.
    page.evaluate(
        """(() => {
            const box = document.getElementById('mkdocs-search-query');
            box.value = 'takeover';
            box.dispatchEvent(new KeyboardEvent('keyup'));
        })()"""
    )
    found = page.wait_for(
        """(() => {
            const links = [...document.querySelectorAll('#mkdocs-search-results a')]
                .map(a => a.href);
            return links.some(href => href.includes('guides/agent-server.html')) && links;
        })()"""
    )
    assert all(link.startswith(site) for link in found), found
