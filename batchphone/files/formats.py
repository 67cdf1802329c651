r"""The file types batchphone reads and writes, and the spreadsheet quoting of text cells.

One table of extensions serves the reader (input files, result files read back by undo) and
the writer. One pair of rules quotes and unquotes text cells:

* ``defuse``: a CSV/TSV text cell that starts with ``=``, ``+``, ``-``, ``@``, tab or CR gets a
  leading ``'``, unless it is phone-shaped (``^\+?[0-9 ().\-/]+$``: phones stay exact). A cell
  that already starts with ``'`` before such a value gets one more, so that
* ``undefuse`` (undo's reader, on a polars column) gives back every value exactly.

XLSX results need no quote (a string cell is never a formula) and say so with the document
property ``XLSX_EXACT_TEXT``; older ones were quoted like CSV (``is_defused``).
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl

__all__ = [
    "FORMATS",
    "RISKY_FIRST",
    "XLSX_EXACT_TEXT",
    "defuse",
    "file_format",
    "holds_exact_text",
    "is_defused",
    "undefuse",
]

#: File extension (lower case) -> format, for input and result files alike.
FORMATS: dict[str, str] = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".xlsx": "xlsx"}
FORMATS |= {".jsonl": "jsonl", ".ndjson": "jsonl"}
#: The custom document property of an XLSX result whose text cells hold their values exactly.
XLSX_EXACT_TEXT = "batchphone_exact_text"

#: First characters that make a spreadsheet read a cell as a formula.
_FORMULA_FIRST = "=+-@\t\r"
#: First characters of a cell ``defuse`` may quote (a formula's, or the ``'`` of a defused one).
RISKY_FIRST = frozenset(_FORMULA_FIRST + "'")
_PHONE_SHAPE = r"\+?[0-9 ().\-/]+"
_PHONE_SHAPED = re.compile(_PHONE_SHAPE)
# The same two tests as regular expressions over a polars column (``undefuse``).
_FORMULA_START = "^[" + "".join("\\" + c if c in "\\]^-" else c for c in _FORMULA_FIRST) + "]"
_PHONE_ONLY = f"^{_PHONE_SHAPE}$"


def file_format(path: Path) -> str | None:
    """The format of ``path`` by its extension (any case), or ``None`` for another type."""
    return FORMATS.get(path.suffix.lower())


def _needs_quote(value: str) -> bool:
    """True when a spreadsheet could read ``value`` as a formula, or when it starts with the
    ``'`` of a defused one (so that the quote we add can always be told from the data's)."""
    text = value.lstrip("'")
    return bool(text) and text[0] in _FORMULA_FIRST and not _PHONE_SHAPED.fullmatch(text)


def defuse(value: str) -> str:
    """``value`` as a spreadsheet shows it and never runs: a leading ``'`` when it needs one."""
    return "'" + value if value and value[0] in RISKY_FIRST and _needs_quote(value) else value


def undefuse(cell: pl.Expr) -> pl.Expr:
    """The inverse of ``defuse`` on a polars text column: drop the ``'`` it put before a
    formula-like value.

    ``defuse`` quotes a value when, after its own leading quotes, it starts like a formula and
    is not phone-shaped; so a cell that starts with ``'`` and meets that test had one added.
    """
    import polars as pl  # undo's reader is the one user: a run never loads polars

    text = cell.str.replace(r"^'+", "")
    quoted = (
        cell.str.starts_with("'")
        & text.str.contains(_FORMULA_START)
        & ~text.str.contains(_PHONE_ONLY)
    )
    return pl.when(quoted).then(cell.str.slice(1)).otherwise(cell)


def holds_exact_text(path: Path) -> bool:
    """Whether ``path`` is an XLSX result that holds its text exactly (no ``'`` added before a
    formula-like value: the document property ``XLSX_EXACT_TEXT`` says so)."""
    try:
        with zipfile.ZipFile(path) as workbook:
            properties = workbook.read("docProps/custom.xml")
    except (KeyError, OSError, zipfile.BadZipFile):
        return False
    return f'name="{XLSX_EXACT_TEXT}"'.encode() in properties


def is_defused(path: Path, fmt: str) -> bool:
    """Whether the text cells of the result file ``path`` (of format ``fmt``) were defused:
    CSV and TSV always, XLSX written before ``XLSX_EXACT_TEXT`` marked it."""
    return fmt in ("csv", "tsv") or (fmt == "xlsx" and not holds_exact_text(path))
