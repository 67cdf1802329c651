"""The routes of the emulated API: each path's operation on a project, and how a fault
spoils the answer of a call that got past authentication and the budget."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from batchphone.emulator import reads, writes
from batchphone.emulator.contract import ApiError, Code, error_body
from batchphone.emulator.faults import ERROR_STATUS, FaultKind
from batchphone.emulator.state import ProjectState
from batchphone.emulator.store import UserStore

__all__ = ["JSON", "ROUTES", "Answer", "ApiRoute", "fault_answer", "parse_body", "run"]

JSON = "application/json"
_HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
#: An operation: (project, parsed body, query, apply) -> (200 document, login ids written).
_Operation = Callable[[ProjectState, Any, dict[str, str], bool], tuple[Any, list[str]]]


@dataclass(frozen=True, slots=True)
class Answer:
    """What the app sends for one call (``status`` 0 with a drop fault: nothing)."""

    status: int
    body: bytes
    headers: dict[str, str] | None = None
    media_type: str = JSON
    fault: FaultKind | None = None
    #: False for the answers of auth and the limiter, which ``write_latency`` does not hold
    processed: bool = True


@dataclass(frozen=True, slots=True)
class ApiRoute:
    """One path of the API."""

    path: str
    method: str
    operation: _Operation
    #: whether the call carries a JSON body
    has_body: bool
    #: whether the call counts against the project's budget (and may draw a fault kind)
    counted: bool
    #: whether it changes users (a body is then required; ``ignore_update`` applies)
    write: bool = False


def _update_phone(project: ProjectState, doc: Any, query: dict[str, str], apply: bool) -> Any:
    result = writes.update_phone(project.store, doc, apply=apply)
    return result, [doc["loginId"]] if apply else []


def _patch(project: ProjectState, doc: Any, query: dict[str, str], apply: bool) -> Any:
    result = writes.patch(project.store, doc, apply=apply)
    return result, [doc["loginId"]] if apply else []


def _patch_batch(project: ProjectState, doc: Any, query: dict[str, str], apply: bool) -> Any:
    result, written = writes.patch_batch(project.store, doc, apply=apply)
    return result, written if apply else []


def _load(project: ProjectState, doc: Any, query: dict[str, str], apply: bool) -> Any:
    return reads.load(project.store, query.get("loginId"), query.get("userId")), []


def _search(project: ProjectState, doc: Any, query: dict[str, str], apply: bool) -> Any:
    return reads.search(project.store, doc), []


def _license(project: ProjectState, doc: Any, query: dict[str, str], apply: bool) -> Any:
    return {"rateLimitTier": project.settings.license_tier}, []


ROUTES = (
    ApiRoute("/v1/mgmt/user/update/phone", "POST", _update_phone, True, True, write=True),
    ApiRoute("/v1/mgmt/user", "GET", _load, False, True),
    ApiRoute("/v2/mgmt/user/search", "POST", _search, True, True),
    ApiRoute("/v1/mgmt/user/patch", "PATCH", _patch, True, True, write=True),
    ApiRoute("/v1/mgmt/user/patch/batch", "PATCH", _patch_batch, True, True, write=True),
    ApiRoute("/v1/mgmt/license", "GET", _license, False, False),
)
#: faults that answer a write as if nothing was applied (no effect on reads)
_UNAPPLIED = frozenset({FaultKind.IGNORE_UPDATE, FaultKind.UNAPPLIED_200})
_SERVER_ERROR = error_body(f"{Code.SERVER_ERROR_PREFIX}500", "Server error (injected fault)")
#: faults that replace the answer of a call that ran, whatever it was (the call's effect stays)
_AFTER_RUN = {
    FaultKind.APPLIED_500: Answer(500, _SERVER_ERROR, fault=FaultKind.APPLIED_500),
    FaultKind.EMPTY_200: Answer(200, b"", fault=FaultKind.EMPTY_200),
    FaultKind.EMPTY_OBJECT_200: Answer(200, b"{}", fault=FaultKind.EMPTY_OBJECT_200),
}


def parse_body(body: bytes, *, needs_body: bool) -> dict[str, Any] | ApiError:
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


def run(
    project: ProjectState,
    route: ApiRoute,
    doc: dict[str, Any] | ApiError,
    query: dict[str, str],
    fault: FaultKind | None,
) -> Answer:
    """Run the route's operation on a parsed body (or answer its parse error), then its fault."""
    if fault in _UNAPPLIED and not route.write:
        fault = None  # nothing to leave unapplied on a read
    try:
        if isinstance(doc, ApiError):
            raise doc
        result, written = route.operation(project, doc, query, fault not in _UNAPPLIED)
    except ApiError as exc:
        if fault in _UNAPPLIED:
            fault = None  # an error answer changes nothing anyway
        body = error_body(exc.code, exc.description, exc.message)
        answer = Answer(exc.status, body, fault=fault)
    else:
        for name in written:
            project.updates[name] += 1
        if fault is FaultKind.UNAPPLIED_200:
            result = _as_stored(project.store, result)
        answer = Answer(200, orjson.dumps(result), fault=fault)
    return _AFTER_RUN.get(answer.fault, answer) if answer.fault is not None else answer


def fault_answer(fault: FaultKind) -> Answer:
    """The answer of a server-error fault, instead of running the call."""
    status = ERROR_STATUS[fault]
    if fault is FaultKind.HTML_502:
        return Answer(502, _HTML_502, media_type="text/html", fault=fault)
    body = error_body(f"{Code.SERVER_ERROR_PREFIX}{status}", "Server error (injected fault)")
    return Answer(status, body, fault=fault)


def _as_stored(store: UserStore, result: dict[str, Any]) -> dict[str, Any]:
    """A write's answer with each user as stored (``unapplied_200``: the update is not there)."""
    if "user" in result:
        return {**result, "user": store.find(result["user"]["loginIds"][0])}
    patched = [store.find(user["loginIds"][0]) for user in result["patchedUsers"]]
    return {**result, "patchedUsers": patched}
