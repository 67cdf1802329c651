"""Row rules: what each row becomes before any call, including duplicate groups."""

from __future__ import annotations

from batchphone.models import InputRow, Reason, RowResult, Status, UpdateRequest
from batchphone.rows.prepare import Mode, Preparer, RowRules


def _rows(*cells: tuple[str | None, str | None]) -> list[InputRow]:
    return [
        InputRow(row=i, login_id=login, phone_raw=phone)
        for i, (login, phone) in enumerate(cells, 1)
    ]


def _all(preparer: Preparer, rows: list[InputRow]) -> list[UpdateRequest | RowResult]:
    return preparer.prepare(rows) + preparer.finish()


def test_valid_row_becomes_a_request_with_fail_on_conflict() -> None:
    [item] = _all(Preparer(RowRules()), _rows(("a@x.com", "+1 415 555 0132")))
    assert item == UpdateRequest(
        row=1,
        login_id="a@x.com",
        phone="+14155550132",
        verified=None,
        fail_on_conflict=True,
        phone_input="+1 415 555 0132",
    )


def test_allow_merge_is_the_only_way_to_send_fail_on_conflict_false() -> None:
    [item] = _all(Preparer(RowRules(allow_merge=True)), _rows(("a@x.com", "+14155550132")))
    assert isinstance(item, UpdateRequest) and item.fail_on_conflict is False


def test_empty_phone_is_invalid_unless_allow_remove() -> None:
    [kept] = _all(Preparer(RowRules()), _rows(("a@x.com", None)))
    assert isinstance(kept, RowResult)
    assert (kept.status, kept.reason) == (Status.INVALID, Reason.EMPTY_PHONE)
    [removal] = _all(Preparer(RowRules(allow_remove=True)), _rows(("a@x.com", None)))
    assert isinstance(removal, UpdateRequest) and removal.phone == ""


def test_verified_cell_overrides_the_default_and_bad_cells_are_invalid() -> None:
    rows = [
        InputRow(row=1, login_id="a", phone_raw="+14155550132", verified_raw="YES"),
        InputRow(row=2, login_id="b", phone_raw="+14155550133", verified_raw="0"),
        InputRow(row=3, login_id="c", phone_raw="+14155550134", verified_raw=""),
        InputRow(row=4, login_id="d", phone_raw="+14155550135", verified_raw="maybe"),
    ]
    items = _all(Preparer(RowRules(verified=True)), rows)
    assert [getattr(i, "verified", None) for i in items[:3]] == [True, False, True]
    assert isinstance(items[3], RowResult) and items[3].reason is Reason.INVALID_VERIFIED


def test_row_region_beats_default_region() -> None:
    rows = [
        InputRow(row=1, login_id="a", phone_raw="020 7946 0018", region="GB"),
        InputRow(row=2, login_id="b", phone_raw="(415) 555-0132"),
        InputRow(row=3, login_id="c", phone_raw="(415) 555-0132", region=" "),
    ]
    items = _all(Preparer(RowRules(default_region="US")), rows)
    assert [getattr(i, "phone", None) for i in items] == ["+442079460018", "+14155550132"] * 1 + [
        "+14155550132"
    ]
    no_default = _all(Preparer(RowRules()), rows[1:2])
    assert isinstance(no_default[0], RowResult) and no_default[0].reason is Reason.MISSING_REGION


def test_exact_duplicates_are_sent_once_conflicting_ones_never() -> None:
    rows = _rows(
        ("dup@x.com", "+1 415 555 0132"),
        ("solo@x.com", "+14155550140"),
        ("dup@x.com", "+1 (415) 555-0132"),
        ("clash@x.com", "+14155550150"),
        ("clash@x.com", "+14155550151"),
        ("clash@x.com", "garbage"),
        (None, "+14155550160"),
    )
    preparer = Preparer(RowRules(), repeated_login_ids={"dup@x.com", "clash@x.com"})
    first = preparer.prepare(rows)
    # only rows of non-repeated login ids come out before the input ends
    assert [i.row for i in first] == [2, 7]
    rest = preparer.finish()
    by_row = {i.row: i for i in first + rest}
    assert sorted(by_row) == [1, 2, 3, 4, 5, 6, 7]
    assert isinstance(by_row[1], UpdateRequest)
    assert isinstance(by_row[3], RowResult) and by_row[3].reason is Reason.DUPLICATE_ROW
    assert by_row[3].status is Status.DUPLICATE
    for row in (4, 5):
        item = by_row[row]
        assert isinstance(item, RowResult)
        assert (item.status, item.reason) == (Status.INVALID, Reason.CONFLICTING_DUPLICATE)
    assert isinstance(by_row[6], RowResult) and by_row[6].reason is Reason.INVALID_NUMBER
    assert isinstance(by_row[7], RowResult) and by_row[7].reason is Reason.EMPTY_LOGIN_ID


def test_dry_run_and_validate_resolve_sendable_rows_locally() -> None:
    rows = _rows(("a@x.com", "+14155550132"), ("b@x.com", "nope"))
    dry = _all(Preparer(RowRules(mode=Mode.DRY_RUN)), rows)
    valid = _all(Preparer(RowRules(mode=Mode.VALIDATE)), rows)
    assert [(i.status, i.phone) for i in dry if isinstance(i, RowResult)] == [
        (Status.WOULD_UPDATE, "+14155550132"),
        (Status.INVALID, None),
    ]
    assert [i.status for i in valid if isinstance(i, RowResult)] == [Status.VALID, Status.INVALID]


def test_invalid_rows_carry_a_human_explanation() -> None:
    [item] = _all(Preparer(RowRules()), _rows(("a@x.com", "4.4790E+11")))
    assert isinstance(item, RowResult) and item.reason is Reason.SCIENTIFIC_NOTATION
    assert item.error_message and "scientific notation" in item.error_message
