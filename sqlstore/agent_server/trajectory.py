"""The trajectory download (``GET /api/file/download-trajectory/{id}``) from the database.

The stock route zips the conversation's directory, and answers 404 when this replica
has none. Here the namespace is exported to a temporary directory
(:func:`sqlstore.admin.export_namespace`) and zipped by the server's own function, which
redacts secrets on the way in; sqlstore's bookkeeping (``.sqlstore/``) stays out.
"""

from __future__ import annotations

import asyncio
import functools
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

from ..admin import export_namespace
from .layout import META, PRIVATE_DIR

if TYPE_CHECKING:
    from .install import Installation


def download_trajectory(installation: Installation, original: Any) -> Any:
    """The route's endpoint, same parameters, reading the database."""
    from fastapi import HTTPException, Request
    from fastapi.responses import FileResponse
    from starlette.background import BackgroundTask

    @functools.wraps(original)
    async def download_trajectory(conversation_id: UUID, request: Request) -> Any:
        if not installation.active:
            return await original(conversation_id, request)
        work = Path(tempfile.mkdtemp(prefix="sqlstore-trajectory-"))
        try:
            archive = await asyncio.to_thread(_archive, installation, conversation_id, work)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        if archive is None:
            shutil.rmtree(work, ignore_errors=True)
            raise HTTPException(status_code=404, detail="Conversation not found")
        return FileResponse(
            path=archive,
            filename=archive.name,
            media_type="application/octet-stream",
            background=BackgroundTask(shutil.rmtree, work, True),
        )

    return download_trajectory


def _archive(installation: Installation, conversation_id: UUID, work: Path) -> Path | None:
    from openhands.agent_server import file_router

    namespace = conversation_id.hex
    store = installation.store(conversation_id)
    if not store.exists(META):
        return None
    tree = work / namespace
    export_namespace(installation.engine, namespace, tree)
    shutil.rmtree(tree / PRIVATE_DIR, ignore_errors=True)
    archive = work / f"{namespace}.zip"
    file_router._create_zip_from_directory(tree, archive)
    return archive
