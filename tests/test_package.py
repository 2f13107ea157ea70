"""The package as users see it: its public modules, its version, its metadata."""

from __future__ import annotations

import importlib
import importlib.metadata
import tomllib
from pathlib import Path

import pytest

import sqlstore

ROOT = Path(__file__).resolve().parent.parent

#: The modules users import; each is in the API reference (docs/reference/).
PUBLIC_MODULES = [
    "sqlstore",
    "sqlstore.admin",
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
    for name in PUBLIC_MODULES:
        page = "sqlstore" if name == "sqlstore" else name.removeprefix("sqlstore.")
        text = (ROOT / "docs" / "reference" / f"{page}.md").read_text()
        assert f"::: {name}\n" in text, name
        assert f"reference/{page}.md" in nav, name
