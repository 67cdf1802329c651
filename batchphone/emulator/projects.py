"""Project settings from command-line values or from a projects file (TOML or JSON).

A projects file lists several projects, each with its own users, key and budget::

    [[projects]]
    project_id = "P2first0000000000000000000000"
    management_key = "K1"
    rate_limit = "500/60"        # N/W; penalty, algorithm, license_tier are optional too
    users = "users.csv"          # relative to the projects file; or generate = 1000 (and seed)

Values a project leaves out come from the command line's ``--rate-limit``, ``--penalty`` and
``--rate-algorithm``. Every error names the file, the project and the key that is wrong.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from batchphone.emulator.ratelimit import Algorithm
from batchphone.emulator.state import ProjectSettings
from batchphone.emulator.users import SeedFileError, generate_users, load_users
from batchphone.errors import UsageError

__all__ = ["BudgetDefaults", "load_projects_file", "parse_rate", "project_settings"]

_KEYS = frozenset(
    {"project_id", "management_key", "rate_limit", "penalty", "algorithm", "license_tier"}
    | {"users", "generate", "seed"}
)


@dataclass(frozen=True, slots=True)
class BudgetDefaults:
    """The budget a project gets unless it says otherwise."""

    rate: str = "500/60"
    penalty: float = 60.0
    algorithm: str = "sliding"
    license_tier: str = "tier1"


_DEFAULTS = BudgetDefaults()


def parse_rate(text: str, *, setting: str = "rate_limit") -> tuple[int, float]:
    """``"500/60"`` -> ``(500, 60.0)``: N calls per W seconds, N >= 1 and W > 0."""
    count, slash, window = str(text).partition("/")
    try:
        n, w = int(count), float(window)
    except ValueError:
        n, w = 0, 0.0
    if not slash or n < 1 or not w > 0:
        message = f"rate limit {text}: expected N/SECONDS such as 500/60 (N >= 1, SECONDS > 0)"
        raise UsageError(message, setting=setting)
    return n, w


def project_settings(
    project_id: str,
    management_key: str,
    *,
    users: Path | None = None,
    generate: int | None = None,
    seed: int = 0,
    budget: BudgetDefaults = _DEFAULTS,
) -> ProjectSettings:
    """One project from command-line values: users from ``users`` or ``generate``, or none."""
    if users is not None and generate is not None:
        raise UsageError("--users and --generate cannot be used together", setting="users")
    if generate is not None and generate < 0:
        raise UsageError(f"--generate {generate}: expected 0 or more", setting="generate")
    if users is not None:
        try:
            seeded = load_users(users)
        except OSError as exc:
            raise UsageError(f"--users {users}: {exc.strerror}", setting="users") from None
        except SeedFileError as exc:
            raise UsageError(f"--users {users}: {exc}", setting="users") from None
    else:
        seeded = generate_users(generate or 0, seed)
    limit, window = parse_rate(budget.rate)
    return ProjectSettings(
        project_id=project_id,
        management_key=management_key,
        rate_limit=limit,
        rate_window=window,
        penalty=budget.penalty,
        algorithm=cast(Algorithm, budget.algorithm),
        license_tier=budget.license_tier,
        users=seeded,
    )


def load_projects_file(path: Path, budget: BudgetDefaults = _DEFAULTS) -> list[ProjectSettings]:
    """The projects a TOML (``.toml``) or JSON file lists under ``projects``."""
    where = f"--projects-file {path}"
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{where}: {exc.strerror}", setting="projects_file") from None
    try:
        document: Any = tomllib.loads(raw.decode()) if path.suffix == ".toml" else json.loads(raw)
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{where}: cannot be parsed: {exc}", setting="projects_file") from None
    entries = document.get("projects") if isinstance(document, dict) else document
    if not isinstance(entries, list) or not entries:
        raise UsageError(f"{where}: expected a non-empty list of projects", setting="projects_file")
    projects = []
    for number, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            raise UsageError(f"{where}: project {number} is not a table", setting="projects_file")
        unknown = sorted(set(entry) - _KEYS)
        if unknown:
            message = f"{where}: project {number}: unknown key(s) {', '.join(unknown)}"
            raise UsageError(message, setting="projects_file")
        try:
            projects.append(_project_from_entry(entry, path.parent, budget))
        except (UsageError, TypeError, ValueError) as exc:
            message = f"{where}: project {number}: {exc}"
            raise UsageError(message, setting="projects_file") from None
    return projects


def _project_from_entry(
    entry: dict[str, Any], base: Path, budget: BudgetDefaults
) -> ProjectSettings:
    for key in ("project_id", "management_key"):
        if not isinstance(entry.get(key), str):
            raise ValueError(f"{key} is required (a string)")
    rate = entry.get("rate_limit", budget.rate)
    merged = BudgetDefaults(
        rate=str(rate),
        penalty=float(entry.get("penalty", budget.penalty)),
        algorithm=str(entry.get("algorithm", budget.algorithm)),
        license_tier=str(entry.get("license_tier", budget.license_tier)),
    )
    users = entry.get("users")
    return project_settings(
        entry["project_id"],
        entry["management_key"],
        users=base / str(users) if users is not None else None,
        generate=int(entry["generate"]) if "generate" in entry else None,
        seed=int(entry.get("seed", 0)),
        budget=merged,
    )
