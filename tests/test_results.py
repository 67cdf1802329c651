"""Journal records -> typed result rows: what the writer gets from a journal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from batchphone.errors import OutputError
from batchphone.files.journal import Journal, iter_records, journal_path
from batchphone.files.results import result_rows
from batchphone.models import Reason, ResultCells, RowResult, Status
from tests.test_journal import IDENTITY


def test_a_journaled_result_reads_back_as_its_own_cells(tmp_path: Path) -> None:
    """The journal path and the direct path (``RowResult.cells``) give the writer one row."""
    results = [
        RowResult(
            row=1,
            login_id="ada@example.com",
            phone_input="+44 20 7946 0958",
            phone="+442079460958",
            status=Status.UPDATED,
            http_status=200,
            attempts=1,
            user_id="U1",
            verified_phone=True,
            user_json='{"userId":"U1"}',
            finished_at="2026-12-06T04:00:00Z",
            extra={"phone_before": "+14155550100", "verified_before": False, "verified": True},
            line=2,
        ),
        RowResult(2, "bob@example.com", "x", None, Status.INVALID, Reason.INVALID_NUMBER),
    ]
    out = tmp_path / "r.csv"
    journal = Journal.open(out, IDENTITY)
    for result in results:
        journal.append(result, ts=1.0, urgent=True)
    journal.close()
    rows = list(result_rows(iter_records(journal_path(out))))
    assert rows == [result.cells() for result in results]
    assert (rows[0].verified_before, rows[0].verified, rows[0].line) == ("false", "true", 2)
    assert rows[1].attempts == 0 and rows[1].verified_before is None


def test_loose_types_are_converted_to_their_columns() -> None:
    records: list[dict[str, Any]] = [
        {
            "row": "1",
            "attempts": "3",
            "http_status": "",
            "verified_phone": "true",
            "status": Status.UPDATED,
            "user": {"userId": "U1"},
            "loginId": 42,
            "ts": 1.0,  # not a result column
        },
        {"row": 2, "status": "valid", "verified_phone": "maybe", "verified_before": True},
    ]
    first, second = result_rows(records)
    assert (first.row, first.attempts, first.http_status) == (1, 3, None)
    assert first.verified_phone is True
    assert (first.status, first.user, first.loginId) == ("updated", '{"userId":"U1"}', "42")
    assert type(first.status) is str
    # a word outside the vocabulary is no value, not false
    assert (second.verified_phone, second.verified_before, second.phone) == (None, "true", None)


def test_cells_of_the_right_type_are_passed_as_they_are() -> None:
    record = ResultCells(1, 2, "a", "b", "c", "updated", attempts=1)._asdict()
    rows = list(result_rows([record, {**record, "row": 2}]))
    assert rows == [
        ResultCells(1, 2, "a", "b", "c", "updated", attempts=1),
        rows[0]._replace(row=2),
    ]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"status": "updated"}, "result record 2 has no row number"),
        ({"row": "first", "status": "updated"}, "result record 2 has no row number"),
        (
            {"row": 7, "status": "updated", "attempts": "many"},
            "result row 7 has a value of the wrong type",
        ),
        ({"row": 7}, "result row 7 has no status"),
    ],
)
def test_a_record_that_is_no_result_row_is_refused(record: dict[str, Any], message: str) -> None:
    rows = result_rows([{"row": 1, "status": "updated"}, record])
    assert next(rows).row == 1
    with pytest.raises(OutputError, match=message):
        next(rows)
