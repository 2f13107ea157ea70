"""Model-based test: random operation sequences against a reference model of the contract.

A hypothesis ``RuleBasedStateMachine`` drives write/read/read_bytes/list/exists/delete
and lock blocks (committed or rolled back) over tricky paths on every backend, and
compares each result, or each exception type, with a small in-memory model written
from the contract, not from sqlstore's code.

Profiles: ``ci`` (default) and ``long`` (``HYPOTHESIS_PROFILE=long``) for local runs.
"""

from __future__ import annotations

import itertools
import os
import posixpath
import uuid
from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from sqlstore import SQLFileStore
from sqlstore import paths as store_paths

settings.register_profile(
    "ci",
    max_examples=100,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "long",
    max_examples=400,
    stateful_step_count=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")

#: Operations tried, per backend (reported by the test's output).
TRIED: Counter[str] = Counter()

# Names chosen to collide in every way a SQL store can get wrong: prefixes, LIKE
# wildcards, case, trailing spaces, non-ASCII, dots.
NAMES = ["a", "A", "ab", "a_", "a%", "a ", "b", "é", "😀", ".hidden", "x.json"]
SPECIAL = ["", ".", "..", "/", "a/..", "../a", "a/../..", "\\a", "a\\b"]


@st.composite
def paths(draw: Any) -> str:
    if draw(st.integers(0, 9)) == 0:
        return str(draw(st.sampled_from(SPECIAL)))
    parts = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3))
    path = "/".join(parts)
    if draw(st.booleans()) and draw(st.booleans()):
        path = "/" + path
    return path


contents = st.one_of(st.text(max_size=20), st.binary(max_size=20))


class Escapes(Exception):
    pass


def normalize(path: str) -> str:
    """The contract's normalisation, written independently of sqlstore.paths."""
    if path.startswith("/"):
        path = path[1:]
    path = path.replace("\\", "/")
    if path.startswith("/"):
        raise Escapes(path)
    result = posixpath.normpath(path) if path else "."
    if result == ".." or result.startswith("../"):
        raise Escapes(path)
    return "" if result == "." else result


class Model:
    """Files as a dict from normalised path to bytes; directories are implied."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    def is_dir(self, p: str) -> bool:
        return p == "" or any(f.startswith(p + "/") for f in self.files)

    def write(self, p: str, data: bytes) -> type[Exception] | None:
        if p == "" or self.is_dir(p):
            return IsADirectoryError
        parts = p.split("/")
        if any("/".join(parts[:i]) in self.files for i in range(1, len(parts))):
            return FileExistsError
        self.files[p] = data
        return None

    def read(self, p: str) -> bytes | type[Exception]:
        if p in self.files:
            return self.files[p]
        return IsADirectoryError if self.is_dir(p) else FileNotFoundError

    def list(self, original: str, p: str) -> list[str]:
        if p in self.files:
            return [original]
        prefix = p + "/" if p else ""
        children: dict[str, bool] = {}
        for f in self.files:
            if f.startswith(prefix):
                head, _, rest = f[len(prefix) :].partition("/")
                children[head] = children.get(head, False) or bool(rest)
        return [
            posixpath.join(original, name) + ("/" if is_dir else "")
            for name, is_dir in sorted(children.items())
        ]

    def delete(self, p: str) -> None:
        for f in list(self.files):
            if p == "" or f == p or f.startswith(p + "/"):
                del self.files[f]


class StoreMachine(RuleBasedStateMachine):
    engine: sa.Engine
    backend: str

    def __init__(self) -> None:
        super().__init__()
        self.store = SQLFileStore(self.engine, f"model-{uuid.uuid4().hex}")
        self.model = Model()

    def teardown(self) -> None:
        self.store.delete("")

    def _count(self, op: str) -> None:
        TRIED[self.backend] += 1
        TRIED[f"{self.backend}:{op}"] += 1

    @rule(path=paths(), data=contents)
    def write(self, path: str, data: str | bytes) -> None:
        self._count("write")
        raw = data.encode() if isinstance(data, str) else data
        try:
            p = normalize(path)
        except Escapes:
            with pytest.raises(ValueError):
                self.store.write(path, data)
            return
        expected = self.model.write(p, raw)
        if expected is None:
            self.store.write(path, data)
        else:
            with pytest.raises(expected):
                self.store.write(path, data)

    @rule(path=paths(), as_text=st.booleans())
    def read(self, path: str, as_text: bool) -> None:
        self._count("read")
        try:
            p = normalize(path)
        except Escapes:
            with pytest.raises(ValueError):
                self.store.read_bytes(path)
            return
        expected = self.model.read(p)
        if isinstance(expected, bytes):
            if not as_text:
                assert self.store.read_bytes(path) == expected
                return
            try:
                text = expected.decode("utf-8")
            except UnicodeDecodeError:
                with pytest.raises(UnicodeDecodeError):
                    self.store.read(path)
            else:
                assert self.store.read(path) == text
        else:
            with pytest.raises(expected):
                self.store.read_bytes(path) if not as_text else self.store.read(path)

    @rule(path=paths())
    def list_and_exists(self, path: str) -> None:
        self._count("list")
        try:
            p = normalize(path)
        except Escapes:
            with pytest.raises(ValueError):
                self.store.list(path)
            return
        assert self.store.list(path) == self.model.list(path, p)
        assert self.store.exists(path) == (p in self.model.files or self.model.is_dir(p))

    @rule(path=paths())
    def delete(self, path: str) -> None:
        self._count("delete")
        try:
            p = normalize(path)
        except Escapes:
            with pytest.raises(ValueError):
                self.store.delete(path)
            return
        self.store.delete(path)
        self.model.delete(p)

    @rule(
        lock=st.sampled_from(["events/.eventlog.lock", "a", "lock ", "é"]),
        path=paths(),
        data=contents,
        fail=st.booleans(),
    )
    def write_in_lock_block(self, lock: str, path: str, data: str | bytes, fail: bool) -> None:
        """A write inside a lock block commits with the block, or rolls back with it."""
        self._count("lock")
        raw = data.encode() if isinstance(data, str) else data
        try:
            p = normalize(path)
        except Escapes:
            return
        snapshot = dict(self.model.files)
        allowed = self.model.write(p, raw) is None
        try:
            with self.store.lock(lock, timeout=5):
                if allowed:
                    self.store.write(path, data)
                if fail:
                    raise RuntimeError("roll back")
        except RuntimeError:
            self.model.files = snapshot

    @invariant()
    def root_always_exists(self) -> None:
        assert self.store.exists("")


def test_store_matches_the_model(engine: sa.Engine, backend: str) -> None:
    machine = type(
        f"StoreMachine_{backend}", (StoreMachine,), {"engine": engine, "backend": backend}
    )
    before = TRIED[backend]
    run_state_machine_as_test(machine, settings=settings.get_profile(PROFILE))
    tried = TRIED[backend] - before
    print(f"\n{backend}: {tried} operations tried ({PROFILE} profile)")
    assert tried > 0


def test_every_short_path_normalises_as_the_contract_says() -> None:
    """Every path of up to six characters from the ones that matter to normalisation
    (``sqlstore.paths.normalize`` proves most paths normal with substring tests and sends only
    the rest to ``normpath``: this checks both ways against the independent model)."""
    checked = 0
    for length in range(7):
        for letters in itertools.product("a./\\", repeat=length):
            path = "".join(letters)
            store_paths._normalised.clear()  # the cache would answer for a spelling seen before
            try:
                expected: str | type[Exception] = normalize(path)
            except Escapes:
                expected = ValueError
            try:
                got: str | type[Exception] = store_paths.normalize(path)
            except ValueError:
                got = ValueError
            assert got == expected, path
            if got is not ValueError:
                assert store_paths.normalize(path) == got, path  # the cache's answer now
            checked += 1
    assert checked == sum(4**n for n in range(7))
