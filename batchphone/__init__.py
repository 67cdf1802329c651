"""batchphone: update the phone numbers of many Descope users at once.

The public API is ``run``, ``validate``, ``plan`` and ``undo`` on a ``Target`` (see
``batchphone.api``), each returning a ``Summary``, with the settings, models and errors they
take and raise: ``__all__`` is that pinned API and nothing else (the stages, ``Job`` and the
runner are internal). The pipeline, which pulls in polars, httpx and phonenumbers, is imported
on first use so that ``batchphone --help`` starts fast.
"""

from __future__ import annotations

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
from batchphone.version import __version__

__all__ = [
    "BatchphoneError",
    "Command",
    "FatalRemoteError",
    "InputError",
    "InputRow",
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
    "load_settings",
    "plan",
    "run",
    "undo",
    "validate",
]
