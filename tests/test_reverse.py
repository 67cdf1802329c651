"""``undo RESULTS``: put back what a run changed, from its result file; itself a resumable run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import polars as pl
import pytest
from click.testing import CliRunner

from batchphone.cli import main
from batchphone.emulator import Emulator
from batchphone.emulator.server import ServerThread
from batchphone.errors import InputError
from batchphone.models import LOOKUP_COLUMNS, RESULT_COLUMNS
from tests.emulated import (
    KEY,
    PATCH_BATCH,
    PROJECT,
    UPDATE,
    Spy,
    by_row,
    calls,
    make_emulator,
    new_phones,
    phone_users,
    read,
    run_job,
    write_input,
)

pytestmark = pytest.mark.anyio


def phones(emulator: Emulator, count: int) -> list[str]:
    return [emulator.user(PROJECT, f"user{i}@example.com")["phone"] for i in range(count)]


async def set_phone(emulator: Emulator, login_id: str, phone: str) -> None:
    """Someone else changes a user (the admin console, the user themself)."""
    async with httpx.AsyncClient(
        transport=emulator.transport(),
        base_url="http://emulator.invalid",
        headers={"Authorization": f"Bearer {PROJECT}:{KEY}"},
    ) as client:
        body = {"loginId": login_id, "phone": phone, "verified": True, "failOnConflict": True}
        assert (await client.post(UPDATE, json=body)).status_code == 200


@pytest.mark.parametrize("api", ["update", "batch"])
async def test_undo_after_a_partial_run_restores_what_was_updated(tmp_path: Path, api: str) -> None:
    emulator = make_emulator(phone_users(20))
    original = phones(emulator, 20)
    source = write_input(tmp_path / "in.csv", new_phones(20), ["false"] * 20)
    updates = 0

    async def key_revoked_after_five(request: httpx.Request) -> httpx.Response | None:
        nonlocal updates
        if request.url.path == UPDATE:
            updates += 1
            if updates > 5:
                return httpx.Response(401, json={"errorCode": "E061103"})
        return None

    out = tmp_path / "run.csv"
    spy = Spy(emulator, key_revoked_after_five)
    partial = await run_job(emulator, "run", source, out, transport=spy, concurrency=1)
    assert partial.exit_code == 3 and partial.counts == {"updated": 5, "not_attempted": 15}
    assert phones(emulator, 20)[5:] == original[5:]

    undone = tmp_path / "undo.csv"
    summary = await run_job(emulator, "undo", out, undone, job={"api": api})
    assert phones(emulator, 20) == original
    assert all(emulator.user(PROJECT, f"user{i}@example.com")["verifiedPhone"] for i in range(5))
    assert summary.counts == {"updated": 5, "unchanged": 15} and summary.exit_code == 0
    rows = read(undone)
    assert list(rows[0]) == [*RESULT_COLUMNS, *LOOKUP_COLUMNS]
    assert (rows[0]["phone"], rows[0]["phone_input"]) == ("+14155550000", "+14155550000")
    # the undo's own before-image is the state the run left: an undo can be undone
    assert (rows[0]["phone_before"], rows[0]["verified_before"]) == ("+14156660000", "false")
    assert {(r["status"], r["reason"]) for r in rows[5:]} == {("unchanged", "NOT_UPDATED")}
    redo = await run_job(emulator, "undo", undone, tmp_path / "redo.csv")
    assert redo.counts == {"updated": 5, "unchanged": 15}
    assert phones(emulator, 6) == [f"+1415666{i:04d}" for i in range(5)] + [original[5]]


async def test_undo_skips_a_user_changed_since(tmp_path: Path) -> None:
    emulator = make_emulator(phone_users(4))
    source = write_input(tmp_path / "in.csv", new_phones(4), ["true"] * 4)
    out = tmp_path / "run.csv"
    await run_job(emulator, "run", source, out)
    await set_phone(emulator, "user2@example.com", "+14157770002")
    undone = tmp_path / "undo.csv"
    summary = await run_job(emulator, "undo", out, undone)
    assert by_row(undone) == {
        1: ("updated", None),
        2: ("updated", None),
        3: ("skipped", "CHANGED_SINCE"),
        4: ("updated", None),
    }
    assert read(undone)[2]["error_message"] == (
        "the user's phone is now +14157770002, not the +14156660002 the run set: left as is"
    )
    assert phones(emulator, 4) == ["+14155550000", "+14155550001", "+14157770002", "+14155550003"]
    assert summary.exit_code == 1  # a row could not be undone: look at it


async def test_undo_dry_run_shows_the_changes_and_sends_nothing(tmp_path: Path) -> None:
    emulator = make_emulator(phone_users(3))
    source = write_input(tmp_path / "in.csv", new_phones(3), ["true"] * 3)
    out = tmp_path / "run.csv"
    await run_job(emulator, "run", source, out)
    updates = calls(emulator, UPDATE)
    summary = await run_job(emulator, "undo", out, tmp_path / "undo.csv", dry_run=True)
    assert calls(emulator, UPDATE) == updates
    assert summary.counts == {"change": 3} and summary.planned_calls == 1 + 1 + 3
    row = read(tmp_path / "undo.csv")[0]
    assert (row["phone_before"], row["phone"]) == ("+14156660000", "+14155550000")


async def test_restoring_an_empty_phone_needs_allow_remove(tmp_path: Path) -> None:
    emulator = make_emulator([{"loginId": f"user{i}@example.com"} for i in range(2)])
    source = write_input(tmp_path / "in.csv", new_phones(2), ["true"] * 2)
    out = tmp_path / "run.csv"
    await run_job(emulator, "run", source, out)
    assert [r["phone_before"] for r in read(out)] == [None, None]  # no phone before
    refused = await run_job(emulator, "undo", out, tmp_path / "undo.csv")
    assert by_row(tmp_path / "undo.csv") == {
        1: ("skipped", "EMPTY_PHONE"),
        2: ("skipped", "EMPTY_PHONE"),
    }
    assert refused.exit_code == 1 and calls(emulator, UPDATE) == 2
    summary = await run_job(emulator, "undo", out, tmp_path / "undo2.csv", allow_remove=True)
    assert by_row(tmp_path / "undo2.csv") == {
        1: ("updated", "REMOVE_PHONE"),
        2: ("updated", "REMOVE_PHONE"),
    }
    assert summary.exit_code == 0 and phones(emulator, 2) == ["", ""]


async def test_undo_resumes_like_a_run(tmp_path: Path) -> None:
    emulator = make_emulator(phone_users(30))
    source = write_input(tmp_path / "in.csv", new_phones(30), ["true"] * 30)
    out = tmp_path / "run.csv"
    await run_job(emulator, "run", source, out)
    undone = tmp_path / "undo.csv"
    await run_job(emulator, "undo", out, undone, limit=10)
    assert calls(emulator, UPDATE) == 30 + 10
    summary = await run_job(emulator, "undo", out, undone)
    assert calls(emulator, UPDATE) == 30 + 30 and summary.resumed_rows == 10
    assert summary.counts == {"updated": 30}
    again = await run_job(emulator, "undo", out, undone)
    assert calls(emulator, UPDATE) == 60 and again.counts == {"updated": 30}


async def test_undo_refuses_results_without_a_before_image(tmp_path: Path) -> None:
    emulator = make_emulator(phone_users(2))
    source = write_input(tmp_path / "in.csv", new_phones(2))
    out = tmp_path / "run.csv"
    await run_job(emulator, "run", source, out, no_lookup=True)  # no lookups: no before-image
    with pytest.raises(InputError, match="has no phone_before/verified_before columns"):
        await run_job(emulator, "undo", out, tmp_path / "undo.csv")
    with pytest.raises(InputError, match="no column 'status'"):
        await run_job(emulator, "undo", source, tmp_path / "undo.csv")
    assert phones(emulator, 2) == ["+1415666" + "0000", "+1415666" + "0001"]


@pytest.mark.parametrize("ext", ["csv", "tsv", "parquet", "jsonl", "xlsx"])
async def test_undo_reads_every_result_format(tmp_path: Path, ext: str) -> None:
    # a login id that looks like a formula is defused in CSV/TSV and must come back as it was
    users = [*phone_users(2), {"loginId": "=cmd@example.com", "phone": "+14155559999"}]
    emulator = make_emulator(users)
    rows = [*new_phones(2), ("=cmd@example.com", "+14156669999")]
    source = write_input(tmp_path / "in.csv", rows, ["true"] * 3)
    out = tmp_path / f"run.{ext}"
    await run_job(emulator, "run", source, out)
    summary = await run_job(emulator, "undo", out, tmp_path / "undo.csv", job={"api": "batch"})
    assert summary.counts == {"updated": 3}
    assert phones(emulator, 2) == ["+14155550000", "+14155550001"]
    assert emulator.user(PROJECT, "=cmd@example.com")["phone"] == "+14155559999"
    assert calls(emulator, PATCH_BATCH) == 1


@pytest.fixture
def served() -> Iterator[tuple[Emulator, str]]:
    emulator = make_emulator(phone_users(5))
    with ServerThread(emulator, port=0) as base_url:
        yield emulator, base_url


def test_undo_command_dry_run_then_for_real(
    served: tuple[Emulator, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    emulator, base_url = served
    env = {
        "DESCOPE_PROJECT_ID": PROJECT,
        "DESCOPE_MANAGEMENT_KEY": KEY,
        "DESCOPE_BASE_URI": base_url,
    }
    source = write_input(tmp_path / "in.csv", new_phones(5), ["true"] * 5)

    def invoke(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
        return result.exit_code, result.stderr

    # a plain run reads the users first, so its result file can be undone
    code, _ = invoke("run", str(source), "--out", "run.csv", "--quiet")
    assert code == 0 and phones(emulator, 5)[0] == "+14156660000"
    code, err = invoke(
        "undo", "run.csv", "--out", "plan.csv", "--dry-run", "--log-format", "console"
    )
    assert code == 0 and "  change                 5\n" in err
    assert "the undo needs about 7 API calls" in err and phones(emulator, 5)[0] == "+14156660000"
    code, err = invoke("undo", "run.csv", "--out", "undo.xlsx", "--log-format", "console")
    assert code == 0 and "  updated                5\n" in err
    assert phones(emulator, 5) == [f"+1415555{i:04d}" for i in range(5)]
    assert pl.read_excel(tmp_path / "undo.xlsx")["status"].to_list() == ["updated"] * 5
    code, err = invoke("undo", "in.csv", "--out", "x.csv")
    assert code == 2 and err == (
        "batchphone: error: in.csv: not a batchphone result file (no column 'status')\n"
    )


EVIL_IDS = ['+HYPERLINK("http://x?"&A1,"y")', "-2+3+cmd|' /C calc'!A0", "'=quoted already"]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "xlsx"])
async def test_spreadsheet_safe_login_ids_round_trip_through_undo(tmp_path: Path, fmt: str) -> None:
    users = [
        {"loginId": login, "phone": f"+1415555000{i}", "verifiedPhone": True}
        for i, login in enumerate(EVIL_IDS)
    ]
    emulator = make_emulator(users)
    rows = [(login, f"+1415666000{i}") for i, login in enumerate(EVIL_IDS)]
    source = write_input(tmp_path / "in.csv", rows, ["true"] * len(rows))
    out = tmp_path / f"run.{fmt}"
    done = await run_job(emulator, "run", source, out)
    assert done.counts == {"updated": 3}
    if fmt == "xlsx":
        written = pl.read_excel(out, infer_schema_length=0)["loginId"].to_list()
    else:
        separator = "\t" if fmt == "tsv" else ","
        written = pl.read_csv(out, separator=separator, infer_schema=False)["loginId"].to_list()
    # CSV/TSV: no cell starts a formula; XLSX: string cells, never formulas, hold the ids exactly
    assert written == [login if fmt == "xlsx" else "'" + login for login in EVIL_IDS]
    undone = await run_job(emulator, "undo", out, tmp_path / "undo.csv")
    assert undone.counts == {"updated": 3}
    assert [emulator.user(PROJECT, login)["phone"] for login in EVIL_IDS] == [
        f"+1415555000{i}" for i in range(3)
    ]


async def test_undo_reads_results_through_the_reader_and_its_checks(tmp_path: Path) -> None:
    """A result file re-saved as UTF-16 gets the reader's one-line advice, and no call is made."""
    emulator = make_emulator(phone_users(2))
    source = write_input(tmp_path / "in.csv", new_phones(2), ["true"] * 2)
    out = tmp_path / "run.csv"
    await run_job(emulator, "run", source, out)
    before = calls(emulator, UPDATE)
    out.write_bytes(out.read_text(encoding="utf-8").encode("utf-16"))
    with pytest.raises(InputError) as info:
        await run_job(emulator, "undo", out, tmp_path / "undo.csv")
    assert str(info.value) == (f"{out}: is UTF-16 text: re-save it as UTF-8 (in Excel: CSV UTF-8)")
    assert calls(emulator, UPDATE) == before


async def test_an_xlsx_result_holds_login_ids_exactly_and_undo_sends_them_so(
    tmp_path: Path,
) -> None:
    """XLSX string cells are never formulas: no quote for a person to copy, none for undo to
    remove; an XLSX result of an older version (quoted, unmarked) still undoes exactly."""
    import xlsxwriter

    logins = ['=HYPERLINK("http://x","lee")', "'=quoted already", "+cmd"]
    users = [
        {"loginId": login, "phone": f"+1415555000{i}", "verifiedPhone": True}
        for i, login in enumerate(logins)
    ]
    emulator = make_emulator(users)
    rows = [(login, f"+1415666000{i}") for i, login in enumerate(logins)]
    source = write_input(tmp_path / "in.csv", rows, ["true"] * len(rows))
    out = tmp_path / "run.xlsx"
    assert (await run_job(emulator, "run", source, out)).counts == {"updated": 3}
    assert pl.read_excel(out, infer_schema_length=0)["loginId"].to_list() == logins
    spy = Spy(emulator)
    undone = await run_job(emulator, "undo", out, tmp_path / "undo.csv", transport=spy)
    assert undone.counts == {"updated": 3}
    assert sorted(body["loginId"] for body in spy.bodies[UPDATE]) == sorted(logins)
    # the same result as an older batchphone wrote it: a quote before each formula-like id
    old = tmp_path / "old.xlsx"
    frame = pl.read_excel(out, infer_schema_length=0)
    workbook = xlsxwriter.Workbook(old, {"strings_to_formulas": False})
    sheet = workbook.add_worksheet("results")
    sheet.write_row(0, 0, frame.columns)
    for number, values in enumerate(frame.iter_rows(), start=1):
        for col, (name, value) in enumerate(zip(frame.columns, values, strict=True)):
            if value is not None:
                quoted = "'" + value if name == "loginId" else value
                sheet.write_string(number, col, quoted)
    workbook.close()
    for i, login in enumerate(logins):  # back to what the run set, as if undo had not run
        await set_phone(emulator, login, f"+1415666000{i}")
    spy = Spy(emulator)
    assert (await run_job(emulator, "undo", old, tmp_path / "undo-old.csv", transport=spy)).counts
    assert sorted(body["loginId"] for body in spy.bodies[UPDATE]) == sorted(logins)


async def test_a_result_file_re_saved_with_semicolons_is_undone(tmp_path: Path) -> None:
    """Excel in much of Europe re-saves a CSV with ``;``: undo reads it as the run wrote it."""
    emulator = make_emulator(phone_users(3))
    source = write_input(tmp_path / "in.csv", new_phones(3), ["true"] * 3)
    out = tmp_path / "run.csv"
    assert (await run_job(emulator, "run", source, out)).counts == {"updated": 3}
    resaved = tmp_path / "resaved.csv"
    pl.read_csv(out, infer_schema=False).write_csv(resaved, separator=";")
    undone = await run_job(emulator, "undo", resaved, tmp_path / "undo.csv")
    assert undone.counts == {"updated": 3}
    assert phones(emulator, 3) == [f"+1415555{i:04d}" for i in range(3)]


def _write_journal(path: Path, records: list[dict[str, object]]) -> None:
    import orjson

    header = {"format": "batchphone-journal", "version": 1, "identity": {"command": "run"}}
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in [header, *records]))


def test_a_journal_is_read_as_the_rows_to_undo(tmp_path: Path) -> None:
    """``undo OUT.journal``, or ``undo OUT`` with no OUT (a run killed before it wrote it)."""
    from batchphone.models import UpdateRequest
    from batchphone.modes.reverse import open_results

    out = tmp_path / "r.csv"
    common = {"phone_input": "+14155550100", "phone": "+14155550100"}
    _write_journal(
        tmp_path / "r.csv.journal",
        [
            {"start": 1.0, "id": "a.1", "until": 31.0},
            {
                "row": 2,
                "line": 3,
                "loginId": "b",
                **common,
                "status": "unsettled",
                "reason": "IN_FLIGHT",
                "phone_before": "+1",
                "verified_before": True,
                "ts": 1.0,
            },
            {
                "row": 1,
                "line": 2,
                "loginId": "a",
                **common,
                "status": "updated",
                "phone_before": "",
                "verified_before": False,
                "ts": 1.0,
            },
            # the answer's record of row 2 has no before-image: the intent's is kept
            {
                "row": 2,
                "line": 3,
                "loginId": "b",
                **common,
                "status": "failed",
                "reason": "ANSWER_MISMATCH",
                "ts": 2.0,
            },
            {"row": 4, "line": 5, "loginId": "d", **common, "status": "conflict", "ts": 2.0},
        ],
    )
    for given in (out, tmp_path / "r.csv.journal"):
        rows = [item for batch in open_results(given).prepared(allow_remove=True) for item in batch]
        assert [r.row for r in rows] == [1, 2, 3]  # numbered by position, as a filtered file
        a, b, d = rows
        assert isinstance(a, UpdateRequest) and (a.phone, a.verified, a.line) == ("", False, 2)
        assert isinstance(b, UpdateRequest) and (b.phone, b.verified) == ("+1", True)
        assert b.expect_phone == "+14155550100" and b.login_id == "b"
        assert not isinstance(d, UpdateRequest) and d.status.value == "unchanged"
    with pytest.raises(InputError, match="no such file"):
        open_results(tmp_path / "other.csv")


async def test_a_result_file_whose_phones_a_spreadsheet_turned_into_numbers_is_refused(
    tmp_path: Path,
) -> None:
    """Excel opens ``+14155550000`` as the number 14155550000 and saves it so (or as
    4.41556E+10): the phones the run set are gone from the file, so undo cannot tell who still
    holds them. It stops before any call with one line naming the row and what to undo instead,
    rather than reading every user and skipping each one as changed since."""
    emulator = make_emulator(phone_users(3))
    source = write_input(tmp_path / "in.csv", new_phones(3), ["true"] * 3)
    out = tmp_path / "run.csv"
    assert (await run_job(emulator, "run", source, out)).counts == {"updated": 3}
    frame = pl.read_csv(out, infer_schema=False)
    resaved = tmp_path / "resaved.csv"
    frame.with_columns(pl.col("phone", "phone_before").str.strip_prefix("+")).write_csv(
        resaved, separator=";"
    )
    before = calls(emulator)
    with pytest.raises(InputError) as caught:
        await run_job(emulator, "undo", resaved, tmp_path / "undo.csv")
    message = str(caught.value)
    assert message.startswith(f"{resaved}: line 2: the phone the run set is not in E.164")
    assert "re-saved by a spreadsheet" in message and "\n" not in message
    assert "4155550000" not in message  # no phone in a message (it is logged)
    assert calls(emulator) == before
