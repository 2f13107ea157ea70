"""Make ``isinstance(store, openhands.sdk.io.FileStore)`` true without importing the SDK.

Importing ``openhands.sdk`` is slow and configures the root logger, so sqlstore never
imports it. Instead, ``SQLFileStore`` is registered as a virtual subclass of the SDK's
``FileStore`` ABC as soon as that module exists: at once if it is already imported,
else by a tiny import hook that fires when it is imported.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Sequence
from types import ModuleType
from typing import Any

_MODULE = "openhands.sdk.io.base"
_lock = threading.Lock()
_classes: list[type] = []


def register(cls: type) -> None:
    """Register ``cls`` with the SDK's ``FileStore``, now or when the SDK is imported."""
    with _lock:
        _classes.append(cls)
        module = sys.modules.get(_MODULE)
        if module is not None:
            _register_all(module)
        elif not any(isinstance(f, _Finder) for f in sys.meta_path):
            sys.meta_path.insert(0, _Finder())


def _register_all(module: ModuleType) -> None:
    file_store: Any = getattr(module, "FileStore", None)
    if file_store is None:
        return
    for cls in _classes:
        file_store.register(cls)


class _Finder(importlib.abc.MetaPathFinder):
    """Wraps the loader of the SDK's ``FileStore`` module to register after it runs."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _Loader(spec.loader)
                return spec
        return None


class _Loader(importlib.abc.Loader):
    def __init__(self, inner: importlib.abc.Loader) -> None:
        self._inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._inner.exec_module(module)
        with _lock:
            _register_all(module)
