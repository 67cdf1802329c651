"""Projects: their settings, their live state (users, budget, counters) and stats snapshots."""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from batchphone.emulator.contract import LICENSE_TIERS
from batchphone.emulator.ratelimit import Algorithm, RateLimiter
from batchphone.emulator.store import Merge, UserStore
from batchphone.errors import UsageError

__all__ = ["EmulatorStats", "LogEntry", "ProjectSettings", "ProjectState"]


@dataclass(frozen=True, slots=True)
class ProjectSettings:
    """One emulated project: credentials, budget (N per W seconds, P-second block), users.

    ``users`` are full or partial user dicts (see ``load_users`` / ``generate_users``).
    The key stays out of ``repr``.
    """

    project_id: str
    management_key: str = field(repr=False)
    rate_limit: int = 500
    rate_window: float = 60.0
    penalty: float = 60.0
    algorithm: Algorithm = "sliding"
    license_tier: str = "tier1"
    users: Sequence[Mapping[str, Any]] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        if (
            not self.project_id
            or ":" in self.project_id
            or self.project_id.strip() != self.project_id
        ):
            raise UsageError(f"bad project id {self.project_id!r}", setting="project_id")
        if not self.management_key or any(c.isspace() for c in self.management_key):
            # never echo the key itself
            raise UsageError(
                f"project {self.project_id}: the management key is empty or has spaces",
                setting="management_key",
            )
        if self.rate_limit < 1 or self.rate_window <= 0:
            raise UsageError(
                f"project {self.project_id}: the rate limit needs N >= 1 per W > 0 seconds",
                setting="rate_limit",
            )
        if self.penalty < 0:
            raise UsageError(f"project {self.project_id}: penalty < 0", setting="penalty")
        if self.algorithm not in ("sliding", "fixed"):
            raise UsageError(
                f"project {self.project_id}: rate algorithm must be sliding or fixed",
                setting="algorithm",
            )
        if self.license_tier not in LICENSE_TIERS:
            raise UsageError(
                f"project {self.project_id}: license tier must be one of "
                + ", ".join(LICENSE_TIERS),
                setting="license_tier",
            )


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One call as the emulator saw it (``status`` 0: the connection closed without an answer)."""

    t: float
    method: str
    path: str
    status: int
    login_id: str | None
    fault: str | None = None


@dataclass(frozen=True, slots=True)
class EmulatorStats:
    """A snapshot of one project's counters (``emu.stats(project_id)``)."""

    project_id: str
    #: calls by (path, HTTP status)
    requests: Mapping[tuple[str, int], int]
    #: applied writes by the loginId the request named
    updates: Mapping[str, int]
    #: calls counted against the budget, and the most seen in any window of W seconds
    calls: int
    max_window_calls: int
    rate_limit: int
    rate_window: float
    rate_limited: int
    blocks: int
    merges: tuple[Merge, ...]
    log: tuple[LogEntry, ...]
    #: entries left out of ``log`` because it reached its limit
    log_dropped: int = 0

    @property
    def total_requests(self) -> int:
        """Every call the project received, whatever its answer."""
        return sum(self.requests.values())

    def status_count(self, status: int, path: str | None = None) -> int:
        """How many calls (to ``path``, or to any path) got ``status``."""
        return sum(n for (p, s), n in self.requests.items() if s == status and path in (None, p))

    def to_json(self, *, with_log: bool = True) -> dict[str, Any]:
        """The document ``/_emulator/stats`` serves for this project."""
        document: dict[str, Any] = {
            "projectId": self.project_id,
            "requests": [
                {"path": p, "status": s, "count": n} for (p, s), n in sorted(self.requests.items())
            ],
            "updates": dict(sorted(self.updates.items())),
            "calls": self.calls,
            "maxWindowCalls": self.max_window_calls,
            "rateLimit": self.rate_limit,
            "rateWindow": self.rate_window,
            "rateLimited": self.rate_limited,
            "blocks": self.blocks,
            "merges": [{"loginId": m.login_id, "deleted": m.deleted} for m in self.merges],
            "logDropped": self.log_dropped,
        }
        if with_log:
            document["log"] = [
                {
                    "t": e.t,
                    "method": e.method,
                    "path": e.path,
                    "status": e.status,
                    "loginId": e.login_id,
                    "fault": e.fault,
                }
                for e in self.log
            ]
        return document


class ProjectState:
    """The live state of one project; mutated only under the emulator's lock."""

    def __init__(self, settings: ProjectSettings, *, log_limit: int) -> None:
        self.settings = settings
        try:
            self.store = UserStore(settings.users)
        except (KeyError, ValueError) as exc:
            raise UsageError(f"project {settings.project_id}: bad users: {exc}") from None
        self.limiter = RateLimiter(
            settings.rate_limit,
            settings.rate_window,
            settings.penalty,
            settings.algorithm,
        )
        self.key = settings.management_key.encode()
        self.requests: collections.Counter[tuple[str, int]] = collections.Counter()
        self.updates: collections.Counter[str] = collections.Counter()
        self.log: collections.deque[LogEntry] = collections.deque(maxlen=log_limit)
        self.logged = 0

    def record(self, entry: LogEntry) -> None:
        """Count one answered (or dropped) call and log it."""
        self.requests[(entry.path, entry.status)] += 1
        self.log.append(entry)
        self.logged += 1

    def snapshot(self) -> EmulatorStats:
        """A frozen copy of the counters (take it under the emulator's lock)."""
        limiter = self.limiter
        return EmulatorStats(
            project_id=self.settings.project_id,
            requests=dict(self.requests),
            updates=dict(self.updates),
            calls=limiter.calls,
            max_window_calls=limiter.max_window,
            rate_limit=limiter.limit,
            rate_window=limiter.window,
            rate_limited=limiter.rejected,
            blocks=limiter.blocks,
            merges=tuple(self.store.merges),
            log=tuple(self.log),
            log_dropped=self.logged - len(self.log),
        )
