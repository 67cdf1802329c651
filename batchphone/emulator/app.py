"""The emulator: a Starlette app over in-memory projects, with auth, budget, faults and stats.

One call goes: read the body -> draw its fault and sleep its latency -> under the lock,
authenticate, count it against the budget, answer the fault or run the operation (and spoil
its answer: ``applied_500``, ``empty_200``, ``empty_object_200``), record it -> after the lock,
hold a write's answer (``write_latency``), then hold the answer (``timeout``) or drop the
connection (``drop``, ``lost_answer``). Nothing awaits while the lock is held, so the lock
only guards against the test thread reading stats while uvicorn's thread writes them.
"""

from __future__ import annotations

import copy
import hmac
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
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
from batchphone.emulator.contract import ABORT_EXTENSION, ApiError, Code, error_body
from batchphone.emulator.faults import ERROR_STATUS, FaultKind, FaultPicker, Faults
from batchphone.emulator.ratelimit import retry_after_header
from batchphone.emulator.state import EmulatorStats, LogEntry, ProjectSettings, ProjectState
from batchphone.emulator.store import UserStore
from batchphone.errors import UsageError

__all__ = ["Emulator"]

_JSON = "application/json"
_HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
#: An operation: (project, parsed body, query, apply) -> (200 document, login ids written).
_Operation = Callable[[ProjectState, Any, dict[str, str], bool], tuple[Any, list[str]]]


class ConnectionDropped(Exception):
    """Raised when the app must drop a connection but its server offers no way to (a 500)."""


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    body: bytes
    headers: dict[str, str] | None = None
    media_type: str = _JSON
    fault: FaultKind | None = None
    #: False for the answers of auth and the limiter, which ``write_latency`` does not hold
    processed: bool = True


def _update_phone(project: ProjectState, doc: Any, query: dict[str, str], apply: bool) -> Any:
    result = project.store.update_phone(doc, apply=apply)
    return result, [doc["loginId"]] if apply else []


def _patch(project: ProjectState, doc: Any, query: dict[str, str], apply: bool) -> Any:
    result = project.store.patch(doc, apply=apply)
    return result, [doc["loginId"]] if apply else []


def _patch_batch(project: ProjectState, doc: Any, query: dict[str, str], apply: bool) -> Any:
    result, written = project.store.patch_batch(doc, apply=apply)
    return result, written if apply else []


def _load(project: ProjectState, doc: Any, query: dict[str, str], apply: bool) -> Any:
    return project.store.load(query.get("loginId"), query.get("userId")), []


def _search(project: ProjectState, doc: Any, query: dict[str, str], apply: bool) -> Any:
    return project.store.search(doc), []


def _license(project: ProjectState, doc: Any, query: dict[str, str], apply: bool) -> Any:
    return {"rateLimitTier": project.settings.license_tier}, []


# path: (method, operation, whether it has a JSON body, whether it is a counted user call)
_ROUTES: dict[str, tuple[str, _Operation, bool, bool]] = {
    "/v1/mgmt/user/update/phone": ("POST", _update_phone, True, True),
    "/v1/mgmt/user": ("GET", _load, False, True),
    "/v2/mgmt/user/search": ("POST", _search, True, True),
    "/v1/mgmt/user/patch": ("PATCH", _patch, True, True),
    "/v1/mgmt/user/patch/batch": ("PATCH", _patch_batch, True, True),
    "/v1/mgmt/license": ("GET", _license, False, False),
}
_WRITES = frozenset({_update_phone, _patch, _patch_batch})
#: faults that answer a write as if nothing was applied (no effect on reads)
_UNAPPLIED = frozenset({FaultKind.IGNORE_UPDATE, FaultKind.UNAPPLIED_200})
_SERVER_ERROR = error_body(f"{Code.SERVER_ERROR_PREFIX}500", "Server error (injected fault)")
#: faults that replace the answer of a call that ran, whatever it was (the call's effect stays)
_AFTER_RUN = {
    FaultKind.APPLIED_500: _Answer(500, _SERVER_ERROR, fault=FaultKind.APPLIED_500),
    FaultKind.EMPTY_200: _Answer(200, b"", fault=FaultKind.EMPTY_200),
    FaultKind.EMPTY_OBJECT_200: _Answer(200, b"{}", fault=FaultKind.EMPTY_OBJECT_200),
}


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
        if not projects:
            raise UsageError("the emulator needs at least one project", setting="project_id")
        self._clock = clock
        self._lock = threading.Lock()
        self._picker = FaultPicker(faults or Faults())
        self._projects: dict[str, ProjectState] = {}
        for settings in projects:
            if settings.project_id in self._projects:
                message = f"project {settings.project_id} is configured twice"
                raise UsageError(message, setting="project_id")
            self._projects[settings.project_id] = ProjectState(settings, log_limit=log_limit)
        #: calls whose bearer named no configured project, by path
        self.unknown_project_calls: Counter[str] = Counter()
        routes = [
            Route(path, self._endpoint(path), methods=[method])
            for path, (method, *_) in _ROUTES.items()
        ]
        routes.append(Route("/_emulator/stats", self._stats_endpoint, methods=["GET"]))
        self.app: Starlette = _EmulatorApp(
            routes=routes, exception_handlers={HTTPException: _http_error}
        )

    # -- the Python side --------------------------------------------------------------------------

    @property
    def project_ids(self) -> list[str]:
        """The configured projects, in order."""
        return list(self._projects)

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

    def _project(self, project_id: str) -> ProjectState:
        try:
            return self._projects[project_id]
        except KeyError:
            raise KeyError(f"no emulated project {project_id!r}") from None

    def stats(self, project_id: str) -> EmulatorStats:
        """A frozen snapshot of one project's counters and request log."""
        with self._lock:
            return self._project(project_id).snapshot()

    def user(self, project_id: str, login_id: str) -> dict[str, Any] | None:
        """A copy of the user with this login id (or user id) now, or ``None``."""
        with self._lock:
            found = self._project(project_id).store.find(login_id)
            return copy.deepcopy(found) if found is not None else None

    def users(self, project_id: str) -> list[dict[str, Any]]:
        """Copies of every user of the project now, in creation order (for a state file)."""
        with self._lock:
            return copy.deepcopy(self._project(project_id).store.users())

    def block(self, project_id: str, seconds: float) -> None:
        """Start a rate-limit block of ``seconds`` now, as if the budget had been exceeded."""
        with self._lock:
            self._project(project_id).limiter.block(self._clock(), seconds)

    # -- the HTTP side ----------------------------------------------------------------------------

    def _endpoint(self, path: str) -> Callable[[Request], Awaitable[Response]]:
        _, operation, has_body, counted = _ROUTES[path]
        write = operation in _WRITES

        async def endpoint(request: Request) -> Response:
            scope = request.scope
            body = await request.body() if has_body else b""
            picker = self._picker
            decision = None
            if picker.active:
                key = b"\0".join((scope["method"].encode(), path.encode(), scope["query_string"]))
                decision = picker.pick(key + b"\0" + body, faulty=counted, write=write)
                if decision.latency > 0:
                    await anyio.sleep(decision.latency)
            fault = decision.kind if decision is not None else None
            with self._lock:
                answer = self._answer(request, path, operation, body, counted, fault)
            if decision is not None and decision.answer_delay > 0 and answer.processed:
                await _hold(request, decision.answer_delay)
            if answer.fault in (FaultKind.DROP, FaultKind.LOST_ANSWER):
                await _drop(scope)
            elif answer.fault is FaultKind.TIMEOUT:
                await _hold(request, picker.faults.timeout_delay)
            return Response(answer.body, answer.status, answer.headers, answer.media_type)

        return endpoint

    def _answer(
        self,
        request: Request,
        path: str,
        operation: _Operation,
        body: bytes,
        counted: bool,
        fault: FaultKind | None,
    ) -> _Answer:
        """Everything a call does to the state, under the lock; the answer to send."""
        now = self._clock()
        project = self._authenticate(request, path, now)
        if project is None:
            description = "Unauthorized: wrong or missing project or management key"
            return _Answer(401, error_body(Code.UNAUTHORIZED, description), processed=False)
        query = dict(request.query_params) if request.scope["query_string"] else {}
        doc = _parse(body, needs_body=operation in _WRITES)
        named = doc.get("loginId") if isinstance(doc, dict) else None
        login_id = named if isinstance(named, str) else query.get("loginId") or query.get("userId")
        if counted and (left := project.limiter.admit(now)) is not None:
            rate_limited = error_body(Code.RATE_LIMITED, "API rate limit exceeded")
            retry_after = {"Retry-After": retry_after_header(left)}
            answer = _Answer(429, rate_limited, retry_after, processed=False)
        elif fault in ERROR_STATUS:
            answer = _fault_answer(fault)
        elif fault is FaultKind.DROP:
            answer = _Answer(0, b"", fault=fault)
        else:
            answer = self._run(project, operation, doc, query, fault)
        status = 0 if answer.fault is FaultKind.LOST_ANSWER else answer.status
        fault_name = answer.fault.value if answer.fault is not None else None
        project.record(LogEntry(now, request.method, path, status, login_id, fault_name))
        return answer

    def _authenticate(self, request: Request, path: str, now: float) -> ProjectState | None:
        """The project whose key the bearer carries; ``None`` (a 401) otherwise."""
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        project_id, _, key = credentials.partition(":")
        project = self._projects.get(project_id)
        if project is None:
            self.unknown_project_calls[path] += 1
            return None
        header_project = request.headers.get("x-descope-project-id")
        if (
            scheme.lower() != "bearer"
            or not hmac.compare_digest(key.encode(), project.key)
            or header_project not in (None, project_id)
        ):
            project.record(LogEntry(now, request.method, path, 401, None))
            return None
        return project

    def _run(
        self,
        project: ProjectState,
        operation: _Operation,
        doc: dict[str, Any] | ApiError,
        query: dict[str, str],
        fault: FaultKind | None,
    ) -> _Answer:
        """Run the operation on a parsed body (or answer its parse error), then its fault."""
        if fault in _UNAPPLIED and operation not in _WRITES:
            fault = None  # nothing to leave unapplied on a read
        try:
            if isinstance(doc, ApiError):
                raise doc
            result, written = operation(project, doc, query, fault not in _UNAPPLIED)
        except ApiError as exc:
            if fault in _UNAPPLIED:
                fault = None  # an error answer changes nothing anyway
            body = error_body(exc.code, exc.description, exc.message)
            answer = _Answer(exc.status, body, fault=fault)
        else:
            for name in written:
                project.updates[name] += 1
            if fault is FaultKind.UNAPPLIED_200:
                result = _as_stored(project.store, result)
            answer = _Answer(200, orjson.dumps(result), fault=fault)
        return _AFTER_RUN.get(answer.fault, answer) if answer.fault is not None else answer

    async def _stats_endpoint(self, request: Request) -> Response:
        wanted = request.query_params.get("project")
        with_log = parse_flag(request.query_params.get("log", "1")) is not False
        if wanted is not None and wanted not in self._projects:
            return Response(error_body(Code.NO_ROUTE, f"no project {wanted}"), 404, None, _JSON)
        with self._lock:
            projects = {
                pid: state.snapshot().to_json(with_log=with_log)
                for pid, state in self._projects.items()
                if wanted in (None, pid)
            }
            unknown = dict(self.unknown_project_calls)
        document = {"projects": projects, "unknownProjectCalls": unknown}
        return Response(orjson.dumps(document), 200, None, _JSON)


def _parse(body: bytes, *, needs_body: bool) -> dict[str, Any] | ApiError:
    """The JSON object of a body, or the 400 its content deserves."""
    if not body and not needs_body:
        return {}
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ApiError(400, Code.MALFORMED, "Malformed request", "body is not valid JSON")
    if not isinstance(doc, dict):
        return ApiError(400, Code.MALFORMED, "Malformed request", "body is not a JSON object")
    return doc


def _fault_answer(fault: FaultKind) -> _Answer:
    status = ERROR_STATUS[fault]
    if fault is FaultKind.HTML_502:
        return _Answer(502, _HTML_502, media_type="text/html", fault=fault)
    body = error_body(f"{Code.SERVER_ERROR_PREFIX}{status}", "Server error (injected fault)")
    return _Answer(status, body, fault=fault)


def _as_stored(store: UserStore, result: dict[str, Any]) -> dict[str, Any]:
    """A write's answer with each user as stored (``unapplied_200``: the update is not there)."""
    if "user" in result:
        return {**result, "user": store.find(result["user"]["loginIds"][0])}
    patched = [store.find(user["loginIds"][0]) for user in result["patchedUsers"]]
    return {**result, "patchedUsers": patched}


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
    return Response(body, exc.status_code, dict(exc.headers or {}), _JSON)
