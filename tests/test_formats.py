"""The file types, and the spreadsheet quoting of text cells: defuse and its inverse."""

from __future__ import annotations

import re
from pathlib import Path

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from batchphone.files.formats import defuse, file_format, undefuse


def test_a_file_type_is_told_by_its_extension_in_any_case() -> None:
    assert file_format(Path("a.CSV")) == "csv"
    assert file_format(Path("a.ndjson")) == file_format(Path("a.jsonl")) == "jsonl"
    assert file_format(Path("a.xls")) is None
    assert file_format(Path("noext")) is None


def test_defuse_is_undone_by_undos_reader() -> None:
    """Every string survives defuse + undo's undefuse, and a defused cell never starts a formula."""
    alphabet = st.sampled_from(list("'=+-@\t\r0123456789 ().-/aZ|!\"&"))

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.text(alphabet, max_size=8), min_size=1, max_size=20))
    def check(values: list[str]) -> None:
        defused = [defuse(value) for value in values]
        for value, cell in zip(values, defused, strict=True):
            assert cell == value or cell == "'" + value
            starts_formula = cell[:1] in ("=", "+", "-", "@", "\t", "\r")
            assert not starts_formula or re.fullmatch(r"\+?[0-9 ().\-/]+", cell)
        back = pl.DataFrame({"c": defused}).select(undefuse(pl.col("c")))["c"].to_list()
        assert back == values

    check()
