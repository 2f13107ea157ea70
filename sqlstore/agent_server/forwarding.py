"""Any replica answers any request: a request for another replica's conversation goes there.

A conversation runs on one replica (its owner). The others read it from the database,
but a write (send a message, pause, delete...), a route bound to its runtime (bash,
files, git, VS Code, the workspace) and its event socket need the runtime. A replica
that receives one of those for a conversation a live replica owns forwards it to the
owner and returns the owner's answer, so a load balancer needs no stickiness:

* each replica writes the URL it is reached on into its heartbeat
  (``SQLSTORE_REPLICA_URL``, by default ``http://127.0.0.1:<port>``: one host);
* the owner record names the owner; its heartbeat, its URL. A request whose
  conversation has no live owner is handled here (and claims the conversation);
* a forwarded request carries :data:`HOP_HEADER`: a replica never forwards it again
  (no loop, whatever the owner records say meanwhile), and the session API key header
  travels with it. It is bounded by :data:`FORWARD_TIMEOUT`; an owner that does not
  answer leaves the request to this replica (which then answers as without forwarding);
* the event socket ``/sockets/events/{id}`` is relayed both ways: the owner's events
  reach the client as they are published, and what the client sends reaches the
  agent where it runs.

Reads served from the database (the conversation, its events, the trajectory) are
never forwarded.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any
from uuid import UUID

from .ownership import OwnerRecord

if TYPE_CHECKING:
    from .install import Installation

logger = logging.getLogger(__name__)

#: Marks a forwarded request (its value: the forwarding replica's URL).
HOP_HEADER = "x-sqlstore-forwarded-by"
#: Seconds a forwarded request may take.
FORWARD_TIMEOUT = 120.0
#: Seconds to connect to the owner.
CONNECT_TIMEOUT = 3.0

_CONVERSATION = re.compile(r"^/api/conversations/([0-9a-fA-F-]{32,36})(/.*)?$")
_SOCKET = re.compile(r"^/sockets/events/([0-9a-fA-F-]{32,36})$")
#: Reads the database answers on any replica.
_DATABASE_READS = re.compile(
    r"^(|/events(/search|/count|/[^/]+)?|/file/download-trajectory/[^/]+|/runtime)$"
)
#: Headers that describe one connection, not the request.
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}


def conversation_to_forward(scope: dict[str, Any]) -> UUID | None:
    """The conversation a request must be served by its owner for, or ``None``."""
    path = scope.get("path", "")
    if scope["type"] == "websocket":
        match = _SOCKET.match(path)
        rest = None
    else:
        match = _CONVERSATION.match(path)
        rest = (match.group(2) or "") if match else None
    if match is None:
        return None
    if any(name.decode("latin-1").lower() == HOP_HEADER for name, _ in scope.get("headers", ())):
        return None
    if rest is not None and scope.get("method") in ("GET", "HEAD") and _DATABASE_READS.match(rest):
        return None
    try:
        return UUID(match.group(1))
    except ValueError:
        return None


class Forwarding:
    """ASGI middleware sending another replica's conversation requests to it.

    Args:
        app: The server's app (inside its CORS middleware).
        installation: The sqlstore installation (replicas, the conversation service).
    """

    def __init__(self, app: Any, installation: Installation) -> None:
        self.app = app
        self.installation = installation

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Serve the request here, or by the conversation's owner."""
        installation = self.installation
        conversation_id = None
        if scope["type"] in ("http", "websocket") and installation.active:
            conversation_id = conversation_to_forward(scope)
        owner = None
        if conversation_id is not None:
            owner = await self.owner(conversation_id)
        if owner is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "http":
            await self.forward_http(owner, scope, receive, send)
        else:
            await self.relay_socket(owner[1], scope, receive, send)

    async def owner(self, conversation_id: UUID) -> tuple[str, str] | None:
        """The live replica that owns the conversation and its URL, unless it is this one."""
        installation = self.installation
        service = installation.conversation_service
        runtime = None if service is None else (service._event_services or {}).get(conversation_id)
        if runtime is not None and runtime.is_open() and not getattr(runtime._lease, "lost", False):
            return None  # it runs here
        return await asyncio.to_thread(self._owner, conversation_id)

    def _owner(self, conversation_id: UUID) -> tuple[str, str] | None:
        installation = self.installation
        record = OwnerRecord.read(installation.store(conversation_id))
        mine = installation.conversation_service
        if record.owner is None or (mine is not None and record.owner == mine.owner_instance_id):
            return None
        if not installation.replicas.is_alive(record.owner):
            return None  # no live owner: this replica claims it
        url = installation.replicas.url_of(record.owner)
        if url is None or url == installation.replicas.url:
            return None
        return record.owner, url

    async def _unless_owner_dies(self, request: asyncio.Future[Any], owner_id: str) -> Any:
        replicas = self.installation.replicas
        try:
            while True:
                done, _ = await asyncio.wait({request}, timeout=replicas.interval)
                if done:
                    return request.result()
                if not await asyncio.to_thread(replicas.is_alive, owner_id):
                    raise OwnerGone(f"the owner {owner_id} stopped beating")
        finally:
            request.cancel()

    def _headers(self, scope: dict[str, Any]) -> list[tuple[str, str]]:
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in scope.get("headers", ())
            if name.decode("latin-1").lower() not in _HOP_BY_HOP
            and not name.decode("latin-1").lower().startswith("sec-websocket")
        ]
        headers.append((HOP_HEADER, self.installation.replicas.url or "unknown"))
        return headers

    async def forward_http(
        self, owner: tuple[str, str], scope: dict[str, Any], receive: Any, send: Any
    ) -> None:
        """Send the request to the owner and its answer back; here if the owner is away.

        While the owner has not answered, its heartbeat is watched: an owner that dies
        (or freezes) meanwhile leaves the request to this replica, which takes the
        conversation over as it would without forwarding.
        """
        owner_id, owner_url = owner
        import httpx

        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        query = scope.get("query_string", b"").decode("latin-1")
        url = f"{owner_url}{scope['path']}" + (f"?{query}" if query else "")
        timeout = httpx.Timeout(FORWARD_TIMEOUT, connect=CONNECT_TIMEOUT)
        try:
            async with httpx.AsyncClient(timeout=timeout) as client:
                request = asyncio.ensure_future(
                    client.request(
                        scope["method"], url, headers=self._headers(scope), content=bytes(body)
                    )
                )
                answer = await self._unless_owner_dies(request, owner_id)
        except (httpx.TransportError, OwnerGone) as error:
            logger.warning(
                "forwarding to the owner %s failed (%s); answering here", owner_url, error
            )
            request_again = {"type": "http.request", "body": bytes(body), "more_body": False}
            await self.app(scope, _replaying(request_again, receive), send)
            return
        headers = [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in answer.headers.multi_items()
            if name.lower() not in _HOP_BY_HOP and name.lower() != "content-encoding"
        ]
        headers.append((b"content-length", str(len(answer.content)).encode()))
        await send(
            {"type": "http.response.start", "status": answer.status_code, "headers": headers}
        )
        await send({"type": "http.response.body", "body": answer.content})

    async def relay_socket(
        self, owner_url: str, scope: dict[str, Any], receive: Any, send: Any
    ) -> None:
        """Relay the event socket to the owner's, both ways."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed

        query = scope.get("query_string", b"").decode("latin-1")
        url = "ws" + owner_url.removeprefix("http") + scope["path"] + (f"?{query}" if query else "")
        message = await receive()  # websocket.connect
        if message["type"] != "websocket.connect":
            return
        try:
            upstream = await asyncio.wait_for(
                connect(url, additional_headers=self._headers(scope), max_size=None),
                CONNECT_TIMEOUT,
            )
        except (OSError, TimeoutError, ConnectionClosed) as error:
            logger.warning(
                "relaying the socket to %s failed (%s); serving it here", owner_url, error
            )
            await self.app(scope, _replaying(message, receive), send)
            return
        await send({"type": "websocket.accept"})

        async def downstream() -> None:
            try:
                async for frame in upstream:
                    if isinstance(frame, bytes):
                        await send({"type": "websocket.send", "bytes": frame})
                    else:
                        await send({"type": "websocket.send", "text": frame})
                await send({"type": "websocket.close", "code": upstream.close_code or 1000})
            except ConnectionClosed:
                await send({"type": "websocket.close", "code": 1012})

        async def upstream_pump() -> None:
            while True:
                incoming = await receive()
                if incoming["type"] == "websocket.disconnect":
                    return
                if incoming.get("text") is not None:
                    await upstream.send(incoming["text"])
                elif incoming.get("bytes") is not None:
                    await upstream.send(incoming["bytes"])

        tasks = [asyncio.create_task(downstream()), asyncio.create_task(upstream_pump())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await upstream.close()


class OwnerGone(Exception):
    """The owner stopped beating while a request forwarded to it was pending."""


def cors_dispatcher(installation: Installation, original: Any) -> Any:
    """``middleware.CORSDispatcher``, the app's outermost middleware, wrapping its app.

    The app it is given is wrapped in :class:`Forwarding`, so forwarded answers pass
    the server's CORS handling as its own do.
    """

    class CORSDispatcher(original):  # type: ignore[misc]
        def __init__(self, app: Any, **kwargs: Any) -> None:
            super().__init__(Forwarding(app, installation), **kwargs)

    CORSDispatcher.__qualname__ = original.__qualname__
    CORSDispatcher.__doc__ = original.__doc__
    return CORSDispatcher


def _replaying(first: dict[str, Any], receive: Any) -> Any:
    """An ASGI ``receive`` that gives ``first`` again, then what ``receive`` gives.

    Serving a request here after forwarding it failed needs the message already read
    from the client (the request body, or the socket's connect) once more.
    """
    given = False

    async def replay() -> dict[str, Any]:
        nonlocal given
        if given:
            received: dict[str, Any] = await receive()
            return received
        given = True
        return first

    return replay
