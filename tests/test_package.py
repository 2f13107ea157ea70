"""The package as users see it: its public modules, its version, its metadata."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import re
import tomllib
import types
from pathlib import Path

import pytest

import sqlstore

ROOT = Path(__file__).resolve().parent.parent

#: The modules users import; each is in the API reference (docs/reference/).
PUBLIC_MODULES = [
    "sqlstore",
    "sqlstore.admin",
    "sqlstore.agent_server",
    "sqlstore.cli",
    "sqlstore.errors",
    "sqlstore.migrations",
    "sqlstore.progress",
    "sqlstore.pytest_plugin",
    "sqlstore.schema",
    "sqlstore.sdk",
    "sqlstore.telemetry",
    "sqlstore.urls",
]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_every_public_module_declares_what_it_exports(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported, f"{name} has no __all__"
    assert len(set(exported)) == len(exported)
    for attribute in exported:
        assert hasattr(module, attribute), f"{name}.__all__ names {attribute!r}, which is missing"


def test_one_version_source() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert importlib.metadata.version("sqlstore") == sqlstore.__version__


def test_license_and_metadata() -> None:
    metadata = importlib.metadata.metadata("sqlstore")
    assert metadata["License-Expression"] == "MIT"
    assert "the sqlstore authors" in (ROOT / "LICENSE").read_text()
    assert "Framework :: Pytest" in metadata.get_all("Classifier", [])
    entry_points = importlib.metadata.entry_points(group="pytest11")
    assert [ep.value for ep in entry_points if ep.name == "sqlstore"] == ["sqlstore.pytest_plugin"]


def test_every_public_module_has_a_reference_page() -> None:
    nav = (ROOT / "mkdocs.yml").read_text()
    home = (ROOT / "docs" / "index.md").read_text()
    for name in PUBLIC_MODULES:
        page = "sqlstore" if name == "sqlstore" else name.removeprefix("sqlstore.")
        text = (ROOT / "docs" / "reference" / f"{page}.md").read_text()
        assert f"::: {name}\n" in text, name
        assert f"reference/{page}.md" in nav, name
        assert f"(reference/{page}.md)" in home, f"{name} is not in docs/index.md's table"


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # its parent is a module, not a package
        return False


def test_every_module_the_docs_name_is_public() -> None:
    """A module the README or a guide tells readers to use has a reference page."""
    texts = [ROOT / "README.md", *sorted((ROOT / "docs" / "guides").glob("*.md"))]
    named = {
        name for path in texts for name in re.findall(r"\bsqlstore(?:\.[a-z_]+)+", path.read_text())
    }
    modules = set()
    for name in named:
        # The longest prefix of the dotted name that is a module (``install`` in
        # ``sqlstore.agent_server.install`` is its function, though a module has that name).
        parts = name.split(".")
        found: object = sqlstore
        module = "sqlstore"
        for part in parts[1:]:
            found = getattr(found, part, None)
            if not isinstance(found, types.ModuleType):
                if found is None and _is_module(f"{module}.{part}"):
                    module = f"{module}.{part}"  # a module not imported yet
                break
            module = found.__name__
        modules.add(module)
    assert modules, "the docs name no module of the package"
    assert not modules - set(PUBLIC_MODULES), sorted(modules - set(PUBLIC_MODULES))
