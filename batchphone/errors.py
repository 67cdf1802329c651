"""The one exception tree of batchphone.

::

    BatchphoneError                 exit_code 1
    ├── UsageError                  2  a setting is wrong (names the setting and its source)
    ├── InputError                  2  the input file cannot be read as rows (names the file)
    ├── OutputError                 2  the result file cannot be written, or another run holds it
    ├── ResumeError                 2  the journal beside --out belongs to another run
    ├── LocalFaultError             4  a local error (a full disk, the budget store, the input
    │                                  changed) stopped the run after updates were sent: the
    │                                  calls in flight finished, every row is in the result file
    │                                  (or the copy it names); fix the cause, rerun to resume
    └── RemoteError                 1  the API answered something the client cannot use
        ├── TransientError          -  5xx, timeout, dropped connection, non-JSON body: retry
        ├── RateLimitedError        -  429: pause every worker for ``retry_after``, then resend
        └── FatalRemoteError        3  401/403, or too many permanent failures: stop the run
            └── UnreachableError    3  no call of the run reached a server (refused, no such host)

The library raises these and never prints or exits; ``cli.py`` turns them into one line and an
exit code. A message names an option as the API's keyword does, ``name=VALUE`` (``restart=True``,
``limit=5``, ``sheet=...``), never as a flag: ``cli.py`` shows each such name as its flag
(``--restart``, ``--limit 5``, ``--sheet``) from the one option declaration (``options.OPTIONS``),
and ``UsageError.setting`` says which option is wrong. No message may contain the management
key: messages are built from the fields below, never from request headers.

A local error met before the first update was sent keeps its own class (exit 2: nothing was
sent); the same error after it is wrapped in ``LocalFaultError`` (exit 4: see the result file).
"""

from __future__ import annotations

__all__ = [
    "BatchphoneError",
    "FatalRemoteError",
    "InputError",
    "LocalFaultError",
    "OutputError",
    "RateLimitedError",
    "RemoteError",
    "ResumeError",
    "TransientError",
    "UnreachableError",
    "UsageError",
]


class BatchphoneError(Exception):
    """Base of every error batchphone raises on purpose."""

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(BatchphoneError):
    """A setting has a bad value; ``setting`` and ``source`` say which and where from."""

    exit_code = 2

    def __init__(self, message: str, *, setting: str | None = None, source: str | None = None):
        super().__init__(message)
        self.setting = setting
        self.source = source


class InputError(BatchphoneError):
    """The input cannot be read as rows: no API call is made for any of it."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | None = None, row: int | None = None):
        super().__init__(message)
        self.path = path
        self.row = row


class OutputError(BatchphoneError):
    """The result file (or its journal or lock) cannot be written."""

    exit_code = 2


class ResumeError(BatchphoneError):
    """The journal beside ``out`` was written by a run with other input, target or options."""

    exit_code = 2


class LocalFaultError(BatchphoneError):
    """A local error stopped the run after updates were sent; ``cause`` is that error.

    The run stopped as for Ctrl-C (no new call, the calls in flight finished and were recorded)
    and wrote its result file, or a copy of it elsewhere when ``out`` could not be written.
    """

    exit_code = 4

    def __init__(self, message: str, *, cause: BatchphoneError) -> None:
        super().__init__(message)
        self.cause = cause


class RemoteError(BatchphoneError):
    """The API answered with something other than a final answer for the row."""

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        error_code: str | None = None,
        error_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.error_code = error_code
        self.error_message = error_message


class TransientError(RemoteError):
    """Worth retrying: 5xx, timeouts, dropped connections, bodies that are not JSON."""


class RateLimitedError(RemoteError):
    """HTTP 429: the project's budget is spent; nothing may be sent for ``retry_after`` s."""

    def __init__(self, message: str, *, retry_after: float, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class FatalRemoteError(RemoteError):
    """The run must stop: no further call can succeed (401, 403, or the circuit opened)."""

    exit_code = 3


class UnreachableError(FatalRemoteError):
    """No call of this run has reached a server, and this one could not connect either.

    A refused connection, a host name that does not resolve, a failed TLS handshake: the request
    never left this process, so nothing was changed. ``base_url`` says where (never the key).
    """

    def __init__(self, message: str, *, base_url: str) -> None:
        super().__init__(message)
        self.base_url = base_url
