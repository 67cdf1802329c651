"""The reader: every format to InputRow, header checks, and errors a support person can act on."""

from __future__ import annotations

import collections
import csv
import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import polars as pl
import pytest
import xlsxwriter
from hypothesis import given, settings
from hypothesis import strategies as st

from batchphone.errors import InputError
from batchphone.files.reader import (
    _HASH_PARTS,
    InputSource,
    InputSpec,
    _repeated_ids,
    open_input,
    open_table,
)
from batchphone.models import InputRow


def _open(path: Path, **columns: str) -> InputSource:
    return open_input(InputSpec(path, **columns))


def _rows(source: InputSource, **kwargs: int) -> list[InputRow]:
    return [row for batch in source.batches(**kwargs) for row in batch]


def _error(path: Path, **columns: str) -> InputError:
    with pytest.raises(InputError) as info:
        _open(path, **columns)
    assert "\n" not in str(info.value) and "Traceback" not in str(info.value)
    return info.value


def _write(tmp_path: Path, name: str, content: bytes | str) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def _xlsx(path: Path, rows: list[list[object]]) -> Path:
    workbook = xlsxwriter.Workbook(path)
    sheet = workbook.add_worksheet()
    for number, row in enumerate(rows):
        for col, value in enumerate(row):
            if isinstance(value, str):
                sheet.write_string(number, col, value)
            elif value is not None:
                sheet.write(number, col, value)
    workbook.close()
    return path


def test_csv_keeps_text_exactly_and_strips_only_login_whitespace(tmp_path: Path) -> None:
    content = (
        b"\xef\xbb\xbfloginId,phone,region,verified\r\n"
        b'"a,b","+44 7911\r\n123456",GB,yes\r\n'
        b"  c\t ,007,,\r\n"
        b'"  ","",,\r\n'
        b"d,+1 415 555 0123,US,false\r\n"
    )
    source = _open(_write(tmp_path, "users.csv", content))
    assert (source.format, source.columns) == ("csv", ("loginId", "phone", "region", "verified"))
    assert source.has_region and source.has_verified
    assert _rows(source) == [
        InputRow(1, "a,b", "+44 7911\r\n123456", "yes", "GB"),
        InputRow(2, "c", "007", None, None),
        InputRow(3, None, None, None, None),
        InputRow(4, "d", "+1 415 555 0123", "false", "US"),
    ]


def test_blank_lines_are_not_rows_and_numbering_stays_contiguous(tmp_path: Path) -> None:
    path = _write(tmp_path, "users.csv", 'loginId,phone,name\n\na,1,\n,,\n"","",""\nb,2,x\n\n')
    source = _open(path)
    assert [(row.row, row.login_id) for row in _rows(source)] == [(1, "a"), (2, "b")]
    assert source.count_rows() == 2


def test_a_row_with_only_other_cells_is_still_a_row(tmp_path: Path) -> None:
    source = _open(_write(tmp_path, "users.csv", "loginId,phone,name\n,,Bob\n"))
    assert _rows(source) == [InputRow(1, None, None)]


def test_tsv_and_custom_columns(tmp_path: Path) -> None:
    path = _write(tmp_path, "users.TSV", "user\tmobile\tverified\na\t+14155550123\ttrue\n")
    source = _open(path, login_id_column="user", phone_column="mobile")
    assert source.format == "tsv" and not source.has_region
    assert _rows(source) == [InputRow(1, "a", "+14155550123", "true", None)]


def test_batches_stream_in_order_with_limit(tmp_path: Path) -> None:
    lines = "".join(f"user{i},+1415555{i:04d}\n" for i in range(1, 1001))
    source = _open(_write(tmp_path, "users.csv", "loginId,phone\n" + lines))
    batches = list(source.batches(batch_size=300))
    assert all(len(batch) <= 300 for batch in batches)
    rows = [row for batch in batches for row in batch]
    assert [row.row for row in rows] == list(range(1, 1001))
    assert rows[-1] == InputRow(1000, "user1000", "+14155551000")
    limited = _rows(source, batch_size=7, limit=10)
    assert [row.login_id for row in limited] == [f"user{i}" for i in range(1, 11)]
    assert source.count_rows() == 1000 and source.count_rows(limit=10) == 10


def test_repeated_login_ids_after_stripping_and_within_limit(tmp_path: Path) -> None:
    content = "loginId,phone\na,1\nb,2\n a ,3\nc,4\n,5\n,6\nb,7\n"
    source = _open(_write(tmp_path, "users.csv", content))
    assert source.repeated_login_ids() == frozenset({"a", "b"})
    assert source.repeated_login_ids(limit=3) == frozenset({"a"})
    assert source.repeated_login_ids(limit=2) == frozenset()


def test_repeated_login_ids_across_batches_and_hash_ranges(tmp_path: Path) -> None:
    """Repeats far apart (other batches of 50,000), in every range the hashes are kept in."""
    ids = [f"user{i}" for i in range(120_000)] + [f"user{i}" for i in range(0, 120_000, 97)]
    lines = "".join(f"{login},+1\n" for login in ids)
    source = _open(_write(tmp_path, "users.csv", "loginId,phone\n" + lines))
    expected = frozenset(f"user{i}" for i in range(0, 120_000, 97))
    assert source.repeated_login_ids() == expected
    ranges = {(hash(login) + 2**63) * _HASH_PARTS >> 64 for login in expected}
    assert len(ranges) > 600  # 1,237 ids in 1,024 ranges: about 720 of them
    assert source.count_rows() == len(ids)


_LOGIN_CELLS = st.sampled_from(["a", "b", "c", "a ", " b", "\ta\n", "", " ", "\x0b", "é", "a\rb"])


def _counted_twice(logins: list[str], limit: int | None) -> frozenset[str]:
    """What ``repeated_login_ids`` promises, the plain way: ids stripped of ASCII whitespace
    (only whitespace: no id), counted over the first ``limit`` rows."""
    stripped = [login.strip(" \t\r\n\x0b\x0c") for login in logins[:limit]]
    counted = collections.Counter(login for login in stripped if login)
    return frozenset(login for login, n in counted.items() if n > 1)


@settings(max_examples=60, deadline=None)
@given(
    logins=st.lists(_LOGIN_CELLS | st.text(max_size=3), min_size=1, max_size=60),
    limit=st.none() | st.integers(min_value=1, max_value=70),
)
def test_repeated_login_ids_are_the_ids_counted_twice(logins: list[str], limit: int | None) -> None:
    logins = [login.replace("\x00", "") for login in logins]  # a NUL byte: not a text file
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "users.csv"
        with path.open("w", encoding="utf-8", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["loginId", "phone"])
            writer.writerows([login, "+1"] for login in logins)  # no row is blank
        source = _open(path)
        assert source.repeated_login_ids(limit) == _counted_twice(logins, limit)
        assert source.count_rows(limit) == len(logins[:limit])


@settings(max_examples=200, deadline=None)
@given(
    batches=st.lists(st.lists(st.none() | st.text(alphabet="abc", max_size=4), max_size=8)),
    key=st.sampled_from([hash, len, lambda login: 0, lambda login: -(2**63) + len(login)]),
    parts=st.sampled_from([1, 2, 3, 64, _HASH_PARTS]),
)
def test_repeated_ids_are_exact_when_every_key_collides(
    batches: list[list[str | None]], key: Callable[[str], int], parts: int
) -> None:
    """Keys that many ids share (forced collisions, ranges of one value) cost candidates,
    never a wrong answer."""
    counted = collections.Counter(login for batch in batches for login in batch if login)
    expected = frozenset(login for login, n in counted.items() if n > 1)
    repeated, count = _repeated_ids(lambda: iter(batches), key=key, parts=parts)
    assert repeated == expected
    assert count == sum(map(len, batches))


def test_content_hash_is_the_sha256_of_the_bytes(tmp_path: Path) -> None:
    for name, content in [("a.csv", b"loginId,phone\na,1\n"), ("a.parquet", None)]:
        path = tmp_path / name
        if content is None:
            pl.DataFrame({"loginId": ["a"], "phone": ["1"]}).write_parquet(path)
        else:
            path.write_bytes(content)
        assert _open(path).content_hash() == hashlib.sha256(path.read_bytes()).hexdigest()


def test_parquet_numbers_become_text_and_numeric_phones_are_flagged(tmp_path: Path) -> None:
    path = tmp_path / "users.parquet"
    pl.DataFrame(
        {
            "loginId": [1.0, 2.5, None, 7.0],
            "phone": [447911123456, None, 1, 2],
            "verified": [True, False, None, True],
        }
    ).write_parquet(path)
    assert _rows(_open(path)) == [
        InputRow(1, "1", "447911123456", "true", None, phone_was_number=True),
        InputRow(2, "2.5", None, "false", None, phone_was_number=False),
        InputRow(3, None, "1", None, None, phone_was_number=True),
        InputRow(4, "7", "2", "true", None, phone_was_number=True),
    ]
    text = tmp_path / "text.parquet"
    pl.DataFrame({"loginId": ["a"], "phone": ["+447911123456"]}).write_parquet(text)
    assert _rows(_open(text)) == [InputRow(1, "a", "+447911123456")]


def test_jsonl_numeric_phones_are_flagged_per_row(tmp_path: Path) -> None:
    lines = [
        {"loginId": 1, "phone": 447911123456, "verified": True},
        {"loginId": " b ", "phone": "+447911123456", "region": "GB"},
        {},
        {"loginId": 2.0, "phone": "447911123456"},
        {"loginId": "c", "phone": None},
    ]
    text = "\n".join(json.dumps(line) for line in lines) + "\n\n"
    source = _open(_write(tmp_path, "users.ndjson", text))
    assert source.format == "jsonl" and source.has_region
    assert _rows(source) == [
        InputRow(1, "1", "447911123456", "true", None, phone_was_number=True),
        InputRow(2, "b", "+447911123456", None, "GB"),
        InputRow(3, "2", "447911123456", None, None),
        InputRow(4, "c", None, None, None),
    ]


def test_xlsx_numeric_phones_are_flagged_per_row(tmp_path: Path) -> None:
    path = _xlsx(
        tmp_path / "users.xlsx",
        [
            ["loginId", "phone", "verified"],
            [123.0, "+447911123456", True],
            [None, None, None],
            [2.5, 447911123456, "yes"],
            ["x", "0791112345", None],
            ["y", True, None],
        ],
    )
    source = _open(path)
    assert source.count_rows() == 4
    assert _rows(source) == [
        InputRow(1, "123", "+447911123456", "true", None),
        InputRow(2, "2.5", "447911123456", "yes", None, phone_was_number=True),
        InputRow(3, "x", "0791112345", None, None),
        InputRow(4, "y", "true", None, None),
    ]


def test_a_10_mb_cell_is_just_a_long_cell(tmp_path: Path) -> None:
    path = _write(tmp_path, "users.csv", "loginId,phone\nu1," + "9" * 10_000_000 + "\nu2,+1\n")
    rows = _rows(_open(path))
    assert [(row.login_id, len(row.phone_raw or "")) for row in rows] == [("u1", 10**7), ("u2", 2)]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "users.xls",
            b"x",
            "unsupported file type '.xls': use .csv, .tsv, .parquet, .xlsx, .jsonl, .ndjson",
        ),
        ("users", b"x", "unsupported file type '(none)'"),
        ("users.csv", b"", "is empty"),
        ("users.csv", b"\r\n\r\n", "is empty (no header row)"),
        ("users.csv", b"loginId,phone\r\n", "has a header row but no data rows"),
        ("users.csv", b"loginId,phone\r\n,\r\n\r\n", "has a header row but no data rows"),
        ("users.jsonl", b"\n\n", "is empty (no JSON lines)"),
        (
            "users.csv",
            b"loginId,phone_number\na,1\n",
            'no column "phone" (columns found: loginId, phone_number; '
            'did you mean "phone_number"? use phone_column=...)',
        ),
        (
            "users.csv",
            b"LoginID,phone\na,1\n",
            'no column "loginId" (columns found: LoginID, phone; did you mean "LoginID"? '
            "use login_id_column=...)",
        ),
        (
            "users.csv",
            b"email,mobile\na,1\n",
            'no column "loginId" (columns found: email, mobile; use',
        ),
        ("users.csv", b"loginId,phone,phone\na,1,2\n", 'column "phone" appears more than once'),
        (
            "users.jsonl",
            b'{"loginId": 1, "phone": 1, "phone": 2}\n',
            '"phone" appears more than once',
        ),
        (
            "users.csv",
            b"loginId|phone\na|1\n",
            'has a single column "loginId|phone": its values seem to be separated by "|", '
            "not by \",\" (use delimiter='|')",
        ),
        ("users.tsv", b"loginId|phone\na|1\n", 'separated by "|", not by tab'),
        ("users.csv", b"loginId,phone\r\na,\xff1\r\n", "is not UTF-8 (line 2, byte offset 17)"),
        ("users.csv", b"\xff\xfel\x00o\x00", "is UTF-16 text: re-save it as UTF-8"),
        ("users.csv", b"PK\x03\x04\x14\x00garbage", "is a ZIP archive or Excel workbook"),
        ("users.csv", b"PAR1\x15\x04garbage", "is a Parquet file, not text"),
        (
            "users.csv",
            b"loginId,phone\r\na,\x00\x01\x02",
            "has a NUL byte (line 2, byte offset 17)",
        ),
        ("users.jsonl", b"\n[1, 2]\n", ": line 2: is not a JSON object"),
        ("users.jsonl", b'{"loginId": 1,\n', ": line 1: is not valid JSON"),
        ("users.parquet", b"PAR1garbage", "cannot be read as PARQUET: damaged or truncated?"),
        ("users.xlsx", b"PK\x03\x04" + b"x" * 64, "cannot be read as XLSX: damaged or truncated?"),
    ],
)
def test_header_and_file_errors(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = _write(tmp_path, name, content)
    error = _error(path)
    assert str(error).startswith(f"{path}: ")
    assert message in str(error)
    assert error.path == str(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    assert str(_error(tmp_path / "nope.csv")) == f"{tmp_path / 'nope.csv'}: no such file"
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    assert "is a directory" in str(_error(folder))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "users.csv", "loginId,phone\na,1\n")
    path.chmod(0)
    assert "cannot be read (Permission denied)" in str(_error(path))


def test_a_bad_byte_deep_in_the_file_is_found_before_any_row(tmp_path: Path) -> None:
    lines = b"".join(b"user%d,+1415555%04d\n" % (i, i % 10000) for i in range(60_000))
    path = _write(tmp_path, "users.csv", b"loginId,phone\n" + lines + b"bad,\xc3(\n")
    error = _error(path)
    assert f"is not UTF-8 (line 60002, byte offset {14 + len(lines) + 4})" in str(error)


def test_a_character_split_across_chunks_is_fine(tmp_path: Path) -> None:
    head = b"loginId,phone\n" + b"x" * ((1 << 20) - 15) + b","  # 'é' straddles the 1 MiB mark
    path = _write(tmp_path, "users.csv", head + "é\n".encode())
    assert _rows(_open(path))[0].phone_raw == "é"


def test_a_ragged_row_mid_stream_names_its_row(tmp_path: Path) -> None:
    lines = "".join(f"user{i},+1\n" for i in range(1, 50_001))
    path = _write(tmp_path, "users.csv", "loginId,phone\n" + lines)
    source = _open(path)
    # The file goes bad after the open-time checks (how far polars reads ahead at open varies).
    path.write_text("loginId,phone\n" + lines + "late,+1,extra\n", encoding="utf-8")
    with pytest.raises(InputError) as info:
        _rows(source, batch_size=1000)
    assert info.value.row == 50_001
    assert str(info.value) == (
        f"{path}: line 50002: has 3 fields but the header has 2 (an unquoted delimiter in a cell?)"
    )


def test_a_ragged_row_in_a_result_file_is_named_as_in_an_input_file(tmp_path: Path) -> None:
    """``Table`` (undo's reader) reads with polars; where polars stops, the one walk over the
    CSV records names the row and line, as it does for an input file."""
    lines = "".join(f"user{i},+1\n" for i in range(1, 200))
    path = _write(tmp_path, "results.csv", "loginId,phone\n\n" + lines + "late,+1,extra\n")
    table = open_table(path)
    with pytest.raises(InputError) as info:
        list(table.rows(["loginId", "phone"], batch_size=50))
    assert info.value.row == 200  # the blank line is no record
    assert str(info.value) == (
        f"{path}: line 202: has 3 fields but the header has 2 (an unquoted delimiter in a cell?)"
    )


def test_a_bad_json_line_mid_stream_names_its_row(tmp_path: Path) -> None:
    lines = "".join(json.dumps({"loginId": f"u{i}", "phone": "+1"}) + "\n" for i in range(150))
    path = _write(tmp_path, "users.jsonl", lines + '{"loginId": "late", "phone": \n')
    with pytest.raises(InputError) as info:  # polars parses a small file whole, at open
        _rows(_open(path), batch_size=50)
    assert info.value.row == 151
    assert str(info.value) == f"{path}: line 151: is not valid JSON (Expecting value)"


def test_truncated_parquet(tmp_path: Path) -> None:
    whole = tmp_path / "whole.parquet"
    pl.DataFrame({"loginId": ["a"] * 100, "phone": ["+1"] * 100}).write_parquet(whole)
    cut = _write(tmp_path, "users.parquet", whole.read_bytes()[:-40])
    assert "cannot be read as PARQUET: damaged or truncated?" in str(_error(cut))


def test_parquet_header_only_and_nested_columns(tmp_path: Path) -> None:
    empty = tmp_path / "empty.parquet"
    pl.DataFrame(schema={"loginId": pl.String, "phone": pl.String}).write_parquet(empty)
    assert str(_error(empty)).endswith("has columns but no data rows")
    nested = tmp_path / "nested.parquet"
    pl.DataFrame({"loginId": ["a"], "phone": [[1]]}).write_parquet(nested)
    assert 'column "phone" holds List(Int64) values' in str(_error(nested))


def test_xlsx_header_checks(tmp_path: Path) -> None:
    empty = _xlsx(tmp_path / "empty.xlsx", [])
    assert "is empty" in str(_error(empty))
    header = _xlsx(tmp_path / "header.xlsx", [["loginId", "phone"]])
    assert str(_error(header)).endswith("has a header row but no data rows")
    doubled = _xlsx(tmp_path / "doubled.xlsx", [["loginId", "phone", "phone"], ["a", "+1", "+2"]])
    assert 'column "phone" appears more than once' in str(_error(doubled))
    missing = _xlsx(tmp_path / "missing.xlsx", [["loginId", "Phone Number"], ["a", "+1"]])
    assert 'did you mean "Phone Number"? use phone_column=...' in str(_error(missing))


def test_an_unused_doubled_column_is_harmless(tmp_path: Path) -> None:
    path = _write(tmp_path, "users.csv", "loginId,phone,note,note\na,+1,x,y\n")
    assert _rows(_open(path)) == [InputRow(1, "a", "+1")]


def test_a_file_damaged_after_open_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "users.parquet"
    frame = pl.DataFrame({"loginId": [f"u{i}" for i in range(1000)], "phone": ["+1"] * 1000})
    frame.write_parquet(path)
    source = _open(path)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(InputError) as info:
        _rows(source)
    assert str(info.value).startswith(f"{path}: cannot be read as PARQUET (")
    assert "\n" not in str(info.value)


def _workbook(path: Path, sheets: dict[str, list[list[str]]]) -> Path:
    workbook = xlsxwriter.Workbook(path)
    for name, rows in sheets.items():
        sheet = workbook.add_worksheet(name)
        for number, row in enumerate(rows):
            for col, value in enumerate(row):
                sheet.write_string(number, col, value)
    workbook.close()
    return path


def test_xlsx_sheet_by_name_or_number(tmp_path: Path) -> None:
    path = _workbook(
        tmp_path / "fix.xlsx",
        {
            "Notes": [["who", "what"], ["ann", "fix these"]],
            "Users": [["loginId", "phone"], ["a", "+14155550100"]],
        },
    )
    by_name = open_input(InputSpec(path=path, sheet="Users"))
    by_number = open_input(InputSpec(path=path, sheet="2"))
    assert _rows(by_name) == _rows(by_number) == [InputRow(1, "a", "+14155550100")]


def test_xlsx_columns_on_another_sheet_name_the_sheets_in_one_line(tmp_path: Path) -> None:
    path = _workbook(
        tmp_path / "fix.xlsx",
        {
            "Notes": [["who", "what"], ["ann", "fix these"]],
            "Users": [["loginId", "phone"], ["a", "+14155550100"]],
        },
    )
    message = str(_error(path))
    assert message == (
        f'{path}: no column "loginId" on sheet "Notes" (columns found: who, what; '
        'use login_id_column=...; sheets in the workbook: "Notes", "Users": '
        "pick one with sheet=NAME|NUMBER)"
    )
    assert "\n" not in message
    with pytest.raises(InputError) as missing:
        open_input(InputSpec(path=path, sheet="Sheet9"))
    assert str(missing.value) == (
        f'{path}: has no sheet "Sheet9" (sheets in the workbook: "Notes", "Users"; '
        "sheet=... takes a name or a number from 1)"
    )
    csv_path = _write(tmp_path, "users.csv", "loginId,phone\na,+1\n")
    with pytest.raises(InputError, match=r"sheet=\.\.\. applies to Excel workbooks"):
        open_input(InputSpec(path=csv_path, sheet="1"))


@pytest.mark.parametrize("ext", ["csv", "tsv", "parquet", "jsonl", "xlsx"])
def test_a_table_reads_named_columns_as_text_in_every_format(tmp_path: Path, ext: str) -> None:
    """``open_table`` (undo's way in): the same checks and format dispatch as an input file."""
    frame = pl.DataFrame({"row": [1, 2, 3], "a": ["x", "=y", None], "b": ["1", "2", "3"]})
    path = tmp_path / f"t.{ext}"
    if ext in ("csv", "tsv"):
        frame.write_csv(path, separator="\t" if ext == "tsv" else ",")
    elif ext == "parquet":
        frame.write_parquet(path)
    elif ext == "jsonl":
        frame.write_ndjson(path)
    else:
        frame.write_excel(path)
    table = open_table(path)
    assert table.columns == ("row", "a", "b") and table.count_rows() == 3
    assert table.count_rows(limit=2) == 2
    rows = [row for batch in table.rows(["b", "a", "gone", "row"], batch_size=2) for row in batch]
    assert rows == [("1", "x", None, "1"), ("2", "=y", None, "2"), ("3", None, None, "3")]
    upper = table.rows(["a"], batch_size=10, limit=2, cells=lambda cell: cell.str.to_uppercase())
    assert list(upper) == [[("X",), ("=Y",)]]


def test_a_table_gets_the_input_checks(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes("a,b\n1,2\n".encode("utf-16"))
    with pytest.raises(InputError, match="is UTF-16 text"):
        open_table(path)
    with pytest.raises(InputError, match=r"unsupported file type '\.txt'"):
        open_table(tmp_path / "t.txt")


@pytest.mark.parametrize("ext", ["csv", "tsv"])
@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_the_header_tells_the_delimiter_whatever_the_extension(
    tmp_path: Path, ext: str, delimiter: str
) -> None:
    """Excel in much of Europe saves "CSV" with ``;``: the header's column names decide."""
    d = delimiter
    content = (
        f'\ufeff"loginId"{d}"phone"{d}note\r\n'
        f'"a{d}b"{d}+14155550100{d}"x; y, z"\r\n'
        f'c{d}"+44 7911\r\n123456"{d}\r\n'
    )
    source = _open(_write(tmp_path, f"users.{ext}", content))
    assert source.delimiter == d
    rows = _rows(source)
    assert rows == [InputRow(1, f"a{d}b", "+14155550100"), InputRow(2, "c", "+44 7911\r\n123456")]
    assert source.repeated_login_ids() == frozenset() and source.count_rows() == 2


def test_a_misspelled_column_in_a_semicolon_file_lists_the_real_columns(tmp_path: Path) -> None:
    path = _write(tmp_path, "users.csv", "email;mobile\na;1\n")
    assert 'no column "loginId" (columns found: email, mobile; use' in str(_error(path))


def test_delimiter_decides_where_the_header_does_not(tmp_path: Path) -> None:
    # split by ";" and by tab alike, the header holds both columns
    path = _write(tmp_path, "users.csv", "loginId;phone;x\ty\tloginId\tphone\na;+1;z\tq\tb\t+2\n")
    message = str(_error(path))
    assert message == (
        f'{path}: its header splits into the columns by ";" and tab: use delimiter=...'
    )
    assert _rows(open_input(InputSpec(path, delimiter=";"))) == [InputRow(1, "a", "+1")]
    piped = _write(tmp_path, "piped.csv", "loginId|phone\na|+1\n")
    assert _rows(open_input(InputSpec(piped, delimiter="|"))) == [InputRow(1, "a", "+1")]
    refused = r"delimiter=\.\.\. applies to CSV and TSV files, not to JSONL"
    with pytest.raises(InputError, match=refused):
        open_input(InputSpec(_write(tmp_path, "u.jsonl", "{}\n"), delimiter=";"))


def test_rows_carry_the_line_a_text_editor_shows(tmp_path: Path) -> None:
    content = (
        '\ufeff"login\nId",phone\r\n'  # a header over two lines
        'a,"+1 415\n555 0100"\r\n'  # line 3, a record over two lines
        "\r\n"  # a blank line: no row, but a line
        ",\r\n"  # a row of empty cells: the same
        "b,+2\r\n"  # line 7
    )
    source = _open(_write(tmp_path, "users.csv", content), login_id_column="login\nId")
    assert [(row.row, row.line) for row in _rows(source)] == [(1, 3), (2, 7)]
    jsonl = _write(
        tmp_path, "users.jsonl", '{"loginId":"a","phone":"+1"}\n\n  \n{}\n{"loginId":"b"}\n'
    )
    assert [(row.row, row.line) for row in _rows(_open(jsonl))] == [(1, 1), (2, 5)]
    parquet = tmp_path / "users.parquet"
    pl.DataFrame({"loginId": ["a", None, "b"], "phone": ["+1", None, "+2"]}).write_parquet(parquet)
    assert [(row.row, row.line) for row in _rows(_open(parquet))] == [(1, 2), (2, 4)]


def test_rows_carry_the_sheets_own_row_number(tmp_path: Path) -> None:
    """A header below a title gap, and blank rows between the data: Excel's row numbers."""
    path = tmp_path / "fix.xlsx"
    workbook = xlsxwriter.Workbook(path)
    sheet = workbook.add_worksheet("Users")
    for row, col, value in [(2, 1, "loginId"), (2, 2, "phone"), (3, 1, "a"), (3, 2, "+1")]:
        sheet.write_string(row, col, value)
    sheet.write_string(6, 1, "b")  # row 7 in Excel; rows 5 and 6 are blank
    sheet.write_string(6, 2, "+2")
    workbook.close()
    rows = _rows(open_input(InputSpec(path, sheet="users")))
    assert [(row.row, row.line, row.login_id) for row in rows] == [(1, 4, "a"), (2, 7, "b")]
    many = tmp_path / "low.xlsx"
    workbook = xlsxwriter.Workbook(many)
    sheet = workbook.add_worksheet()
    sheet.write_row(199, 0, ["loginId", "phone"])  # below the first probe of the header's row
    sheet.write_row(200, 0, ["a", "+1"])
    workbook.close()
    assert [(row.row, row.line) for row in _rows(_open(many))] == [(1, 201)]


def test_sheet_names_match_in_any_case_but_only_one(tmp_path: Path) -> None:
    path = _workbook(
        tmp_path / "fix.xlsx",
        {"Notes": [["who"], ["ann"]], "Users": [["loginId", "phone"], ["a", "+14155550100"]]},
    )
    assert _rows(open_input(InputSpec(path=path, sheet="users"))) == [
        InputRow(1, "a", "+14155550100")
    ]
    # Excel refuses two such names; other tools write them: rename a sheet inside the file
    made = _workbook(
        tmp_path / "made.xlsx",
        {
            "Users": [["loginId", "phone"], ["a", "+1"]],
            "OTHER": [["loginId", "phone"], ["b", "+2"]],
        },
    )
    twins = tmp_path / "twins.xlsx"
    with zipfile.ZipFile(made) as source, zipfile.ZipFile(twins, "w") as target:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "xl/workbook.xml":
                data = data.replace(b'name="OTHER"', b'name="USERS"')
            target.writestr(item, data)
    assert _rows(open_input(InputSpec(path=twins, sheet="USERS"))) == [InputRow(1, "b", "+2")]
    with pytest.raises(InputError) as info:
        open_input(InputSpec(path=twins, sheet="users"))
    assert str(info.value) == (
        f'{twins}: has sheets "Users", "USERS", which differ only by case: sheet="users" '
        "matches each (give the exact name or the sheet's number from 1)"
    )


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "users.xlsx",
            b"\xef\xbb\xbfloginId,phone\r\na,+1\r\n",
            "is text (CSV or TSV?), not an Excel workbook: rename it to .csv (.tsv: tab separated)",
        ),
        ("users.xlsx", b'{"loginId": "a"}\n', "not an Excel workbook: rename it to .jsonl"),
        ("users.xlsx", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(64), "(.xls), not an Excel"),
        ("users.xlsx", b"PAR1garbage", "is a Parquet file, not an Excel workbook"),
        ("users.xlsx", "loginId\n".encode("utf-16"), "is UTF-16 text, not an Excel workbook"),
        ("users.xlsx", b"\x00\x01\x02\x03", "is not an Excel workbook: damaged, or another kind"),
        ("users.parquet", b"PK\x03\x04garbage", "is a ZIP archive or Excel workbook, not a Parq"),
        ("users.parquet", b"loginId,phone\n", "is text (CSV, TSV or JSONL?), not a Parquet file"),
    ],
)
def test_a_file_named_for_another_format_says_what_it_is(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    error = _error(_write(tmp_path, name, content))
    assert str(error) == f"{tmp_path / name}: {message}" or message in str(error)
    assert "EOCD" not in str(error) and "damaged or truncated" not in str(error)


def test_a_real_workbook_named_csv_says_so(tmp_path: Path) -> None:
    workbook = _workbook(tmp_path / "book.xlsx", {"Users": [["loginId", "phone"], ["a", "+1"]]})
    path = _write(tmp_path, "users.csv", workbook.read_bytes())
    assert str(_error(path)) == (
        f"{path}: is a ZIP archive or Excel workbook, not text: rename it to .xlsx if a workbook"
    )


def test_a_title_above_the_header_is_named_with_the_row_of_the_header(tmp_path: Path) -> None:
    """A sheet people make often has a title (and a blank row) above the header: the error
    names the row the header is on, as Excel numbers it, instead of the title as columns."""
    path = _xlsx(
        tmp_path / "fix.xlsx",
        [
            ["Phone fixes requested by support"],
            [None],
            ["loginId", "phone"],
            ["a@example.com", "+14155550100"],
        ],
    )
    assert str(_error(path)) == (
        f'{path}: the header row of sheet "Sheet1" is its row 3 (it has "loginId" and "phone"), '
        "not row 1: delete the rows above the header (the first filled row is the header)"
    )
    # a sheet whose rows never hold both names keeps the error that lists the columns found
    other = _xlsx(tmp_path / "other.xlsx", [["Title"], ["loginId", "mobile"], ["a", "+1"]])
    assert 'no column "loginId" on sheet "Sheet1" (columns found: Title' in str(_error(other))
