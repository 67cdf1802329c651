"""Journal records -> typed result rows (``ResultCells``), the rows the writer takes.

A journal record is a JSON object as ``RowResult.to_record`` wrote it, its empty cells left
out, ``verified_before`` and ``verified`` booleans (the result file holds them as text). Records
come in a handful of shapes (which cells are empty, which hold a boolean), nearly all of them
with every cell of its column's type already: a shape is checked once and remembered with the
cells it must convert, so the common record costs two C-level ``map`` calls and a dict lookup,
and a record with a before-image one conversion more.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from batchphone.cells import parse_flag
from batchphone.errors import OutputError
from batchphone.models import CELL_TYPES, ResultCells, flag_text

__all__ = ["result_rows"]

_FIELDS = ResultCells._fields
_KINDS = tuple(CELL_TYPES[name] for name in _FIELDS)
#: The cells every record has: its row number and its status.
_ROW, _STATUS = _FIELDS.index("row"), _FIELDS.index("status")
_make = ResultCells._make
#: The cells of a shape that need converting (indexes into ``_FIELDS``).
_Fixes = tuple[int, ...]


def result_rows(records: Iterable[Mapping[str, Any]]) -> Iterator[ResultCells]:
    """Each record as the result row it stands for, in the same order.

    Keys that are not result columns are ignored (``ts``); a missing one is an empty cell. A
    cell of another type is converted to its column's (``"3"`` -> 3, ``"true"`` -> True, a
    boolean -> ``"true"`` in a text column, an object -> its JSON). ``OutputError`` names a
    record without a row number, or a row without a status or with a cell that cannot be
    converted.
    """
    fixes: dict[tuple[type, ...], _Fixes] = {}
    for number, record in enumerate(records, start=1):
        cells = _make(map(record.get, _FIELDS))
        shape = tuple(map(type, cells))
        fix = fixes.get(shape)
        if fix is None:
            fix = fixes[shape] = _fixes(shape)
        yield _converted(cells, fix, number) if fix else cells


def _fixes(shape: tuple[type, ...]) -> _Fixes:
    """The cells of ``shape`` that are neither empty nor of their column's type (the row
    number and the status are never empty)."""
    return tuple(
        index
        for index, (kind, wanted) in enumerate(zip(shape, _KINDS, strict=True))
        if kind is not wanted and (kind is not type(None) or index in (_ROW, _STATUS))
    )


def _converted(cells: ResultCells, fix: _Fixes, number: int) -> ResultCells:
    values = list(cells)
    try:
        row = values[_ROW] = _to_int(values[_ROW])
    except (TypeError, ValueError):
        row = None
    if row is None:
        raise OutputError(f"result record {number} has no row number")
    try:
        for index in fix:
            values[index] = _CONVERTERS[index](values[index])
    except (TypeError, ValueError) as exc:
        raise OutputError(f"result row {row} has a value of the wrong type ({exc})") from None
    if values[_STATUS] is None:
        raise OutputError(f"result row {row} has no status")
    return _make(values)


def _to_int(value: Any) -> int | None:
    if value is None or value == "":
        return None
    return int(value)


def _to_bool(value: Any) -> bool | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return parse_flag(value)  # a word outside the vocabulary: no value, not false
    return bool(value)


def _to_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return str(value)  # a ``Status`` or a ``Reason``: its text
    if isinstance(value, bool):
        return flag_text(value)
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


_CONVERTERS: tuple[Callable[[Any], Any], ...] = tuple(
    {int: _to_int, bool: _to_bool}.get(kind, _to_text) for kind in _KINDS
)
