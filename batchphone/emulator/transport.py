"""An in-process transport to the emulator that fails the way a socket would.

``httpx.ASGITransport`` alone cannot express "the server closed the connection" or "the answer
came too late": this wrapper gives the app a way to drop the connection (the ASGI scope
extension of ``contract.ABORT_EXTENSION``) and turns that into ``httpx.RemoteProtocolError``, and
it runs each request under the client's read timeout, turning a late answer into
``httpx.ReadTimeout`` after exactly that timeout, as a socket client would see it.
"""

from __future__ import annotations

import anyio
import httpx
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batchphone.emulator.contract import ABORT_EXTENSION

__all__ = ["EmulatorTransport"]


class _Dropped(Exception):
    """The app dropped the connection of this request."""


class EmulatorTransport(httpx.AsyncBaseTransport):
    """``httpx.AsyncBaseTransport`` to an ASGI app in this process, with socket-like failures."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._asgi = httpx.ASGITransport(app=self._call)

    async def _call(self, scope: Scope, receive: Receive, send: Send) -> None:
        dropped = False

        async def abort() -> None:
            nonlocal dropped
            dropped = True

        async def guarded_send(message: Message) -> None:
            # once dropped, nothing the app still sends may reach the client
            if not dropped:
                await send(message)

        scope.setdefault("extensions", {})[ABORT_EXTENSION] = abort
        await self._app(scope, receive, guarded_send)
        if dropped:
            raise _Dropped

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` to the app; raise as httpx would over a socket."""
        timeouts = request.extensions.get("timeout") or {}
        read_timeout = timeouts.get("read")
        try:
            with anyio.fail_after(read_timeout):
                return await self._asgi.handle_async_request(request)
        except TimeoutError:
            raise httpx.ReadTimeout("timed out", request=request) from None
        except _Dropped:
            message = "Server disconnected without sending a response."
            raise httpx.RemoteProtocolError(message, request=request) from None

    async def aclose(self) -> None:
        """Nothing to release: no socket was opened."""
        await self._asgi.aclose()
