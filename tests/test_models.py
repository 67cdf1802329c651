"""The typed user that crosses module boundaries instead of the API's raw dict."""

from __future__ import annotations

from batchphone.models import (
    CELL_TYPES,
    LOOKUP_COLUMNS,
    PLAN_COLUMNS,
    RESULT_COLUMNS,
    Reason,
    ResultCells,
    RowResult,
    Status,
    User,
    next_step,
)


def test_a_user_reads_the_fields_batchphone_uses_and_keeps_the_rest() -> None:
    raw = {
        "userId": "U1",
        "loginIds": ["ada@example.com", "+14155550100"],
        "phone": "+14155550100",
        "verifiedPhone": True,
        "email": "ada@example.com",
    }
    user = User.from_api(raw)
    assert (user.user_id, user.login_ids) == ("U1", ("ada@example.com", "+14155550100"))
    assert (user.phone, user.verified_phone, user.verified) == ("+14155550100", True, True)
    assert user.raw == raw  # the result file's `user` column
    # personal data stays out of reprs (logs, tracebacks) beyond the fields named
    assert "email" not in repr(user)


def test_fields_of_the_wrong_type_count_as_absent() -> None:
    user = User.from_api({"userId": 7, "loginIds": ["a", 3], "phone": None, "verifiedPhone": "yes"})
    assert (user.user_id, user.login_ids, user.phone) == (None, ("a",), "")
    assert user.verified_phone is None and user.verified is False
    assert User.from_api({}).login_ids == ()


def test_the_next_step_counts_unsettled_rows_in_words() -> None:
    one = next_step(1, resumable=True, unsettled=1)
    assert one is not None and one.startswith("1 row is unsettled (the call's answer was lost)")
    many = next_step(1, resumable=True, unsettled=7)
    assert many is not None and many.startswith("7 rows are unsettled")


def test_after_too_many_failed_calls_the_next_step_is_to_find_why() -> None:
    """A bare "rerun" after a run stopped by failing calls would fail the same way."""
    step = next_step(3, resumable=True, stopped=Reason.CIRCUIT_OPEN)
    assert step is not None and step.startswith("find why the calls failed (error_code")
    assert "unsettled" not in step
    with_unsettled = next_step(3, resumable=True, stopped=Reason.CIRCUIT_OPEN, unsettled=20)
    assert with_unsettled is not None and with_unsettled.startswith("find why the calls failed")
    assert "the 20 unsettled rows' users back first" in with_unsettled


def test_result_cells_name_every_result_column_with_its_type() -> None:
    assert ResultCells._fields == RESULT_COLUMNS + LOOKUP_COLUMNS + PLAN_COLUMNS
    assert {name for name, kind in CELL_TYPES.items() if kind is int} == {
        "row",
        "line",
        "http_status",
        "attempts",
    }
    assert {name for name, kind in CELL_TYPES.items() if kind is bool} == {"verified_phone"}
    assert set(CELL_TYPES.values()) == {int, bool, str}


def test_a_result_as_cells_holds_its_before_image_and_flags_as_text() -> None:
    result = RowResult(
        row=3,
        login_id="ada@example.com",
        phone_input="(415) 555-0100",
        phone="+14155550100",
        status=Status.CHANGE,
        reason=Reason.VERIFIED_ONLY,
        extra={"phone_before": "+14155550100", "verified_before": True, "verified": False},
        line=4,
    )
    cells = result.cells()
    assert cells == ResultCells(
        3,
        4,
        "ada@example.com",
        "(415) 555-0100",
        "+14155550100",
        "change",
        reason="VERIFIED_ONLY",
        attempts=0,
        finished_at="",
        phone_before="+14155550100",
        verified_before="true",
        verified="false",
    )
    assert type(cells.status) is str and type(cells.reason) is str
