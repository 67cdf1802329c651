r"""Result rows (``ResultCells``) -> the result file (CSV, TSV, JSONL, Parquet or XLSX),
atomically.

The rows of a journal (``files.results``) come nearly in row order, and a resumed run appends
the rows it re-did at the end. The last of each row is kept and rows are written in ascending
order by an external merge sort: sorted runs of about ``_RUN_BYTES`` are spilled to private
temp files beside the result and merged with ``heapq.merge``, so memory stays flat however many
rows there are. A row is cut down to the file's columns (a plain tuple) before it is sorted.

* The result holds personal data: it is written to a temp file created ``0600`` in the result's
  directory, fsynced, then renamed over ``out_path`` (a crash leaves the old file or none).
  Spilled runs live in a ``0700`` directory beside it and are removed afterwards.
* Formula injection: in CSV and TSV every text cell that could run as a formula gets a
  leading ``'`` (``formats.defuse``, which ``formats.undefuse`` takes back for undo).
  XLSX needs no quote: a string cell is never a formula, so its text is the value itself (a
  ``'`` there would be part of what a person copies). Only ``row``, ``line``, ``http_status``
  and ``attempts`` are number cells. JSONL and Parquet are for programs: written as they are.
* XLSX is for people: a bold, frozen header row with an autofilter, columns as wide as their
  content (capped).
* A short sheet (``ShortSheet``: some columns, for people) is a second file written from the
  same rows in the same pass: the rows are spilled to a private file while the result is
  written, then read back into it. The result file itself always has every column: it is the
  record of the run that undo reads.
"""

from __future__ import annotations

import contextlib
import csv
import heapq
import json
import operator
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from batchphone.errors import OutputError, UsageError
from batchphone.files.atomic import replacing
from batchphone.files.formats import FORMATS, RISKY_FIRST, XLSX_EXACT_TEXT, defuse, file_format
from batchphone.files.journal import journal_path, refuse_link
from batchphone.files.lock import lock_path
from batchphone.models import CELL_TYPES, RESULT_COLUMNS, ResultCells

__all__ = [
    "SHORT_COLUMNS",
    "XLSX_MAX_ROWS",
    "ShortSheet",
    "check_output_path",
    "check_sheet_rows",
    "check_side_paths",
    "short_sheet",
    "write_results",
    "write_rows",
]

#: Data rows an Excel sheet can hold below its header row.
XLSX_MAX_ROWS = 1_048_575
#: The columns of a short sheet when ``--short-out`` comes without ``--columns``.
SHORT_COLUMNS = ("row", "line", "loginId", "phone", "status", "reason", "error_message")

_INT_COLUMNS = frozenset(name for name, kind in CELL_TYPES.items() if kind is int)
_BOOL_COLUMNS = frozenset(name for name, kind in CELL_TYPES.items() if kind is bool)
_WIDTH_MIN, _WIDTH_MAX = 8, 60
_RUN_BYTES = 48 << 20  # estimated size of one in-memory sorted run
_BLOCK = 256  # records per pickled block: what the merge holds per run
_PARQUET_ROWS = 20_000  # rows per Parquet row group
_WORK = ".batchphone-sort-"  # + the writer's process id + "-": the folder of spilled runs

Values = tuple[Any, ...]
# (row, arrival number, values in column order): sorts by row, then by arrival.
_Keyed = tuple[int, int, Values]


@dataclass(frozen=True, slots=True)
class ShortSheet:
    """A second, shorter file of the same rows: ``columns`` of them, in that order."""

    path: Path
    columns: tuple[str, ...]


def short_sheet(
    out_path: Path | None, short_out: Path | None, columns: Sequence[str] | None
) -> ShortSheet | None:
    """The short sheet a job writes beside its result file, if any.

    ``--short-out FILE`` names it (columns: ``--columns``, else ``SHORT_COLUMNS``); ``--columns``
    alone puts it beside the result as ``<name>.short<ext>``. ``None``: neither was given, or
    there is no result file (``validate`` without ``--out``: nothing is written).
    Raises ``UsageError`` for ``--short-out`` without a result file, or equal to it.
    """
    if short_out is None and columns is None:
        return None
    if out_path is None:
        if short_out is not None:
            raise UsageError("short_out=... needs out=...: it holds the rows of the result file")
        return None
    path = short_out or out_path.with_name(f"{out_path.stem}.short{out_path.suffix}")
    if _same_file(path, out_path):
        raise UsageError(
            f"short_out={path}: is the result file, which keeps every column: choose another"
        )
    return ShortSheet(path, tuple(columns or SHORT_COLUMNS))


def check_output_path(out_path: Path, input_path: Path | None) -> str:
    """Check before any API call that ``out_path`` can receive the result; return its format.

    Raises ``OutputError`` for an unknown extension, the input file itself (symlinks and hard
    links resolved), a directory, a directory that does not exist or cannot be written in
    (probed by creating and removing a temp file), or a symbolic link where the result file,
    its journal or its lock go.
    """
    fmt = _format(out_path)
    for path in (out_path, journal_path(out_path), lock_path(out_path)):
        refuse_link(path)
    if out_path.is_dir():
        raise OutputError(f"{out_path}: is a directory: give a file name for the result")
    if input_path is not None and _same_file(out_path, input_path):
        raise OutputError(f"{out_path}: is the input file: choose another result file")
    parent = out_path.parent
    if not parent.is_dir():
        raise OutputError(f"{out_path}: directory {parent} does not exist")
    try:
        fd, probe = tempfile.mkstemp(prefix=".batchphone-probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{out_path}: cannot write in {parent} ({exc.strerror})") from None
    return fmt


def check_sheet_rows(out_path: Path, rows: int) -> None:
    """Before any API call: an XLSX result of ``rows`` data rows fits in one Excel sheet."""
    if _format(out_path) == "xlsx" and rows > XLSX_MAX_ROWS:
        raise OutputError(
            f"{out_path}: {rows:,} rows do not fit in an Excel sheet (at most {XLSX_MAX_ROWS:,} "
            f"below the header): use out={out_path.with_suffix('.csv').name} (or .parquet)"
        )


def check_side_paths(
    paths: Mapping[str, Path | None], input_path: Path, out_path: Path | None
) -> None:
    """Before anything is written: no option's path (``--summary-json``, ``--emulator-state``,
    ...: the keys name them) is the input, the result file, its journal or its lock, the input's
    journal (undo's input is a result file), or another option's path. ``UsageError`` with the
    option as its ``setting`` (symbolic and hard links resolved, as for ``--out``)."""
    owned = {"the input file": input_path, "the input file's journal": journal_path(input_path)}
    if out_path is not None:
        owned["the result file"] = out_path
        owned["the result file's journal"] = journal_path(out_path)
        owned["the result file's lock"] = lock_path(out_path)
    for option, path in paths.items():
        if path is None:
            continue
        for what, own in owned.items():
            if _same_file(path, own):
                raise UsageError(
                    f"{option} {path}: is {what}, which it would overwrite: choose another path",
                    setting=option,
                )
        owned[option] = path  # two options on one file: the later one is refused


def write_results(
    rows: Iterable[ResultCells],
    out_path: Path,
    *,
    columns: Sequence[str] = RESULT_COLUMNS,
    in_order: Iterable[ResultCells] = (),
    short: ShortSheet | None = None,
) -> int:
    """Write the last of each row's ``rows`` (a journal's), rows ascending, ``columns`` in
    that order.

    ``in_order`` are rows, already ascending, that ``rows`` does not hold (a stopped run's
    rows never reached): they join the merge as one more sorted run instead of going through
    the sort, so a stop of a long file costs one pass over it, not a sort. ``short``: the same
    rows to a second file too. Returns the number of rows written.
    """
    columns = tuple(columns)
    project = _cells_in(columns)

    def ordered(work: Path) -> Iterator[Values]:
        runs = _sorted_runs(rows, project, work)
        runs.append(_keyed_in_order(in_order, project))
        return _last_per_row(_merge(runs))

    return _write(out_path, columns, ordered, short)


def _keyed_in_order(
    rows: Iterable[ResultCells], project: Callable[[ResultCells], Values]
) -> Iterator[_Keyed]:
    for cells in rows:
        # arrival -1: were a row also journaled, its journal record (arrival >= 0) wins
        yield cells.row, -1, project(cells)


def write_rows(
    rows: Iterable[ResultCells],
    out_path: Path,
    *,
    columns: Sequence[str] = RESULT_COLUMNS,
    short: ShortSheet | None = None,
) -> int:
    """Write rows that are already final: one per input row, ascending. No journal, no sort:
    the report of ``validate`` and dry runs (``report.py``). Returns the number written.
    """
    columns = tuple(columns)
    project = _cells_in(columns)
    return _write(out_path, columns, lambda work: map(project, rows), short)


def _cells_in(columns: tuple[str, ...]) -> Callable[[ResultCells], Values]:
    """A row's cells in ``columns`` order, as a plain tuple (what is sorted, spilled and
    written). ``ValueError`` for a name that is not a result column."""
    fields = ResultCells._fields
    unknown = [name for name in columns if name not in fields]
    if unknown:
        raise ValueError(f"not result columns: {', '.join(unknown)}")
    if columns == fields[: len(columns)]:  # a result file's columns: a slice, the fastest cut
        return operator.itemgetter(slice(0, len(columns)))
    if len(columns) == 1:
        only = fields.index(columns[0])
        return lambda cells: (cells[only],)
    return operator.itemgetter(*map(fields.index, columns))


def _write(
    out_path: Path,
    columns: tuple[str, ...],
    ordered: Callable[[Path], Iterator[Values]],
    short: ShortSheet | None = None,
) -> int:
    fmt = _format(out_path)
    _remove_stale_work(out_path.parent)
    short_fmt = _format(short.path) if short is not None else None
    try:
        work = Path(tempfile.mkdtemp(prefix=f"{_WORK}{os.getpid()}-", dir=out_path.parent))
    except OSError as exc:
        raise OutputError(
            f"{out_path}: cannot write in {out_path.parent} ({exc.strerror})"
        ) from None
    target = out_path
    try:
        rows = ordered(work)
        spilled = work / "short.pickle"
        if short is not None:
            rows = teed = _spilled(rows, spilled, _projection(columns, short.columns))
        count = _write_atomically(out_path, fmt, columns, rows, work)
        if short is not None and short_fmt is not None:
            teed.close()  # every writer reads its rows to the end: this only closes the file
            target = short.path
            _write_atomically(short.path, short_fmt, short.columns, _read_blocks(spilled), work)
        return count
    except OutputError as exc:
        raise OutputError(f"{target}: {exc}") from None
    except OSError as exc:
        raise OutputError(f"{target}: cannot write the result ({exc.strerror or exc})") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _remove_stale_work(folder: Path) -> None:
    """Remove the sort folders a killed writer left here (``kill -9``: no ``finally`` ran).

    A folder is named after its writer's process id; one whose process is gone is stale. A live
    process keeps its folder (even one that only reuses a dead writer's id: the safe side).
    """
    with contextlib.suppress(OSError):
        for path in folder.glob(f"{_WORK}*"):
            pid = path.name[len(_WORK) :].partition("-")[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill there terminates the process: never guess, keep the folder
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, ValueError, OverflowError):  # not ours to signal, or not a process id
        return True
    return True


def _projection(columns: tuple[str, ...], wanted: tuple[str, ...]) -> Callable[[Values], Values]:
    where = {name: index for index, name in enumerate(columns)}
    picked = [where.get(name) for name in wanted]
    return lambda values: tuple(None if i is None else values[i] for i in picked)


def _spilled(
    rows: Iterator[Values], path: Path, project: Callable[[Values], Values]
) -> Generator[Values]:
    """``rows`` as they are, each also kept (``project``ed) in a private file, in blocks."""
    with open(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600), "wb") as file:
        block: list[Values] = []
        for values in rows:
            block.append(project(values))
            if len(block) >= _BLOCK:
                pickle.dump(block, file, protocol=pickle.HIGHEST_PROTOCOL)
                block = []
            yield values
        if block:
            pickle.dump(block, file, protocol=pickle.HIGHEST_PROTOCOL)


def _format(out_path: Path) -> str:
    fmt = file_format(out_path)
    if fmt is None:
        kind = f"unsupported result file type {out_path.suffix or '(none)'!r}"
        raise OutputError(f"{out_path}: {kind}: use " + ", ".join(FORMATS))
    return fmt


def _same_file(a: Path, b: Path) -> bool:
    with contextlib.suppress(OSError):
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _sorted_runs(
    rows: Iterable[ResultCells], project: Callable[[ResultCells], Values], work: Path
) -> list[Iterable[_Keyed]]:
    """Cut the rows into sorted runs; all but an only run are spilled to disk."""
    runs: list[Iterable[_Keyed]] = []
    run: list[_Keyed] = []
    size = per_record = 0
    for seq, cells in enumerate(rows):
        values = project(cells)
        run.append((cells.row, seq, values))
        if seq % 1024 == 0:  # sizing every record would cost more than the sort
            per_record = 100 + 60 * len(values) + sum(len(v) for v in values if type(v) is str)
        size += per_record
        if size >= _RUN_BYTES:
            runs.append(_spill(run, work, len(runs)))
            run, size = [], 0
    run.sort()
    if runs and run:
        runs.append(_spill(run, work, len(runs)))
    elif run:
        runs.append(run)
    return runs


def _spill(run: list[_Keyed], work: Path, number: int) -> Iterable[_Keyed]:
    # (row, seq) is unique, so sorting never compares the values (which may be None).
    run.sort()
    path = work / f"run-{number:05d}.pickle"
    with open(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600), "wb") as file:
        for start in range(0, len(run), _BLOCK):
            pickle.dump(run[start : start + _BLOCK], file, protocol=pickle.HIGHEST_PROTOCOL)
    return _read_blocks(path)


def _read_blocks(path: Path) -> Iterator[Any]:
    """The items of the blocks pickled to ``path`` (a sort run, the short sheet's spill)."""
    # Only our own files, in our own 0700 directory, are unpickled.
    with path.open("rb") as file:
        while True:
            try:
                block: list[Any] = pickle.load(file)
            except EOFError:
                return
            yield from block


def _merge(runs: list[Iterable[_Keyed]]) -> Iterator[_Keyed]:
    if len(runs) == 1:
        return iter(runs[0])
    return heapq.merge(*runs)


def _last_per_row(keyed: Iterator[_Keyed]) -> Iterator[Values]:
    """Of the records of one row (adjacent, in arrival order) yield only the last."""
    pending: _Keyed | None = None
    for item in keyed:
        if pending is not None and item[0] != pending[0]:
            yield pending[2]
        pending = item
    if pending is not None:
        yield pending[2]


def _write_atomically(
    out_path: Path, fmt: str, columns: tuple[str, ...], rows: Iterator[Values], work: Path
) -> int:
    with replacing(out_path) as (temp, file):
        if fmt == "parquet":
            count = _write_parquet(temp, columns, rows)
        elif fmt == "xlsx":
            count = _write_xlsx(file, columns, rows, work)
        elif fmt == "jsonl":
            count = _write_jsonl(file, columns, rows)
        else:
            count = _write_delimited(file, columns, rows, "\t" if fmt == "tsv" else ",")
        refuse_link(out_path)  # os.replace would swap the link itself, but never write through one
    return count


def _write_delimited(
    file: IO[bytes], columns: tuple[str, ...], rows: Iterator[Values], delimiter: str
) -> int:
    # The csv module writes None as "" and ints as digits itself; only booleans (lower case,
    # like JSON) and the text columns (formulas) need a hand.
    risky = _text_columns(columns)
    flags = [i for i, name in enumerate(columns) if name in _BOOL_COLUMNS]
    count = 0
    with open(file.fileno(), "w", encoding="utf-8", newline="", closefd=False) as text:
        writer = csv.writer(
            text, delimiter=delimiter, lineterminator="\r\n" if delimiter == "," else "\n"
        )
        writer.writerow(columns)
        for values in rows:
            cells: list[Any] = list(values)
            for i in risky:
                cell = cells[i]
                if cell and cell[0] in RISKY_FIRST:  # a quick look first: most cells pass
                    cells[i] = defuse(cell)
            for i in flags:
                if cells[i] is not None:
                    cells[i] = "true" if cells[i] else "false"
            writer.writerow(cells)
            count += 1
    return count


def _text_columns(columns: tuple[str, ...]) -> list[int]:
    return [i for i, name in enumerate(columns) if name not in _INT_COLUMNS | _BOOL_COLUMNS]


def _write_jsonl(file: IO[bytes], columns: tuple[str, ...], rows: Iterator[Values]) -> int:
    count = 0
    encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    for values in rows:
        file.write(encode(dict(zip(columns, values, strict=True))).encode() + b"\n")
        count += 1
    return count


def _write_parquet(path: Path, columns: tuple[str, ...], rows: Iterator[Values]) -> int:
    import polars as pl  # here, not at the top: a CSV run never loads it (~0.2 s of CPU)
    from polars.io.plugins import register_io_source

    kinds = dict.fromkeys(_INT_COLUMNS, pl.Int64) | dict.fromkeys(_BOOL_COLUMNS, pl.Boolean)
    schema = {name: kinds.get(name, pl.String) for name in columns}
    count = 0
    failure: list[BaseException] = []

    def batches(*_: Any) -> Iterator[pl.DataFrame]:
        nonlocal count
        try:
            while True:
                block = [values for _, values in zip(range(_PARQUET_ROWS), rows, strict=False)]
                if not block:
                    return
                count += len(block)
                yield pl.DataFrame(block, schema=schema, orient="row")
        except BaseException as exc:  # polars would hide it behind its own error
            failure.append(exc)
            raise

    # Streams row groups from the merge into the file: the table is never whole in memory.
    frame = register_io_source(batches, schema=schema)
    try:
        frame.sink_parquet(path, row_group_size=_PARQUET_ROWS, sync_on_close="all")
    except pl.exceptions.PolarsError as exc:
        if failure:
            raise failure[0] from None
        raise OutputError(f"cannot write Parquet ({str(exc).splitlines()[0]})") from None
    return count


def _write_xlsx(
    file: IO[bytes], columns: tuple[str, ...], rows: Iterator[Values], work: Path
) -> int:
    import xlsxwriter  # only XLSX results load it

    workbook = xlsxwriter.Workbook(
        file,
        {
            "constant_memory": True,  # rows are flushed as written: memory stays flat
            "tmpdir": str(work),  # its temp files hold personal data too
            "strings_to_numbers": False,
            "strings_to_formulas": False,
            "strings_to_urls": False,
        },
    )
    # tells undo that no text cell has a quote added (older XLSX results had them)
    workbook.set_custom_property(XLSX_EXACT_TEXT, True)
    sheet = workbook.add_worksheet("results")
    header = workbook.add_format({"bold": True})
    sheet.freeze_panes(1, 0)
    widths = [max(_WIDTH_MIN, len(name) + 3) for name in columns]  # room for the filter button
    for col, name in enumerate(columns):
        sheet.write_string(0, col, name, header)
    count = 0
    for count, values in enumerate(rows, start=1):
        if count > XLSX_MAX_ROWS:
            workbook.close()
            raise OutputError(
                f"more than {XLSX_MAX_ROWS:,} rows do not fit in an Excel sheet: "
                "write .csv or .parquet instead"
            )
        for col, value in enumerate(values):
            if value is None:
                continue
            if isinstance(value, bool):
                # text, as in CSV and as verified_before: what docs/results.md promises
                sheet.write_string(count, col, "true" if value else "false")
                continue
            if isinstance(value, int):
                sheet.write_number(count, col, value)
                text = str(value)
            else:
                # A string cell (never write(), which reads `=...` as a formula): keeps `+` and
                # leading zeros, never runs, and shows the value exactly, with no quote added.
                text = value
                sheet.write_string(count, col, text)
            if len(text) > widths[col]:
                widths[col] = min(len(text) + 1, _WIDTH_MAX)
    # constant_memory streams the rows, but column widths and the filter are written at close
    for col, width in enumerate(widths):
        sheet.set_column(col, col, width)
    sheet.autofilter(0, 0, max(count, 1), len(columns) - 1)
    workbook.close()
    return count
