"""A job: what to do (``run``, ``validate``, ``plan``, ``undo``), with which rows, and how.

``Job`` is what the CLI asks for (``command.decide`` makes it a plan), and
``prepared_batches`` turns the input (or, for ``undo``, a result file) into batches of update
requests and of results that need no call.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from batchphone.config import Settings
from batchphone.errors import UsageError
from batchphone.files.reader import InputSource
from batchphone.logs import get_logger
from batchphone.models import Command
from batchphone.modes.reverse import UndoSource
from batchphone.options import Sending
from batchphone.remote.batch import MAX_BATCH
from batchphone.rows.prepare import Mode, Prepared, Preparer, RowRules

__all__ = ["BATCH_ROWS", "Job", "prepared_batches"]

#: Input rows read and judged at a time.
BATCH_ROWS = 5_000

log = get_logger()


@dataclass(frozen=True, slots=True)
class Job:
    """What to do: ``command`` over ``input_path``, results to ``out_path``, and how to send.

    ``out_path`` is ``None`` only for ``validate``: then nothing is written (the summary's
    counts, and the rows a progress listener sees, are the report).

    ``command`` is a ``Command`` (``run``, ``validate``, ``plan`` or ``undo``, whose input is a
    result file); a string is taken only when it is one of them exactly (``"Validate"`` is
    refused: a typo must never run an update).
    Every run reads the users first and sends only rows that change, unless the settings
    say ``no_lookup``. ``api`` is
    ``update`` (a call per row) or ``batch`` (``batch_size`` rows per patch call); ``canary``
    sends the first N updates, reads them back and goes on only if every one stuck.
    """

    command: Command
    input_path: Path
    out_path: Path | None
    api: Sending = Sending.UPDATE
    batch_size: int = MAX_BATCH
    canary: int = 0

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "command", Command.parse(self.command))
        except ValueError as exc:
            raise UsageError(str(exc), setting="command") from None
        object.__setattr__(self, "input_path", Path(self.input_path))
        if self.out_path is not None:
            object.__setattr__(self, "out_path", Path(self.out_path))
        elif self.command is not Command.VALIDATE:
            raise UsageError("out: the result file is required", setting="out")
        if self.api not in tuple(Sending):
            raise UsageError(f"api: expected update or batch, not {self.api!r}", setting="api")
        object.__setattr__(self, "api", Sending(self.api))
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise UsageError(
                f"batch_size: expected 1..{MAX_BATCH}, not {self.batch_size}", setting="batch_size"
            )
        if self.canary < 0:
            raise UsageError(f"canary: expected N >= 1, not {self.canary}", setting="canary")


def prepared_batches(
    source: InputSource | UndoSource, settings: Settings, rules: RowRules
) -> tuple[Iterator[list[Prepared]], int]:
    """The row batches to process (lazily: each is read when asked for) and how many rows."""
    limit = settings.limit
    if isinstance(source, UndoSource):
        batches = source.prepared(allow_remove=settings.allow_remove, limit=limit)
        return batches, source.count_rows(limit)
    unverified = settings.verified is None and not source.has_verified
    if rules.mode is Mode.RUN and settings.no_lookup and unverified:
        # without reads nothing tells a same phone from a new one: every row says false
        log.warning(
            "rows_sent_unverified",
            message="no_lookup=True and no verified value (no verified=..., no verified column): "
            "every row is sent with verified false, which un-verifies phones users verified",
        )
    preparer = Preparer(rules, source.repeated_login_ids(limit))

    def judged() -> Iterator[list[Prepared]]:
        for rows in source.batches(batch_size=BATCH_ROWS, limit=limit):
            source.check_unchanged()  # one stat per batch
            yield preparer.prepare(rows)
        yield preparer.finish()

    return judged(), source.count_rows(limit)
