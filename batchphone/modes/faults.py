"""Local faults while the pool runs (a full disk, the budget store, the input changed), and
how the run then ends.

Each stops the run as a first Ctrl-C does (``Stop.fail``): no new call starts, the calls in
flight finish and are journaled, and the result file is written (a copy elsewhere when
``--out`` cannot be: ``outfile.write_somewhere``). Before any update left, the error ends the
run as itself (exit 2: nothing was sent); after, as ``LocalFaultError`` (exit 4).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from batchphone.errors import BatchphoneError, LocalFaultError, OutputError, RemoteError
from batchphone.files.journal import Journal
from batchphone.logs import get_logger
from batchphone.modes.dispatch import Outcome
from batchphone.modes.outfile import Written
from batchphone.remote.stop import Stop

__all__ = ["Faults", "journal_failed"]

log = get_logger()


class Faults:
    """Turns local errors into a stop, and says how the run ends after one (``settle``)."""

    def __init__(self, stop: Stop, *, sends: bool) -> None:
        self.stop = stop
        self.sends = sends  # the workers send updates (not a plan's or a dry run's rows)
        #: an update may have left: a worker took a row while the run was not stopping
        self.sent = False
        self.where: str | None = None  # where the result file is, when not at --out

    def producing(
        self, produce: Callable[[Any, Any], Awaitable[None]]
    ) -> Callable[[Any, Any], Awaitable[None]]:
        """``produce``, with a local error (the input changed) turned into a stop."""

        async def guarded(jobs: Any, results: Any) -> None:
            try:
                await produce(jobs, results)
            except BatchphoneError as exc:
                if isinstance(exc, RemoteError):
                    raise
                self.stop.fail(exc)  # the workers finish what they hold, the consumer drains

        return guarded

    def sending(
        self, process: Callable[[Any], Awaitable[Outcome]]
    ) -> Callable[[Any], Awaitable[Outcome]]:
        """``process``, noting that an update may leave (no call starts once stopping)."""

        async def guarded(item: Any) -> Outcome:
            if self.sends and self.stop.reason is None:
                self.sent = True
            return await process(item)

        return guarded

    def settle(self, written: Written, out_path: Path) -> str | None:
        """After the result file was written (or not): the run's end; its result path."""
        if written.error is not None:
            self.stop.fail(written.error)
            if written.path is not None:
                self.where = (
                    f"a copy of the result file is at {written.path} ({written.error.message})"
                )
            else:
                self.where = f"no result file could be written ({written.error.message})"
            log.error(
                "result_file_not_written",
                result_path=str(out_path),
                copy=str(written.path) if written.path else None,
            )
        local = self.stop.local
        if local is not None and self.stop.fatal is local:
            if not self.sent:
                raise local  # before the first update: exit 2, nothing was sent
            where = self.where or f"every row is in {out_path}"
            self.stop.fatal = LocalFaultError(
                f"{local.message}; the run stopped after updates were sent (the calls in "
                f"flight finished): {where}",
                cause=local,
            )
        return str(written.path) if written.path is not None else None


def journal_failed(journal: Journal, stop: Stop) -> Callable[[OSError], None]:
    """What a journal write that fails (a full disk) does: stop the run, as ``Stop.fail``."""

    def failed(exc: OSError) -> None:
        log.error("journal_write_failed", path=str(journal.path), errno=exc.errno)
        reason = exc.strerror or type(exc).__name__
        stop.fail(OutputError(f"cannot write the journal {journal.path} ({reason})"))

    return failed
