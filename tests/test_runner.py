"""End to end, in-process: file in -> emulator -> result file out, on both anyio backends."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from batchphone.config import Secret
from batchphone.emulator import Emulator, Faults, load_users
from batchphone.journal import iter_records, journal_path
from batchphone.models import RESULT_COLUMNS, Summary
from batchphone.runner import Job, execute
from tests.emulated import KEY, PROJECT, UPDATE, make_emulator, settings

pytestmark = pytest.mark.anyio


#: What each row of samples/phones.csv must end as.
SAMPLE_EXPECTED = {
    1: ("updated", None),
    2: ("updated", None),
    3: ("updated", None),
    4: ("invalid", "MISSING_REGION"),
    5: ("updated", None),
    6: ("invalid", "EMPTY_PHONE"),
    7: ("invalid", "SCIENTIFIC_NOTATION"),
    8: ("invalid", "EXTENSION_PRESENT"),
    9: ("updated", None),
    10: ("invalid", "TOO_SHORT"),
    11: ("invalid", "INVALID_COUNTRY_CODE"),
    12: ("not_found", "USER_NOT_FOUND"),
    13: ("conflict", "PHONE_CONFLICT"),
    14: ("duplicate", "DUPLICATE_ROW"),
    15: ("updated", None),
    16: ("invalid", "CONFLICTING_DUPLICATE"),
    17: ("invalid", "CONFLICTING_DUPLICATE"),
    18: ("updated", None),
    19: ("invalid", "TOO_LONG"),
    20: ("updated", None),
    21: ("invalid", "INVALID_NUMBER"),
    22: ("updated", None),
    23: ("updated", None),
    24: ("updated", None),
}


async def run(
    emulator: Emulator,
    input_path: Path,
    out: Path,
    transport: httpx.AsyncBaseTransport | None = None,
    command: str = "run",
    **overrides: Any,
) -> Summary:
    # these tests are about sending: without the reads every sendable row makes one call
    # (tests/test_lookup_default.py covers the default, which reads the users first)
    overrides.setdefault("no_lookup", True)
    return await execute(
        Job(command=command, input_path=input_path, out_path=out),
        settings(**overrides),
        transport=transport or emulator.transport(),
    )


def read(path: Path) -> list[dict[str, Any]]:
    return pl.read_csv(path, infer_schema=False).to_dicts()


def update_calls(emulator: Emulator) -> int:
    stats = emulator.stats(PROJECT)
    return sum(n for (path, _), n in stats.requests.items() if path == UPDATE)


@pytest.fixture
def sample_users(samples: Path) -> list[dict[str, Any]]:
    return load_users(samples / "users.csv")


async def test_samples_end_with_every_status_and_reason(
    samples: Path, sample_users: list[dict[str, Any]], tmp_path: Path
) -> None:
    emulator = make_emulator(sample_users)
    out = tmp_path / "results.csv"
    summary = await run(emulator, samples / "phones.csv", out)
    rows = read(out)
    assert list(rows[0]) == list(RESULT_COLUMNS)
    got = {int(r["row"]): (r["status"], r["reason"]) for r in rows}
    assert got == SAMPLE_EXPECTED
    assert summary.exit_code == 1
    assert summary.counts["updated"] == 11
    updated = {int(r["row"]): r for r in rows if r["status"] == "updated"}
    assert updated[1]["phone"] == "+14155550132" and updated[1]["verified_phone"] == "true"
    assert json.loads(updated[1]["user"])["phone"] == "+14155550132"
    assert updated[3]["phone"] == "+442079460019"  # national number with its row's region
    assert emulator.user(PROJECT, "alice@example.com")["phone"] == "+14155550132"
    # the conflict was refused, not merged: the phone-login user still exists
    assert emulator.user(PROJECT, "+14155550199") is not None
    assert max(emulator.stats(PROJECT).updates.values()) == 1
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(journal_path(out)).st_mode) == 0o600


async def test_every_update_sends_fail_on_conflict_true(
    samples: Path, sample_users: list[dict[str, Any]], tmp_path: Path
) -> None:
    bodies: list[dict[str, Any]] = []
    emulator = make_emulator(sample_users)
    inner = emulator.transport()

    class Spy(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.path == UPDATE:
                bodies.append(json.loads(request.content))
            return await inner.handle_async_request(request)

    await run(emulator, samples / "phones.csv", tmp_path / "r.csv", transport=Spy())
    assert len(bodies) == 13
    assert all(body["failOnConflict"] is True for body in bodies)
    assert all(body["phone"] for body in bodies)  # no accidental removal
    assert {b["loginId"]: b["verified"] for b in bodies}["alice@example.com"] is True
    # a row without a verified value sends false out loud, never null
    assert {b["loginId"]: b["verified"] for b in bodies}["bob@example.com"] is False


async def test_dry_run_makes_no_update_call(
    samples: Path, sample_users: list[dict[str, Any]], tmp_path: Path
) -> None:
    emulator = make_emulator(sample_users)
    summary = await run(emulator, samples / "phones.csv", tmp_path / "r.csv", dry_run=True)
    assert update_calls(emulator) == 0
    assert summary.counts["would_update"] == 13
    assert emulator.user(PROJECT, "alice@example.com")["phone"] in ("", None)


async def test_validate_never_calls_the_api(samples: Path, tmp_path: Path) -> None:
    emulator = make_emulator([])
    out = tmp_path / "report.csv"
    summary = await run(emulator, samples / "phones.csv", out, command="validate")
    assert sum(emulator.stats(PROJECT).requests.values()) == 0
    assert summary.counts["valid"] == 13
    assert {r["status"] for r in read(out)} == {"valid", "invalid", "duplicate"}


async def test_limit_processes_only_the_first_rows(
    samples: Path, sample_users: list[dict[str, Any]], tmp_path: Path
) -> None:
    emulator = make_emulator(sample_users)
    out = tmp_path / "r.csv"
    summary = await run(emulator, samples / "phones.csv", out, limit=5)
    assert [int(r["row"]) for r in read(out)] == [1, 2, 3, 4, 5]
    assert summary.input_rows == 5 and update_calls(emulator) == 4


@pytest.mark.parametrize("in_ext", ["csv", "tsv", "parquet", "jsonl", "xlsx"])
@pytest.mark.parametrize("out_ext", ["csv", "tsv", "parquet", "jsonl", "xlsx"])
async def test_every_format_in_and_out(
    samples: Path, sample_users: list[dict[str, Any]], tmp_path: Path, in_ext: str, out_ext: str
) -> None:
    frame = pl.read_csv(samples / "phones.csv", infer_schema=False)
    source = tmp_path / f"in.{in_ext}"
    {
        "csv": lambda: frame.write_csv(source),
        "tsv": lambda: frame.write_csv(source, separator="\t"),
        "parquet": lambda: frame.write_parquet(source),
        "jsonl": lambda: frame.write_ndjson(source),
        "xlsx": lambda: frame.write_excel(source),
    }[in_ext]()
    out = tmp_path / f"out.{out_ext}"
    await run(make_emulator(sample_users), source, out)
    result = {
        "csv": lambda: pl.read_csv(out, infer_schema=False),
        "tsv": lambda: pl.read_csv(out, separator="\t", infer_schema=False),
        "parquet": lambda: pl.read_parquet(out),
        "jsonl": lambda: pl.read_ndjson(out),
        "xlsx": lambda: pl.read_excel(out),
    }[out_ext]()
    assert result.columns == list(RESULT_COLUMNS)
    got = {int(r["row"]): (r["status"], r["reason"]) for r in result.to_dicts()}
    assert got == SAMPLE_EXPECTED


async def test_wrong_key_stops_at_once_with_exit_3(
    samples: Path, sample_users: list[dict[str, Any]], tmp_path: Path
) -> None:
    emulator = make_emulator(sample_users)
    out = tmp_path / "r.csv"
    summary = await run(
        emulator, samples / "phones.csv", out, management_key=Secret("K-wrong-key-material")
    )
    assert summary.exit_code == 3
    assert update_calls(emulator) <= 1
    rows = read(out)
    assert len(rows) == 24
    sendable = [
        r for r in rows if SAMPLE_EXPECTED[int(r["row"])][0] not in ("invalid", "duplicate")
    ]
    assert {r["status"] for r in sendable} == {"not_attempted"}
    assert summary.stopped_reason and "management key" in summary.stopped_reason
    for text in (out.read_text(), journal_path(out).read_text(), summary.stopped_reason):
        assert "K-wrong-key-material" not in text and KEY not in text


async def test_resume_sends_only_what_is_left(
    samples: Path, sample_users: list[dict[str, Any]], tmp_path: Path
) -> None:
    emulator = make_emulator(sample_users)
    out = tmp_path / "r.csv"
    await run(emulator, samples / "phones.csv", out, limit=9)
    first = update_calls(emulator)
    summary = await run(emulator, samples / "phones.csv", out)
    assert update_calls(emulator) == 13  # nothing sent twice
    assert first == 5 and summary.resumed_rows == 9
    assert {int(r["row"]): (r["status"], r["reason"]) for r in read(out)} == SAMPLE_EXPECTED
    again = await run(emulator, samples / "phones.csv", out)
    assert update_calls(emulator) == 13 and again.requests <= 1  # the license handshake only


async def test_budget_is_never_exceeded_at_a_scaled_limit(tmp_path: Path) -> None:
    users = [{"loginId": f"user{i}@example.com"} for i in range(70)]
    emulator = make_emulator(users, rate_limit=20, rate_window=1.0, penalty=1.0)
    source = tmp_path / "in.csv"
    pl.DataFrame(
        {
            "loginId": [u["loginId"] for u in users],
            "phone": [f"+1415555{i:04d}" for i in range(70)],
        }
    ).write_csv(source)
    summary = await run(
        emulator, source, tmp_path / "r.csv", rate_calls=20, rate_period=1.0, concurrency=16
    )
    stats = emulator.stats(PROJECT)
    assert summary.counts == {"updated": 70}
    assert stats.rate_limited == 0 and summary.rate_limited == 0
    assert stats.max_window_calls <= 20


async def test_a_block_mid_run_pauses_without_failing_rows(tmp_path: Path) -> None:
    users = [{"loginId": f"user{i}@example.com"} for i in range(30)]
    emulator = make_emulator(users, rate_limit=1000, rate_window=1.0, penalty=1.0)
    emulator.block(PROJECT, 1.0)
    source = tmp_path / "in.csv"
    pl.DataFrame(
        {"loginId": [u["loginId"] for u in users], "phone": [f"+1415555{i:04d}" for i in range(30)]}
    ).write_csv(source)
    summary = await run(emulator, source, tmp_path / "r.csv")
    assert summary.counts == {"updated": 30}
    assert summary.rate_limited >= 1
    assert all(int(r["attempts"]) >= 1 for r in read(tmp_path / "r.csv"))


async def test_other_4xx_is_rejected_with_the_api_error(
    sample_users: list[dict[str, Any]], tmp_path: Path
) -> None:
    """The emulator's own 400 E011003 for a non-E.164 phone, forced by rewriting one body."""
    emulator = make_emulator(sample_users)
    inner = emulator.transport()

    class Corrupt(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            body = json.loads(request.content) if request.content else {}
            if body.get("loginId") == "bob@example.com":
                body["phone"] = "12"
                request = httpx.Request(
                    request.method, request.url, headers=request.headers, json=body
                )
            return await inner.handle_async_request(request)

    source = tmp_path / "in.csv"
    source.write_text(
        "loginId,phone\nbob@example.com,+442079460018\nivan@example.com,+4915123456789\n"
    )
    out = tmp_path / "r.csv"
    summary = await run(emulator, source, out, transport=Corrupt())
    bob, ivan = read(out)
    assert (bob["status"], bob["reason"], bob["http_status"]) == ("failed", "REJECTED", "400")
    assert bob["error_code"] == "E011003"
    assert ivan["status"] == "updated"
    assert summary.exit_code == 1


async def test_faults_are_retried_until_every_row_is_updated(tmp_path: Path) -> None:
    users = [{"loginId": f"user{i}@example.com"} for i in range(60)]
    emulator = make_emulator(users)
    emulator.set_faults(
        Faults(seed=7, error_503=0.10, error_500=0.05, html_502=0.05, drop=0.05, lost_answer=0.05)
    )
    source = tmp_path / "in.csv"
    pl.DataFrame(
        {"loginId": [u["loginId"] for u in users], "phone": [f"+1415555{i:04d}" for i in range(60)]}
    ).write_csv(source)
    out = tmp_path / "r.csv"
    summary = await run(emulator, source, out, max_attempts=12)
    rows = read(out)
    assert summary.counts == {"updated": 60} and len(rows) == 60
    assert any(int(r["attempts"]) > 1 for r in rows)
    assert len(list(iter_records(journal_path(out)))) == 60
