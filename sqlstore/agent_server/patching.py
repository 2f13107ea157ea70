"""Replacing attributes of the installed server, checked first and undone exactly.

Each :class:`Patch` names one server attribute (a method, a module function, a class,
a route's endpoint) and the parameters the code here was written against. Before
anything is replaced, every patch is checked; any difference fails the installation
with one message listing them all, so an upgraded server never half-works.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

Maker = Callable[[Any, Any], Any]


def _where(owner: Any, name: str) -> str:
    module = getattr(owner, "__module__", None) or getattr(owner, "__name__", "?")
    if inspect.ismodule(owner):
        return f"{owner.__name__}:{name}"
    return f"{module}:{owner.__qualname__}.{name}"


def parameters(function: Any) -> tuple[str, ...] | None:
    """The parameter names of a function, method, class- or static method.

    ``None`` for anything else (a property, a value): not what a patch replaces.
    """
    if isinstance(function, classmethod | staticmethod):
        function = function.__func__
    if not callable(function):
        return None
    try:
        return tuple(inspect.signature(function).parameters)
    except (TypeError, ValueError):
        return None


@dataclass
class Patch:
    """``owner.name`` becomes ``make(installation, original)`` while installed.

    Attributes:
        owner: A class or a module.
        name: The attribute.
        expected: The parameter names of the original, as this code was written for.
        make: Builds the replacement from the installation and the original (the raw
            attribute: a ``classmethod`` stays one).
    """

    owner: Any
    name: str
    expected: tuple[str, ...]
    make: Maker
    original: Any = field(default=None, init=False)

    @property
    def where(self) -> str:
        """``module:Class.attribute``."""
        return _where(self.owner, self.name)

    def problem(self) -> str | None:
        """Why this patch does not fit the installed server, or ``None``."""
        raw = vars(self.owner).get(self.name)
        if raw is None:
            return f"{self.where} is missing"
        found = parameters(raw)
        if found is None:
            return f"{self.where} is a {type(raw).__name__}, not a function"
        if found != self.expected:
            return f"{self.where} takes {found}, not {self.expected}"
        return None

    def apply(self, installation: Any) -> None:
        """Replace the attribute."""
        self.original = vars(self.owner)[self.name]
        setattr(self.owner, self.name, self.make(installation, self.original))

    def undo(self) -> None:
        """Put the original back."""
        setattr(self.owner, self.name, self.original)


@dataclass
class PropertyPatch(Patch):
    """A read-only property replaced by another; ``expected`` names its getter's parameters.

    ``make`` returns the new getter; the property is rebuilt around it.
    """

    def problem(self) -> str | None:
        """Why the attribute is not the property this code replaces."""
        raw = vars(self.owner).get(self.name)
        if not isinstance(raw, property) or raw.fget is None:
            return f"{self.where} is not a property"
        found = parameters(raw.fget)
        if found != self.expected:
            return f"{self.where} takes {found}, not {self.expected}"
        return None

    def apply(self, installation: Any) -> None:
        """Replace the property."""
        self.original = vars(self.owner)[self.name]
        setattr(self.owner, self.name, property(self.make(installation, self.original.fget)))


@dataclass
class ClassPatch(Patch):
    """A class replaced by one with the same interface: each method is checked.

    ``expected`` is unused; ``methods`` maps each method to its parameter names.
    """

    methods: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def problem(self) -> str | None:
        """Why the class does not have the interface the replacement implements."""
        cls = vars(self.owner).get(self.name)
        if not isinstance(cls, type):
            return f"{self.where} is missing"
        for method, expected in self.methods.items():
            found = parameters(getattr(cls, method)) if hasattr(cls, method) else None
            if found != expected:
                return f"{self.where}.{method} takes {found}, not {expected}"
        return None


@dataclass
class RoutePatch(Patch):
    """The endpoint of a route of an ``APIRouter``, replaced before apps copy the route.

    ``owner`` is the router's module and ``name`` the endpoint function's name there;
    apps built afterwards (``include_router`` copies ``route.endpoint``) serve the
    replacement.
    """

    router: str = "router"

    def _route(self) -> Any:
        router = getattr(self.owner, self.router, None)
        endpoint = vars(self.owner).get(self.name)
        for route in getattr(router, "routes", ()):
            if getattr(route, "endpoint", None) is endpoint:
                return route
        return None

    def problem(self) -> str | None:
        """Why the route is not the one this code replaces."""
        route = self._route()
        if route is None:
            return f"{self.where} is not a route of {self.owner.__name__}.{self.router}"
        found = parameters(route.endpoint)
        if found != self.expected:
            return f"{self.where} takes {found}, not {self.expected}"
        return None

    def apply(self, installation: Any) -> None:
        """Point the route at the replacement."""
        route = self._route()
        self.original = route.endpoint
        self._patched = route
        route.endpoint = self.make(installation, self.original)

    def undo(self) -> None:
        """Point the route back at the original."""
        self._patched.endpoint = self.original


def missing_fields(cls: Any, names: set[str]) -> str | None:
    """Which of ``names`` a dataclass lacks, as a message, or ``None``."""
    if not isinstance(cls, type) or not is_dataclass(cls):
        return f"{cls!r} is no longer a dataclass"
    lacking = names - {f.name for f in fields(cls)}
    if lacking:
        return f"{cls.__module__}:{cls.__qualname__} has no field {sorted(lacking)}"
    return None


def missing_attributes(owner: Any, names: set[str]) -> str | None:
    """Which of ``names`` ``owner`` lacks, as a message, or ``None``."""
    lacking = sorted(name for name in names if not hasattr(owner, name))
    if lacking:
        return f"{_where(owner, '')} has no {lacking}"
    return None
