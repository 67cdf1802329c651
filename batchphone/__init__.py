"""batchphone: update the phone numbers of many Descope users at once.

The public API is ``run``, ``validate``, ``plan`` and ``undo`` on a ``Target`` (see
``batchphone.api``), each returning a ``Summary``. The light parts (the API's signatures,
models, errors, settings) are imported eagerly; the pipeline, which pulls in polars, httpx and
phonenumbers, is imported on first use so that ``batchphone --help`` starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from batchphone.api import Target, plan, run, undo, validate
from batchphone.config import Secret, Settings, load_settings
from batchphone.errors import (
    BatchphoneError,
    FatalRemoteError,
    InputError,
    OutputError,
    RateLimitedError,
    RemoteError,
    ResumeError,
    TransientError,
    UnreachableError,
    UsageError,
)
from batchphone.models import Command, InputRow, Normalized, Reason, RowResult, Status, Summary

if TYPE_CHECKING:
    from batchphone.modes.job import Job
    from batchphone.modes.runner import execute, run_sync

from batchphone.version import __version__

__all__ = [
    "BatchphoneError",
    "Command",
    "FatalRemoteError",
    "InputError",
    "InputRow",
    "Job",
    "Normalized",
    "OutputError",
    "RateLimitedError",
    "Reason",
    "RemoteError",
    "ResumeError",
    "RowResult",
    "Secret",
    "Settings",
    "Status",
    "Summary",
    "Target",
    "TransientError",
    "UnreachableError",
    "UsageError",
    "__version__",
    "execute",
    "load_settings",
    "plan",
    "run",
    "run_sync",
    "undo",
    "validate",
]

_LAZY = {"Job", "execute", "run_sync"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from batchphone.modes import job, runner

        return getattr(job if name == "Job" else runner, name)
    raise AttributeError(f"module 'batchphone' has no attribute {name!r}")
