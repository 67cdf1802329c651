"""A prototype journal in stdlib sqlite3, for scenario 11 only (issue 10): not batchphone's.

It keeps what ``batchphone.files.journal.Journal`` keeps, with the durability issue 10 names:
``journal_mode=WAL``, ``synchronous=NORMAL`` and one transaction per answered call (a per-row
run commits every row; a batch call commits its rows at once). A committed transaction is in
the WAL file in the page cache when ``COMMIT`` returns, so a ``kill -9`` of the process loses
none of it; an OS crash or power cut may lose the transactions since the last checkpoint (the
JSONL journal may lose up to its last second: the runner fsyncs it every second).

* ``results``: one row per input row (``row`` is the rowid), the result columns in their result
  types, and ``ts``. A later record of the same row replaces the earlier one (``INSERT OR
  REPLACE``), so the last record wins without a sort and ``ORDER BY row`` walks the rowid b-tree.
* ``calls``: the epoch time of every answered call (the limiter's seed on resume).
* ``meta``: the header (format and the run's identity as JSON).

Support staff can open it with ``sqlite3 results.csv.journal.db``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from batchphone.files.journal import JournalState
from batchphone.models import ResultCells, RowResult, Status

__all__ = ["SqliteJournal"]

_INT_COLUMNS = frozenset({"row", "http_status", "attempts"})
_BOOL_COLUMNS = frozenset({"verified_phone"})


def _sql_type(name: str) -> str:
    return "INTEGER" if name in _INT_COLUMNS | _BOOL_COLUMNS else "TEXT"


def _text(value: Any) -> Any:
    """A text column's value as the result file writes it (as ``writer._to_text`` does)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class SqliteJournal:
    """An open sqlite journal, appended to by one writer (the run's consumer)."""

    def __init__(self, path: Path, columns: Sequence[str], identity: dict[str, Any]) -> None:
        self.path = path
        self.columns = tuple(columns)
        if self.columns != ResultCells._fields[: len(self.columns)]:
            raise ValueError("the columns must be the first result columns, in their order")
        # created 0600 first: sqlite gives its -wal and -shm files the database file's mode
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        # autocommit mode: transactions are opened and committed explicitly below
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        cells = ", ".join(f'"{name}" {_sql_type(name)}' for name in self.columns[1:])
        self.db.executescript(
            f"""
            CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS results (row INTEGER PRIMARY KEY, {cells}, ts REAL);
            CREATE TABLE IF NOT EXISTS calls (ts REAL NOT NULL);
            """
        )
        self.db.execute(
            "INSERT OR IGNORE INTO meta VALUES ('format', 'batchphone-journal-sqlite'), "
            "('identity', ?), ('created', ?)",
            (json.dumps(identity, sort_keys=True), str(time.time())),
        )
        marks = ", ".join("?" for _ in range(len(self.columns) + 1))
        names = ", ".join(f'"{name}"' for name in self.columns)
        self._insert = f"INSERT OR REPLACE INTO results ({names}, ts) VALUES ({marks})"
        self._converters = tuple(
            int if name in _INT_COLUMNS else bool if name in _BOOL_COLUMNS else _text
            for name in self.columns
        )
        self._open = False

    def _begin(self) -> None:
        if not self._open:
            self.db.execute("BEGIN")
            self._open = True

    def append(self, result: RowResult, *, ts: float, commit: bool = True) -> None:
        """Record a row's final result; ``commit`` ends the transaction (the call is answered)."""
        self._begin()
        record = result.to_record()
        values = [record.get(name) for name in self.columns]
        values = [
            None if value is None else convert(value)
            for convert, value in zip(self._converters, values, strict=True)
        ]
        self.db.execute(self._insert, (*values, round(ts, 3)))
        if commit:
            self.commit()

    def append_call(self, ts: float, *, commit: bool = False) -> None:
        """Record an answered call; it goes with the row(s) of that call in one transaction."""
        self._begin()
        self.db.execute("INSERT INTO calls VALUES (?)", (round(ts, 3),))
        if commit:
            self.commit()

    def commit(self) -> None:
        """End the open transaction (no fsync with synchronous=NORMAL: the WAL is in the OS)."""
        if self._open:
            self.db.execute("COMMIT")
            self._open = False

    def state(self) -> JournalState:
        """What a resumed run needs: the status of every row and the calls of the last hour."""
        state = JournalState()
        codes = {status.value: JournalState.code(status) for status in Status}
        top = self.db.execute("SELECT max(row) FROM results").fetchone()[0] or 0
        statuses = bytearray(top + 1)
        count = 0
        for row, status in self.db.execute("SELECT row, status FROM results"):
            statuses[row] = codes[status]
            count += 1
        state.statuses = statuses
        state.records = count
        cutoff = time.time() - 3600
        state.call_times = [
            ts for (ts,) in self.db.execute("SELECT ts FROM calls WHERE ts >= ?", (cutoff,))
        ]
        return state

    def rows(self) -> Iterator[ResultCells]:
        """Every row's last result, ascending by row, values of their column's type."""
        names = ", ".join(f'"{name}"' for name in self.columns)
        flags = [i for i, name in enumerate(self.columns) if name in _BOOL_COLUMNS]
        # the columns lead the result columns (checked when opened): the rest are empty
        rest = (None,) * (len(ResultCells._fields) - len(self.columns))
        make = ResultCells._make
        for values in self.db.execute(f"SELECT {names} FROM results ORDER BY row"):
            cells = list(values)
            for i in flags:
                if cells[i] is not None:
                    cells[i] = bool(cells[i])
            yield make((*cells, *rest))

    def close(self) -> None:
        """Commit what is open and close (sqlite checkpoints the WAL into the database)."""
        self.commit()
        self.db.close()
