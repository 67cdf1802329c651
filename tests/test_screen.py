"""``plan``: every row judged against the users' current state, nothing updated; the screen."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from batchphone.cli import main
from batchphone.emulator import load_users
from batchphone.models import (
    LOOKUP_COLUMNS,
    PLAN_COLUMNS,
    RESULT_COLUMNS,
    Reason,
    RowResult,
    Status,
    UpdateRequest,
)
from batchphone.remote.calls import open_calls
from batchphone.remote.lookup import Lookup
from batchphone.remote.screen import Screen, ScreenRules, budget_seconds, planned_calls
from batchphone.remote.stop import Stop
from tests.emulated import (
    PATCH_BATCH,
    PROJECT,
    SEARCH,
    UPDATE,
    Spy,
    by_row,
    calls,
    endpoint,
    json_answer,
    make_emulator,
    read,
    run_job,
    settings,
)

pytestmark = pytest.mark.anyio

#: What each row of samples/phones.csv is in a plan against samples/users.csv.
PLAN_EXPECTED: dict[int, tuple[str, str | None]] = {
    1: ("change", None),
    2: ("change", None),
    3: ("change", None),
    4: ("invalid", "MISSING_REGION"),
    5: ("unchanged", None),  # erin already has +33612345678, verified
    6: ("invalid", "EMPTY_PHONE"),
    7: ("invalid", "SCIENTIFIC_NOTATION"),
    8: ("invalid", "EXTENSION_PRESENT"),
    9: ("change", None),
    10: ("invalid", "TOO_SHORT"),
    11: ("invalid", "INVALID_COUNTRY_CODE"),
    12: ("not_found", "USER_NOT_FOUND"),
    13: ("conflict", "PHONE_CONFLICT"),  # +14155550199 is another user's login id
    14: ("duplicate", "DUPLICATE_ROW"),
    15: ("change", None),
    16: ("invalid", "CONFLICTING_DUPLICATE"),
    17: ("invalid", "CONFLICTING_DUPLICATE"),
    18: ("change", None),
    19: ("invalid", "TOO_LONG"),
    20: ("change", None),  # the phone is the user's own login id: no conflict
    21: ("invalid", "INVALID_NUMBER"),
    22: ("change", None),
    23: ("change", None),
    24: ("change", None),
}


@pytest.fixture
def sample_users(samples: Path) -> list[dict[str, Any]]:
    return load_users(samples / "users.csv")


async def test_plan_of_the_samples_judges_every_row_and_updates_nothing(
    samples: Path, sample_users: list[dict[str, Any]], tmp_path: Path
) -> None:
    emulator = make_emulator(sample_users)
    out = tmp_path / "plan.csv"
    summary = await run_job(emulator, "plan", samples / "phones.csv", out)
    assert by_row(out) == PLAN_EXPECTED
    assert calls(emulator, UPDATE) == 0 and calls(emulator, PATCH_BATCH) == 0
    assert emulator.user(PROJECT, "alice@example.com")["phone"] == ""
    rows = {int(r["row"]): r for r in read(out)}
    assert list(rows[1]) == [*RESULT_COLUMNS, *LOOKUP_COLUMNS, *PLAN_COLUMNS]
    # the flag a run would send: the row's own value, else false (a new phone is unverified)
    assert (rows[1]["verified"], rows[2]["verified"]) == ("true", "false")
    assert rows[4]["verified"] is None  # nothing is sent for an invalid row
    assert (rows[2]["phone_before"], rows[2]["verified_before"]) == ("+442079460000", "true")
    assert rows[2]["phone"] == "+442079460018"
    assert (rows[1]["phone_before"], rows[1]["verified_before"]) == (None, "false")
    assert rows[4]["verified_before"] is None  # invalid rows are not looked up
    assert "another user" in rows[13]["error_message"]
    assert json.loads(rows[5]["user"])["loginIds"] == ["erin@example.com"]
    assert summary.exit_code == 1  # not_found, conflict and invalid rows
    # 1 search per 100 rows read, 1 phone check per 100 changes, 1 update per change
    assert summary.planned_calls == 1 + 1 + 10 and summary.planned_s == 0.0
    assert summary.requests == calls(emulator) == 1 + calls(emulator, SEARCH)


@pytest.mark.parametrize("api", ["update", "batch"])
async def test_a_conflict_plan_finds_is_one_run_refuses_to_send(
    samples: Path, sample_users: list[dict[str, Any]], tmp_path: Path, api: str
) -> None:
    emulator = make_emulator(sample_users)
    plan = await run_job(emulator, "plan", samples / "phones.csv", tmp_path / "plan.csv")
    assert by_row(tmp_path / "plan.csv")[13] == ("conflict", "PHONE_CONFLICT")
    spy = Spy(emulator)
    out = tmp_path / "run.csv"
    summary = await run_job(
        emulator,
        "run",
        samples / "phones.csv",
        out,
        transport=spy,
        job={"api": api},
    )
    assert by_row(out)[13] == ("conflict", "PHONE_CONFLICT")
    sent = [body["loginId"] for body in spy.bodies.get(UPDATE, [])]
    sent += [user["loginId"] for body in spy.bodies.get(PATCH_BATCH, []) for user in body["users"]]
    assert "alice@example.com" in sent and "oscar@example.com" not in sent
    assert summary.counts["updated"] == plan.counts["change"] == 10
    assert emulator.user(PROJECT, "+14155550199") is not None
    assert emulator.stats(PROJECT).merges == ()


async def test_a_plan_resumes_and_a_run_may_reuse_its_out(
    samples: Path, sample_users: list[dict[str, Any]], tmp_path: Path
) -> None:
    emulator = make_emulator(sample_users)
    out = tmp_path / "plan.csv"
    await run_job(emulator, "plan", samples / "phones.csv", out)
    before = calls(emulator)
    again = await run_job(emulator, "plan", samples / "phones.csv", out)
    assert calls(emulator) == before + 1  # the license handshake only
    assert by_row(out) == PLAN_EXPECTED and again.resumed_rows == 24
    assert again.planned_calls == 12  # from the journal's counts, not this session's calls
    # a plan sent nothing: its journal gives way to a run on the same file
    summary = await run_job(emulator, "run", samples / "phones.csv", out)
    assert summary.counts["updated"] == 10 and summary.counts["unchanged"] == 1


async def test_a_plan_with_allow_remove_shows_the_removal(
    samples: Path, sample_users: list[dict[str, Any]], tmp_path: Path
) -> None:
    emulator = make_emulator(sample_users)
    out = tmp_path / "plan.csv"
    spy = Spy(emulator)
    await run_job(emulator, "plan", samples / "phones.csv", out, transport=spy, allow_remove=True)
    frank = read(out)[5]
    assert (frank["status"], frank["reason"], frank["phone_before"]) == (
        "change",
        "REMOVE_PHONE",
        "+14155550150",
    )
    # a removal cannot collide with a login id: no phone check asks for ""
    assert all("" not in body["loginIds"] for body in spy.bodies[SEARCH])


def test_planned_calls_count_reads_checks_and_sends() -> None:
    counts = {"change": 250, "unchanged": 700, "not_found": 40, "conflict": 10, "invalid": 99}
    # 1000 rows read: 10 searches; 260 phones checked: 1; 250 updates or 3 patches of 100
    assert planned_calls(counts, batch_size=None) == 10 + 1 + 250
    assert planned_calls(counts, batch_size=100) == 10 + 1 + 3
    assert planned_calls({"change": 2500}, batch_size=100) == 25 + 3 + 25
    assert planned_calls({"invalid": 5}, batch_size=None) == 0


def test_budget_seconds_counts_whole_windows() -> None:
    assert budget_seconds(0, 500, 61.2) == 0.0
    assert budget_seconds(500, 500, 61.2) == 0.0  # one budget goes at once
    assert budget_seconds(501, 500, 61.2) == pytest.approx(61.2)
    assert budget_seconds(1500, 500, 61.2) == pytest.approx(122.4)


async def test_the_screen_leaves_every_request_unsent_when_the_run_stops() -> None:
    emulator = make_emulator([])
    stop = Stop()
    stack = open_calls(settings(), endpoint(), emulator.transport(), stop=stop)
    screen = Screen(ScreenRules(compare=True, guard=True), Lookup(stack), stop=stop)
    stop.request(Reason.INTERRUPTED)
    items = [
        UpdateRequest(row=i, login_id=f"u{i}", phone="+14155550100", verified=True) for i in (1, 2)
    ]
    local = RowResult(row=3, login_id=None, phone_input=None, phone=None, status=Status.INVALID)
    out = [item async for item in screen.screen([*items, local])]
    await stack.aclose()
    assert out[0] == local
    assert [(r.row, r.status, r.reason) for r in out[1:] if isinstance(r, RowResult)] == [
        (1, Status.NOT_ATTEMPTED, Reason.INTERRUPTED),
        (2, Status.NOT_ATTEMPTED, Reason.INTERRUPTED),
    ]
    assert calls(emulator) == 0


def test_plan_command_prints_what_a_run_would_cost(samples: Path, tmp_path: Path) -> None:
    out = tmp_path / "plan.csv"
    summary_path = tmp_path / "summary.json"
    result = CliRunner().invoke(
        main,
        [
            "plan",
            str(samples / "phones.csv"),
            "--emulator",
            "--out",
            str(out),
            "--rate",
            "5/60",
            "--summary-json",
            str(summary_path),
        ],
        env={"DESCOPE_PROJECT": "", "DESCOPE_MANAGEMENT_KEY": "", "DESCOPE_BASE_URI": ""},
        catch_exceptions=False,
    )
    assert result.exit_code == 1, result.output
    assert "  change                10\n" in result.stderr
    # 12 calls at 5 per 60 s (+2% margin): two more full windows after the first five
    assert "needs about 12 API calls: at least 2m00s at a budget of 5/60" in result.stderr
    summary = json.loads(summary_path.read_text())
    assert summary["planned_calls"] == 12 and summary["planned_s"] == pytest.approx(120.06)
    assert summary["counts"]["change"] == 10
    assert by_row(out)[5] == ("unchanged", None)


def test_plan_refuses_the_key_as_a_flag(samples: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        [
            "plan",
            str(samples / "phones.csv"),
            "--out",
            str(tmp_path / "p.csv"),
            "--management-key",
            "K2x",
        ],
    )
    assert result.exit_code == 2
    assert "--management-key is not accepted" in result.stderr and "K2x" not in result.stderr


async def test_rows_whose_read_failed_carry_how_the_read_ended() -> None:
    emulator = make_emulator([])

    async def unavailable(request: httpx.Request) -> httpx.Response | None:
        return json_answer(503, {"errorCode": "E000503", "errorMessage": "unavailable"})

    stop = Stop()
    stack = open_calls(settings(max_attempts=2), endpoint(), Spy(emulator, unavailable), stop=stop)
    screen = Screen(ScreenRules(compare=True), Lookup(stack), stop=stop)
    items = [
        UpdateRequest(row=i, login_id=f"u{i}", phone="+14155550100", verified=True) for i in (1, 2)
    ]
    out = [item async for item in screen.screen(items)]
    await stack.aclose()
    assert all(isinstance(r, RowResult) for r in out)
    assert [
        (r.row, r.status, r.reason, r.http_status, r.error_code, r.attempts)
        for r in out
        if isinstance(r, RowResult)
    ] == [
        (1, Status.FAILED, Reason.RETRIES_EXHAUSTED, 503, "E000503", 2),
        (2, Status.FAILED, Reason.RETRIES_EXHAUSTED, 503, "E000503", 2),
    ]
    messages = [r.error_message or "" for r in out if isinstance(r, RowResult)]
    assert len(messages) == 2
    assert all(m.startswith("lookup failed: search users: HTTP 503") for m in messages)


# -- phones stored in a legacy format --------------------------------------------------------

#: Users whose stored phone is not E.164 (imports, older SDKs: descope-api.md), and a row each.
LEGACY_USERS = [
    {"loginId": "ann@example.com", "phone": "+1 646 300 0000", "verifiedPhone": True},
    {"loginId": "bob@example.com", "phone": "+1 (646) 300-0001", "verifiedPhone": False},
    {"loginId": "cat@example.com", "phone": "+1 646 300 0002", "verifiedPhone": True},
    {"loginId": "dan@example.com", "phone": "+1.646.300.0003", "verifiedPhone": True},
]
LEGACY_ROWS = [
    ("ann@example.com", "+16463000000"),  # the same number, no verified value: keeps the flag
    ("bob@example.com", "(646) 300-0001"),  # the same number written nationally
    ("cat@example.com", "+1 646 300 0002"),  # the same number, and the row's own flag: it wins
    ("dan@example.com", "+14155550100"),  # another number
]


def stored(emulator: Any) -> dict[str, tuple[str, bool]]:
    """Each user's stored phone and verified flag."""
    return {u["loginIds"][0]: (u["phone"], u["verifiedPhone"]) for u in emulator.users(PROJECT)}


def sent_phones(spy: Spy) -> list[str]:
    """Every phone sent in an update or a batch patch."""
    phones = [body["phone"] for body in spy.bodies.get(UPDATE, [])]
    for body in spy.bodies.get(PATCH_BATCH, []):
        phones += [user["phone"] for user in body["users"]]
    return phones


@pytest.mark.parametrize("api", ["update", "batch"])
async def test_a_phone_stored_in_a_legacy_format_is_the_same_number_run_then_undo(
    tmp_path: Path, api: str
) -> None:
    emulator = make_emulator(LEGACY_USERS)
    source = tmp_path / "in.csv"
    source.write_text(
        "loginId,phone,verified\n"
        + "".join(
            f"{login},{phone},{flag}\n"
            for (login, phone), flag in zip(LEGACY_ROWS, ["", "", "false", ""], strict=True)
        )
    )
    plan = tmp_path / "plan.csv"
    await run_job(emulator, "plan", source, plan, job={"api": api}, default_region="US")
    planned = {int(r["row"]): (r["status"], r["reason"], r["verified"]) for r in read(plan)}
    assert planned == {
        1: ("change", "REFORMATTED", "true"),
        2: ("change", "REFORMATTED", "false"),
        3: ("change", "REFORMATTED", "false"),
        4: ("change", None, "false"),
    }

    # run: the E.164 form is stored, with the user's flag unless the row gives one
    spy = Spy(emulator)
    out = tmp_path / "r.csv"
    run = await run_job(
        emulator, "run", source, out, transport=spy, job={"api": api}, default_region="US"
    )
    assert run.exit_code == 0
    assert by_row(out) == {
        1: ("updated", "REFORMATTED"),
        2: ("updated", "REFORMATTED"),
        3: ("updated", "REFORMATTED"),
        4: ("updated", None),
    }
    assert stored(emulator) == {
        "ann@example.com": ("+16463000000", True),
        "bob@example.com": ("+16463000001", False),
        "cat@example.com": ("+16463000002", False),
        "dan@example.com": ("+14155550100", False),
    }
    before = {r["loginId"]: (r["phone_before"], r["verified_before"]) for r in read(out)}
    assert before["ann@example.com"] == ("+1 646 300 0000", "true")  # the before-image as read

    # undo: the same number in E.164 is nothing to restore; a legacy form is never sent back
    spy = Spy(emulator)
    undone = tmp_path / "u.csv"
    undo = await run_job(emulator, "undo", out, undone, transport=spy, job={"api": api})
    assert undo.exit_code == 0
    assert by_row(undone) == {
        1: ("unchanged", "SAME_NUMBER"),
        2: ("unchanged", "SAME_NUMBER"),
        3: ("updated", "VERIFIED_ONLY"),  # its flag is restored, in E.164
        4: ("updated", None),
    }
    assert stored(emulator) == {
        "ann@example.com": ("+16463000000", True),
        "bob@example.com": ("+16463000001", False),
        "cat@example.com": ("+16463000002", True),
        "dan@example.com": ("+16463000003", True),
    }
    assert sorted(sent_phones(spy)) == ["+16463000002", "+16463000003"]
    assert [r["phone"] for r in read(undone)][:2] == ["+16463000000", "+16463000001"]


async def test_a_phone_stored_in_e164_and_a_legacy_before_image_is_unchanged(
    tmp_path: Path,
) -> None:
    # an undo of a run made before batchphone stored E.164, or a result file edited by hand
    emulator = make_emulator([{"loginId": "ann@example.com", "phone": "+16463000000"}])
    results = tmp_path / "r.csv"
    results.write_text(
        "row,loginId,phone,status,phone_before,verified_before\n"
        "1,ann@example.com,+16463000000,updated,+1 646 300 0000,true\n"
    )
    spy = Spy(emulator)
    undo = await run_job(emulator, "undo", results, tmp_path / "u.csv", transport=spy)
    assert undo.exit_code == 0
    assert by_row(tmp_path / "u.csv") == {1: ("unchanged", "SAME_NUMBER")}
    assert UPDATE not in spy.bodies
    assert stored(emulator) == {"ann@example.com": ("+16463000000", True)}
