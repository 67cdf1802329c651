"""The process that runs one task of the page: forked by ``ui.launcher`` (``run``), or
``python -m batchphone.ui.worker`` with the spec on stdin (``main``).

It takes one JSON spec (the ``batchphone ui`` flags, then the API calls to make) and
calls the public API (``batchphone.validate``, ``plan``, ``run``, ``undo``) in its main thread
with ``handle_signals=True``, so the page's Stop is a SIGINT, exactly as Ctrl-C stops the CLI.
Each call owns its result file, journal and lock like a CLI run: the CLI can resume or undo it.

To the server (stdout, or the launcher's pipe) it writes JSON lines: progress (counts by
status, never a row's content), the canary's verdict, then each call's ``Summary`` or its
one-line error. The management key is read by ``load_settings`` from the environment (the
server's, which a forked task takes as a started one inherits it) or the key file, as the CLI
does: it is never in the spec.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TextIO

from batchphone.models import RowResult, Summary

__all__ = ["JsonProgress", "Out", "main", "run"]


class Out(Protocol):
    """Where the lines go: stdout, or the pipe to the page's server (``ui.launcher``)."""

    def write(self, text: str, /) -> int: ...

    def flush(self) -> None: ...


#: log events passed on to the page (their numeric fields only: no personal data)
_EVENTS = frozenset({"canary_passed", "canary_failed"})
_EVERY_S = 0.2


class JsonProgress:
    """The progress protocol as JSON lines: counts by status, at most every 0.2 s."""

    def __init__(self, out: Out, step: int) -> None:
        self.out = out
        self.step = step
        self.counts: Counter[str] = Counter()
        self.sent = 0  # update attempts made by this process (the calls before the summary's)
        self.total = 0
        self.done = 0
        self._last = 0.0

    def emit(self, event: str, **fields: Any) -> None:
        self.out.write(json.dumps({"event": event, "step": self.step, **fields}) + "\n")
        self.out.flush()

    def start(self, total: int, *, done: int, calls_per_second: float | None) -> None:
        self.total, self.done = total, done
        self.emit("start", total=total, done=done, calls_per_second=calls_per_second)

    def advance(self, result: RowResult) -> None:
        self.counts[result.status.value] += 1
        self.sent += result.attempts
        now = time.monotonic()
        if now - self._last >= _EVERY_S:
            self._last = now
            self._counts()

    def paused(self, seconds: float, *, calls_per_second: float | None = None) -> None:
        self._counts()
        self.emit("paused", seconds=seconds, calls_per_second=calls_per_second)

    def close(self) -> None:
        self._counts()

    def _counts(self) -> None:
        self.emit("progress", counts=dict(self.counts), attempts=self.sent)


def _capture_events(out: Out) -> None:
    """Pass the canary's verdict (a library log event) to the server; drop every other event."""
    import structlog

    def forward(_logger: Any, _name: str, event: Any) -> Any:
        name = event.get("event")
        if name in _EVENTS:
            numbers = {k: v for k, v in event.items() if isinstance(v, int | float)}
            out.write(json.dumps({"event": "log", "name": name, **numbers}) + "\n")
            out.flush()
        raise structlog.DropEvent

    structlog.configure(processors=[forward], cache_logger_on_first_use=False)


def _call(step: dict[str, Any], number: int, settings: Any, out: Out) -> int:
    import batchphone
    from batchphone.api import Target

    command = step["command"]
    functions: dict[str, Callable[..., Summary]] = {
        "validate": batchphone.validate,
        "plan": batchphone.plan,
        "run": batchphone.run,
        "undo": batchphone.undo,
    }
    function = functions[command]
    progress = JsonProgress(out, number)
    keywords: dict[str, Any] = dict(step.get("options") or {})
    if step.get("out") is not None:
        keywords["out"] = step["out"]
    if command != "validate":
        keywords["target"] = Target.from_settings(settings)
    summary = function(
        Path(step["input"]),
        settings=settings,
        progress=progress,
        handle_signals=True,
        **keywords,
    )
    document = summary.to_json()
    document["counts"] = dict(summary.counts)
    progress.emit("summary", summary=document)
    return int(summary.exit_code)


def main(stdin: TextIO = sys.stdin, out: Out = sys.stdout) -> int:
    """``python -m batchphone.ui.worker``: the spec on stdin, the lines on stdout."""
    return run(json.load(stdin), out)


def run(spec: dict[str, Any], out: Out) -> int:
    """Run the spec's calls in order; stop at the first that does not end with exit code 0
    or 1 (an error, a stop, a fatal answer)."""
    from batchphone.config import load_settings
    from batchphone.errors import BatchphoneError

    _capture_events(out)
    number = 0
    try:
        config = spec.get("config_path")
        settings = load_settings(
            spec.get("flags") or {}, config_path=Path(config) if config else None
        )
        for number, step in enumerate(spec["steps"]):
            code = _call(step, number, settings, out)
            if code not in (0, 1):
                return code
    except BatchphoneError as exc:
        out.write(json.dumps({"event": "error", "step": number, "message": exc.message,
                              "exit_code": exc.exit_code}) + "\n")  # fmt: skip
        return exc.exit_code
    except KeyboardInterrupt:  # a stop before the run had its own handler
        out.write(json.dumps({"event": "error", "step": number, "message": "interrupted",
                              "exit_code": 130}) + "\n")  # fmt: skip
        return 130
    except Exception as exc:  # shown on the page; the traceback goes to the task's own log
        import traceback

        traceback.print_exc()
        message = f"unexpected {type(exc).__name__}: {exc}"
        out.write(json.dumps({"event": "error", "step": number, "message": message,
                              "exit_code": 1}) + "\n")  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
