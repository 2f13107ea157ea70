r"""Path and namespace rules shared by every dialect.

Paths are normalised the way the OpenHands ``LocalFileStore`` does it, then encoded
into the keys the schema stores:

* ``file_id``: a 16-byte BLAKE2b digest of (namespace, path), the primary key. A hash
  keeps the key short on every dialect (InnoDB caps index keys at 3072 bytes, and a
  1024-character path alone may take 4096).
* ``parent``: the directory's path as UTF-8 with every ``/`` replaced by a NUL byte.
  NUL sorts below every other byte, so a directory's whole subtree is the contiguous
  key range ``[enc(dir), enc(dir) + b"\\x01")``, with no sibling such as ``dir-x`` or
  ``dir.d`` in between. Listing and deleting a directory are range scans on that.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Callable

try:  # the C function behind posixpath.normpath (CPython 3.12), without its wrapper
    from posix import _path_normpath as _normpath  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - another Python
    _normpath = posixpath.normpath

#: Longest accepted path, in characters, after normalisation.
MAX_PATH_LENGTH = 1024
#: Longest accepted namespace, in characters.
MAX_NAMESPACE_LENGTH = 255

ROOT = ""
SEP = b"\x00"
#: The byte after :data:`SEP`: ``dir_key(d) + AFTER_SEP`` ends the subtree of ``d``.
AFTER_SEP = b"\x01"
_AFTER_SEP = AFTER_SEP


def check_namespace(namespace: object) -> str:
    """Return ``namespace`` if it is valid, else raise.

    Raises:
        TypeError: ``namespace`` is not a ``str``.
        ValueError: it is empty, longer than 255 characters, contains NUL or is not
            encodable as UTF-8.
    """
    if not isinstance(namespace, str):
        raise TypeError(f"namespace must be a str, not {type(namespace).__name__}")
    if not namespace:
        raise ValueError("namespace must not be empty")
    if len(namespace) > MAX_NAMESPACE_LENGTH:
        raise ValueError(f"namespace is longer than {MAX_NAMESPACE_LENGTH} characters")
    if "\x00" in namespace:
        raise ValueError("namespace must not contain NUL characters")
    _utf8(namespace, "namespace")
    return namespace


#: Paths normalised lately, and what they became (most calls name a path seen before).
_normalised: dict[str, str] = {}
#: Entries the cache holds at most; it is emptied when full.
_NORMALISED_MAX = 4096


def normalize(path: object) -> str:
    r"""Normalise ``path`` as ``LocalFileStore`` does; the root is ``""``.

    A leading ``/`` is stripped, ``\\`` becomes ``/``, then POSIX ``normpath`` applies.

    Raises:
        TypeError: ``path`` is not a ``str``.
        ValueError: the path escapes the root, contains NUL, is not encodable as UTF-8
            or is longer than :data:`MAX_PATH_LENGTH` characters.
    """
    if type(path) is not str:
        return _normalize(path)  # a subclass of str (not cached), or a TypeError
    found = _normalised.get(path)
    if found is not None:
        return found
    normal = normal_form(path)
    if len(path) <= MAX_PATH_LENGTH:
        if len(_normalised) >= _NORMALISED_MAX:
            _normalised.clear()
        _normalised[path] = normal
    return normal


def normal_form(path: object) -> str:
    """:func:`normalize` without its cache (for callers that keep what they need)."""
    # Most paths are normal already (the SDK writes events/event-00042-<id>.json): a
    # few substring tests prove it for less than half the cost of normpath, which
    # converts the path to wide characters and back. Normal: no empty, "." or ".."
    # part, no leading or trailing "/", nothing to rewrite. Every "." or ".." part is
    # followed by "/" unless it ends the path, which must not end in ".".
    if (
        type(path) is str
        and path
        and path[0] != "/"
        and path[-1] not in "/."
        and "./" not in path
        and "//" not in path
        and "\\" not in path
        and "\x00" not in path
        and len(path) <= MAX_PATH_LENGTH
        and path.isascii()
    ):
        return path
    return _normalize(path)


def _normalize(path: object) -> str:
    if not isinstance(path, str):
        raise TypeError(f"path must be a str, not {type(path).__name__}")
    if "\x00" in path:
        raise ValueError(f"path must not contain NUL characters: {path!r}")
    relative = path[1:] if path.startswith("/") else path
    relative = relative.replace("\\", "/")
    normal = (_normpath(relative) or ".") if relative else "."
    if relative.startswith("/") or normal == ".." or normal.startswith(("../", "/")):
        raise ValueError(f"path escapes filestore root: {path}")
    if normal == ".":
        return ROOT
    if len(normal) > MAX_PATH_LENGTH:
        raise ValueError(f"path is longer than {MAX_PATH_LENGTH} characters: {path[:80]!r}...")
    if not normal.isascii():
        _utf8(normal, "path")
    return normal


def split(path: str) -> tuple[str, str]:
    """Split a normalised, non-root path into (parent directory, name)."""
    parent, _, name = path.rpartition("/")
    return parent, name


def ancestors(path: str) -> list[str]:
    """The directories above a normalised path, nearest last, root excluded."""
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def dir_key(directory: str) -> bytes:
    """The ``parent`` column value of files directly inside ``directory``."""
    return directory.encode("utf-8").replace(b"/", SEP)


def subtree_range(directory: str) -> tuple[bytes, bytes | None]:
    """The ``parent`` range ``[low, high)`` of every file below ``directory``.

    ``high`` is ``None`` for the root: every key lies below it.
    """
    if directory == ROOT:
        return b"", None
    low = dir_key(directory)
    return low, low + _AFTER_SEP


def strict_subdir_range(directory: str) -> tuple[bytes, bytes | None]:
    """The ``parent`` range of files in subdirectories of ``directory`` (not directly in it)."""
    if directory == ROOT:
        # Every non-empty key; b"\x00" is the smallest non-empty key there can be.
        return SEP, None
    low = dir_key(directory)
    return low + SEP, low + _AFTER_SEP


def child_dir_of(directory: str, parent: bytes) -> str:
    """Name of the child directory of ``directory`` that holds a file whose parent is ``parent``."""
    offset = 0 if directory == ROOT else len(dir_key(directory)) + 1
    return parent[offset:].split(SEP, 1)[0].decode("utf-8")


def path_of(parent: bytes, name: str) -> str:
    r"""The path of the file stored with ``parent`` and ``name`` (the inverse of ``dir_key``).

    Example:
        >>> path_of(b"events\x00sub", "a.json")
        'events/sub/a.json'
        >>> path_of(b"", "base_state.json")
        'base_state.json'
    """
    if not parent:
        return name
    return parent.replace(SEP, b"/").decode("utf-8") + "/" + name


def after_child_dir(directory: str, child: str) -> bytes:
    """The smallest ``parent`` key that sorts after the whole subtree of ``directory/child``."""
    return dir_key(posixpath.join(directory, child)) + _AFTER_SEP


def file_id(namespace: str, path: str) -> bytes:
    """The 16-byte primary key of ``path`` in ``namespace``."""
    return _digest(b"sqlstore-file", namespace, path)


def file_ids(namespace: str, person: bytes = b"sqlstore-file") -> Callable[[str], bytes]:
    """``file_id`` of ``namespace`` as a function of the path (the namespace hashed once).

    With ``person=b"sqlstore-lock"``, ``lock_key`` instead.

    Args:
        namespace: The namespace.
        person: The digest's personalisation (which key it makes).
    """
    copy = id_prefix(namespace, person).copy

    def of(path: str) -> bytes:
        digest = copy()
        digest.update(path.encode("utf-8"))
        return digest.digest()

    return of


def id_prefix(namespace: str, person: bytes = b"sqlstore-file") -> hashlib.blake2b:
    """The digest of ``namespace`` as every id in it starts; a copy takes the path's UTF-8.

    ``prefix.copy()``, updated with the path's UTF-8, gives :func:`file_id` (or, with
    ``person=b"sqlstore-lock"``, :func:`lock_key`).
    """
    prefix = hashlib.blake2b(digest_size=16, person=person)
    prefix.update(namespace.encode("utf-8"))
    prefix.update(SEP)
    return prefix


def lock_key(namespace: str, path: str) -> bytes:
    """A 16-byte digest naming the lock on ``path`` in ``namespace``.

    Dialects shorten it as their lock namespaces require (a signed 64-bit integer for
    PostgreSQL advisory locks, part of a 64-character name for MySQL ``GET_LOCK``).
    """
    return _digest(b"sqlstore-lock", namespace, path)


def _digest(person: bytes, namespace: str, path: str) -> bytes:
    digest = id_prefix(namespace, person)
    digest.update(path.encode("utf-8"))
    return digest.digest()


def _utf8(value: str, what: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} is not encodable as UTF-8: {value!r}") from exc
