"""The emulator: a Starlette app over in-memory projects, with auth, budget, faults and stats.

One call goes: read the body -> draw its fault and sleep its latency -> under the lock, the
backend (``backend.py``) authenticates it, counts it against the budget, answers the fault or
runs the route's operation (``routes.py``, which spoils its answer: ``applied_500``,
``empty_200``, ``empty_object_200``) and records it -> after the lock,
hold a write's answer (``write_latency``), then hold the answer (``timeout``) or drop the
connection (``drop``, ``lost_answer``). Nothing awaits while the lock is held, so the lock
only guards against the test thread reading stats while uvicorn's thread writes them.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import httpx
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from batchphone.cells import parse_flag
from batchphone.emulator.backend import Backend
from batchphone.emulator.contract import ABORT_EXTENSION, Code, error_body
from batchphone.emulator.faults import FaultKind, FaultPicker, Faults
from batchphone.emulator.routes import JSON, ROUTES, ApiRoute
from batchphone.emulator.state import EmulatorStats, ProjectSettings

__all__ = ["ConnectionDropped", "Emulator"]


class ConnectionDropped(Exception):
    """Raised when the app must drop a connection but its server offers no way to (a 500)."""


class _EmulatorApp(Starlette):
    """Starlette, plus a way to drop a connection when served by uvicorn."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and ABORT_EXTENSION not in scope.get("extensions", {}):
            # uvicorn's send is a method of its request cycle, which holds the socket's transport;
            # closing that transport is the only way an ASGI app can answer with nothing at all
            transport = getattr(getattr(send, "__self__", None), "transport", None)
            if transport is not None and hasattr(transport, "abort"):
                scope.setdefault("extensions", {})[ABORT_EXTENSION] = _socket_abort(
                    transport, receive
                )
        await super().__call__(scope, receive, send)


def _socket_abort(transport: Any, receive: Receive) -> Callable[[], Awaitable[None]]:
    async def abort() -> None:
        transport.abort()
        # wait until uvicorn has seen the loss, so it does not log a missing answer
        with anyio.move_on_after(1):
            while (await receive())["type"] != "http.disconnect":
                pass

    return abort


class Emulator:
    """A local Descope management API over in-memory projects (see the package docstring)."""

    def __init__(
        self,
        projects: Sequence[ProjectSettings],
        faults: Faults | None = None,
        clock: Callable[[], float] = time.monotonic,
        *,
        log_limit: int = 1_000_000,
    ) -> None:
        self._backend = Backend(projects, log_limit=log_limit)
        self._clock = clock
        self._lock = threading.Lock()
        self._picker = FaultPicker(faults or Faults())
        routes = [Route(r.path, self._endpoint(r), methods=[r.method]) for r in ROUTES]
        routes.append(Route("/_emulator/stats", self._stats_endpoint, methods=["GET"]))
        self.app: Starlette = _EmulatorApp(
            routes=routes, exception_handlers={HTTPException: _http_error}
        )

    # -- the Python side --------------------------------------------------------------------------

    @property
    def project_ids(self) -> list[str]:
        """The configured projects, in order."""
        return list(self._backend.projects)

    @property
    def faults(self) -> Faults:
        """The faults in force."""
        return self._picker.faults

    def set_faults(self, faults: Faults) -> None:
        """Change the faults from now on (a new draw sequence starts)."""
        self._picker = FaultPicker(faults)

    def transport(self) -> httpx.AsyncBaseTransport:
        """A new in-process transport to this app (see ``batchphone.emulator.transport``)."""
        from batchphone.emulator.transport import EmulatorTransport

        return EmulatorTransport(self.app)

    def stats(self, project_id: str) -> EmulatorStats:
        """A frozen snapshot of one project's counters and request log."""
        with self._lock:
            return self._backend.project(project_id).snapshot()

    def user(self, project_id: str, login_id: str) -> dict[str, Any] | None:
        """A copy of the user with this login id (or user id) now, or ``None``."""
        with self._lock:
            found = self._backend.project(project_id).store.find(login_id)
            return copy.deepcopy(found) if found is not None else None

    def users(self, project_id: str) -> list[dict[str, Any]]:
        """Copies of every user of the project now, in creation order (for a state file)."""
        with self._lock:
            return copy.deepcopy(self._backend.project(project_id).store.users())

    def block(self, project_id: str, seconds: float) -> None:
        """Start a rate-limit block of ``seconds`` now, as if the budget had been exceeded."""
        with self._lock:
            self._backend.project(project_id).limiter.block(self._clock(), seconds)

    # -- the HTTP side ----------------------------------------------------------------------------

    def _endpoint(self, route: ApiRoute) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            scope = request.scope
            body = await request.body() if route.has_body else b""
            picker = self._picker
            decision = None
            if picker.active:
                parts = (scope["method"].encode(), route.path.encode(), scope["query_string"])
                key = b"\0".join(parts)
                decision = picker.pick(key + b"\0" + body, faulty=route.counted, write=route.write)
                if decision.latency > 0:
                    await anyio.sleep(decision.latency)
            fault = decision.kind if decision is not None else None
            with self._lock:
                answer = self._backend.answer(request, route, body, fault, self._clock())
            if decision is not None and decision.answer_delay > 0 and answer.processed:
                await _hold(request, decision.answer_delay)
            if answer.fault in (FaultKind.DROP, FaultKind.LOST_ANSWER):
                await _drop(scope)
            elif answer.fault is FaultKind.TIMEOUT:
                await _hold(request, picker.faults.timeout_delay)
            return Response(answer.body, answer.status, answer.headers, answer.media_type)

        return endpoint

    async def _stats_endpoint(self, request: Request) -> Response:
        wanted = request.query_params.get("project")
        with_log = parse_flag(request.query_params.get("log", "1")) is not False
        if wanted is not None and wanted not in self._backend.projects:
            return Response(error_body(Code.NO_ROUTE, f"no project {wanted}"), 404, None, JSON)
        with self._lock:
            document = self._backend.stats_document(wanted, with_log=with_log)
        return Response(orjson.dumps(document), 200, None, JSON)


async def _hold(request: Request, seconds: float) -> None:
    """Wait ``seconds`` or until the client goes away, whichever comes first."""
    with anyio.move_on_after(seconds):
        while (await request.receive())["type"] != "http.disconnect":
            pass


async def _drop(scope: Scope) -> None:
    abort = scope.get("extensions", {}).get(ABORT_EXTENSION)
    if abort is None:
        raise ConnectionDropped("this server cannot drop a connection: answered 500 instead")
    await abort()


async def _http_error(request: Request, exc: Exception) -> Response:
    """404 and 405 from the router, in Descope's error shape."""
    assert isinstance(exc, HTTPException)
    code = Code.NO_ROUTE if exc.status_code == 404 else Code.INVALID_REQUEST
    body = error_body(code, exc.detail)
    return Response(body, exc.status_code, dict(exc.headers or {}), JSON)
