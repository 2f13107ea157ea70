"""A clear failure for a conversation encrypted with another ``OH_SECRET_KEY``.

The server encrypts a conversation's secrets (LLM keys, custom secrets) in
``base_state.json`` and ``meta.json`` with its ``OH_SECRET_KEY``. A replica with
another key (or none) would silently load them as ``None`` and fail later with an
authentication error from the model provider. Before a replica resumes a
conversation, every encrypted value in those files must decrypt with its key.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any
from uuid import UUID


class ConversationDecryptionError(RuntimeError):
    """A conversation's secrets do not decrypt with this server's ``OH_SECRET_KEY``.

    Every replica must run with the same ``OH_SECRET_KEY`` (a rotated-away key goes in
    ``OH_PREVIOUS_SECRET_KEYS``).
    """


def check_decryptable(conversation_id: UUID, documents: Mapping[str, bytes], cipher: Any) -> None:
    """Raise unless every encrypted value in ``documents`` decrypts with ``cipher``.

    Args:
        conversation_id: The conversation, for the message.
        documents: Its JSON files by path (``base_state.json``, ``meta.json``).
        cipher: The server's ``Cipher``, or ``None`` when it has no ``OH_SECRET_KEY``.

    Raises:
        ConversationDecryptionError: some value does not decrypt, or there is no key.
    """
    from openhands.sdk.utils.cipher import FERNET_TOKEN_PREFIX

    failed: dict[str, int] = {}
    for path, content in documents.items():
        try:
            document = json.loads(content)
        except ValueError:
            continue  # not this check's business: the loader reports a corrupt file
        for value in _strings(document):
            if not value.startswith(FERNET_TOKEN_PREFIX):
                continue
            if cipher is None or cipher.try_decrypt_str(value) is None:
                failed[path] = failed.get(path, 0) + 1
    if not failed:
        return
    where = ", ".join(f"{count} in {path}" for path, count in sorted(failed.items()))
    if cipher is None:
        raise ConversationDecryptionError(
            f"conversation {conversation_id} holds encrypted secrets ({where}) and this "
            "server has no OH_SECRET_KEY: every replica must run with the same OH_SECRET_KEY"
        )
    raise ConversationDecryptionError(
        f"conversation {conversation_id} holds secrets this server's OH_SECRET_KEY cannot "
        f"decrypt ({where}): every replica must run with the same OH_SECRET_KEY (list a "
        "rotated-away key in OH_PREVIOUS_SECRET_KEYS)"
    )


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
