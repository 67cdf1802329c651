"""The projects behind the emulated API, and what one call does to them.

Under the emulator's lock, a call meets, in this order: authentication (the bearer's project
and key; assumed ``auth-code``), the project's budget (a 429 is the CDN's, never faulty), then
its fault or its route, and its record in the project's stats. Nothing here awaits or knows
how the answer travels.
"""

from __future__ import annotations

import hmac
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from starlette.requests import Request

from batchphone.emulator.contract import Code, error_body
from batchphone.emulator.faults import ERROR_STATUS, FaultKind
from batchphone.emulator.ratelimit import retry_after_header
from batchphone.emulator.routes import Answer, ApiRoute, fault_answer, parse_body, run
from batchphone.emulator.state import LogEntry, ProjectSettings, ProjectState
from batchphone.errors import UsageError

__all__ = ["Backend"]


class Backend:
    """The live state of every emulated project (mutate it only under the emulator's lock)."""

    def __init__(self, projects: Sequence[ProjectSettings], *, log_limit: int) -> None:
        if not projects:
            raise UsageError("the emulator needs at least one project", setting="project_id")
        self.projects: dict[str, ProjectState] = {}
        for settings in projects:
            if settings.project_id in self.projects:
                message = f"project {settings.project_id} is configured twice"
                raise UsageError(message, setting="project_id")
            self.projects[settings.project_id] = ProjectState(settings, log_limit=log_limit)
        #: calls whose bearer named no configured project, by path
        self.unknown_project_calls: Counter[str] = Counter()

    def project(self, project_id: str) -> ProjectState:
        """The project with this id (``KeyError`` naming it, if there is none)."""
        try:
            return self.projects[project_id]
        except KeyError:
            raise KeyError(f"no emulated project {project_id!r}") from None

    def answer(
        self, request: Request, route: ApiRoute, body: bytes, fault: FaultKind | None, now: float
    ) -> Answer:
        """Everything a call does to the state; the answer to send."""
        path = route.path
        project = self._authenticate(request, path, now)
        if project is None:
            description = "Unauthorized: wrong or missing project or management key"
            return Answer(401, error_body(Code.UNAUTHORIZED, description), processed=False)
        query = dict(request.query_params) if request.scope["query_string"] else {}
        doc = parse_body(body, needs_body=route.write)
        named = doc.get("loginId") if isinstance(doc, dict) else None
        login_id = named if isinstance(named, str) else query.get("loginId") or query.get("userId")
        if route.counted and (left := project.limiter.admit(now)) is not None:
            rate_limited = error_body(Code.RATE_LIMITED, "API rate limit exceeded")
            retry_after = {"Retry-After": retry_after_header(left)}
            answer = Answer(429, rate_limited, retry_after, processed=False)
        elif fault in ERROR_STATUS:
            answer = fault_answer(fault)
        elif fault is FaultKind.DROP:
            answer = Answer(0, b"", fault=fault)
        else:
            answer = run(project, route, doc, query, fault)
        status = 0 if answer.fault is FaultKind.LOST_ANSWER else answer.status
        fault_name = answer.fault.value if answer.fault is not None else None
        project.record(LogEntry(now, request.method, path, status, login_id, fault_name))
        return answer

    def _authenticate(self, request: Request, path: str, now: float) -> ProjectState | None:
        """The project whose key the bearer carries; ``None`` (a 401) otherwise."""
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        project_id, _, key = credentials.partition(":")
        project = self.projects.get(project_id)
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

    def stats_document(self, wanted: str | None, *, with_log: bool) -> Mapping[str, Any]:
        """What ``/_emulator/stats`` serves: every project's stats (or ``wanted``'s only)."""
        projects = {
            pid: state.snapshot().to_json(with_log=with_log)
            for pid, state in self.projects.items()
            if wanted in (None, pid)
        }
        return {"projects": projects, "unknownProjectCalls": dict(self.unknown_project_calls)}
