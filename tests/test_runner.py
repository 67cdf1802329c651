"""End to end, in-process: file in -> emulator -> result file out, on both anyio backends."""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import polars as pl
import pytest
import structlog

from batchphone.config import Secret
from batchphone.emulator import Emulator, Faults, load_users
from batchphone.errors import InputError, ResumeError
from batchphone.files.journal import Journal, RunIdentity, iter_records, journal_path
from batchphone.models import RESULT_COLUMNS, RowResult, Summary
from batchphone.modes.job import Job
from tests.emulated import (
    KEY,
    LICENSE,
    PATCH_BATCH,
    PROJECT,
    UPDATE,
    Spy,
    calls,
    journal_results,
    json_answer,
    make_emulator,
    new_phones,
    phone_users,
    run_job,
    write_input,
)
from tests.virtual import VirtualClock

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
    return await run_job(emulator, command, input_path, out, transport=transport, **overrides)


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


@pytest.mark.virtual_time
async def test_budget_is_never_exceeded_at_a_scaled_limit(
    tmp_path: Path, virtual_clock: VirtualClock
) -> None:
    """Two runs on one project at once take their calls from one shared budget file."""
    users = [{"loginId": f"user{i}@example.com"} for i in range(70)]
    emulator = make_emulator(
        users, clock=virtual_clock.now, rate_limit=20, rate_window=60.0, penalty=60.0
    )
    sources = [tmp_path / "a.csv", tmp_path / "b.csv"]
    for half, source in enumerate(sources):
        pl.DataFrame(
            {
                "loginId": [u["loginId"] for u in users[half * 35 : half * 35 + 35]],
                "phone": [f"+1415555{i:04d}" for i in range(half * 35, half * 35 + 35)],
            }
        ).write_csv(source)
    summaries: list[Summary] = []

    async def one(source: Path) -> None:
        options = {"rate_calls": 20, "rate_period": 60.0, "concurrency": 16}
        out = source.with_suffix(".out.csv")
        summaries.append(await run(emulator, source, out, budget_store="file", **options))

    async with anyio.create_task_group() as group:
        for source in sources:
            group.start_soon(one, source)
    stats = emulator.stats(PROJECT)
    assert [summary.counts for summary in summaries] == [{"updated": 35}] * 2
    assert stats.rate_limited == 0 and sum(summary.rate_limited for summary in summaries) == 0
    assert stats.max_window_calls <= 20


@pytest.mark.virtual_time
async def test_a_block_mid_run_pauses_without_failing_rows(
    tmp_path: Path, virtual_clock: VirtualClock
) -> None:
    users = [{"loginId": f"user{i}@example.com"} for i in range(30)]
    emulator = make_emulator(
        users, clock=virtual_clock.now, rate_limit=1000, rate_window=60.0, penalty=60.0
    )
    emulator.block(PROJECT, 60.0)
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
    _, results = journal_results(out)
    assert sorted(r["row"] for r in results) == list(range(1, 61))  # one answer per row


# -- stopping: nothing is sent after a stop, and the result still lists every row -------------


class Counting:
    """Progress that counts the rows it was told are final."""

    def __init__(self) -> None:
        self.advanced = 0
        self.total = 0

    def start(self, total: int, *, done: int, calls_per_second: float | None) -> None:
        self.total = total

    def advance(self, result: RowResult) -> None:
        self.advanced += 1

    def paused(self, seconds: float, *, calls_per_second: float | None = None) -> None:
        pass

    def close(self) -> None:
        pass


def interrupt_on_update(emulator: Emulator, nth: int, answer: httpx.Response | None = None) -> Spy:
    """A transport that sends this process SIGINT while the ``nth`` update is on the wire."""
    seen = {"updates": 0}

    async def handler(request: httpx.Request) -> httpx.Response | None:
        if request.url.path == UPDATE:
            seen["updates"] += 1
            if seen["updates"] == nth:
                os.kill(os.getpid(), signal.SIGINT)
                return answer
        return None

    return Spy(emulator, handler)


async def execute_with_signals(
    job: Job, transport: httpx.AsyncBaseTransport, progress: Any = None, **overrides: Any
) -> Summary:
    return await run_job(
        None,
        job.command,
        job.input_path,
        job.out_path,  # type: ignore[arg-type]
        transport=transport,
        progress=progress,
        handle_signals=True,
        **overrides,
    )


async def test_rows_never_reached_are_not_journaled_but_listed(tmp_path: Path) -> None:
    rows = new_phones(3000)
    emulator = make_emulator(phone_users(3000))
    source = write_input(tmp_path / "in.csv", rows)
    out = tmp_path / "r.csv"
    progress = Counting()
    summary = await execute_with_signals(
        Job(command="run", input_path=source, out_path=out),
        interrupt_on_update(emulator, 3),
        progress,
        concurrency=2,
    )
    assert summary.exit_code == 130
    _, journaled = journal_results(out)
    assert len(journaled) < 20  # the rows sent, and the few taken from the queue
    result = read(out)
    assert [int(r["row"]) for r in result] == list(range(1, 3001))
    assert [int(r["line"]) for r in result] == list(range(2, 3002))  # the unsent ones too
    unsent = [r for r in result if r["status"] == "not_attempted"]
    assert len(unsent) > 2970 and {r["reason"] for r in unsent} == {"INTERRUPTED"}
    last = unsent[-1]
    assert (last["loginId"], last["phone_input"]) == rows[-1]  # from the input, read again
    # the bar stays where the run stopped: unsent rows do not move it
    assert progress.advanced == summary.counts.get("updated", 0) < 20
    assert calls(emulator, UPDATE) == summary.counts["updated"]


async def test_rows_waiting_for_a_slot_are_not_sent_after_a_stop(tmp_path: Path) -> None:
    emulator = make_emulator(phone_users(40))
    source = write_input(tmp_path / "in.csv", new_phones(40))
    out = tmp_path / "r.csv"
    started = time.monotonic()
    # 2 calls per 5 s: the license and the first update; 7 workers then wait for a slot
    summary = await execute_with_signals(
        Job(command="run", input_path=source, out_path=out),
        interrupt_on_update(emulator, 1),
        concurrency=8,
        rate_calls=2,
        rate_period=5.0,
        no_lookup=True,  # the budget holds the license and one update: no reads
    )
    assert time.monotonic() - started < 2.0
    assert calls(emulator, UPDATE) == 1
    assert summary.exit_code == 130 and summary.counts == {"updated": 1, "not_attempted": 39}


async def test_a_stop_during_a_429_pause_ends_the_run_at_once(tmp_path: Path) -> None:
    emulator = make_emulator(phone_users(40))
    source = write_input(tmp_path / "in.csv", new_phones(40))
    out = tmp_path / "r.csv"
    blocked = json_answer(429, {"errorCode": "E130429", "errorMessage": "rate limited"})
    blocked.headers["Retry-After"] = "60"
    started = time.monotonic()
    summary = await execute_with_signals(
        Job(command="run", input_path=source, out_path=out),
        interrupt_on_update(emulator, 2, answer=blocked),
        concurrency=1,
    )
    assert time.monotonic() - started < 2.0
    assert summary.exit_code == 130 and summary.rate_limited == 1
    assert summary.counts == {"updated": 1, "not_attempted": 39}


async def test_a_run_without_sigterm_still_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(signal, "SIGTERM")  # as on Windows
    emulator = make_emulator(phone_users(5))
    source = write_input(tmp_path / "in.csv", new_phones(5))
    summary = await execute_with_signals(
        Job(command="run", input_path=source, out_path=tmp_path / "r.csv"), emulator.transport()
    )
    assert summary.exit_code == 0 and summary.counts == {"updated": 5}


# -- every call is in the budget, and remembered ----------------------------------------------


async def test_every_call_is_journaled_and_seeds_the_limiter_after_a_crash(
    tmp_path: Path,
) -> None:
    emulator = make_emulator(phone_users(150))
    failing = {"left": 2}

    async def flaky(request: httpx.Request) -> httpx.Response | None:
        if request.url.path == UPDATE and failing["left"]:
            failing["left"] -= 1
            return json_answer(503, {"errorCode": "E000503", "errorMessage": "down"})
        return None

    spy = Spy(emulator, flaky)
    source = write_input(tmp_path / "in.csv", new_phones(150))
    out = tmp_path / "r.csv"
    summary = await run_job(emulator, "run", source, out, transport=spy)
    assert summary.counts == {"updated": 150}
    made = sum(len(bodies) for bodies in spy.bodies.values())  # reads, retries, license
    lines = journal_path(out).read_bytes().splitlines()
    assert sum(1 for line in lines if line.startswith(b'{"call":')) == made == summary.requests
    state = Journal.open(out, RunIdentity.from_header(json.loads(lines[0])["identity"])).state
    assert len(state.call_times) == made  # not only the 150 update rows


@pytest.mark.virtual_time
async def test_a_429_on_the_license_pauses_the_pool_and_counts(tmp_path: Path) -> None:
    emulator = make_emulator(phone_users(3))
    times: dict[str, list[float]] = {}

    async def license_blocked(request: httpx.Request) -> httpx.Response | None:
        times.setdefault(request.url.path, []).append(anyio.current_time())
        if request.url.path == LICENSE and len(times[LICENSE]) == 1:
            answer = json_answer(429, {"errorCode": "E130429", "errorMessage": "rate limited"})
            answer.headers["Retry-After"] = "30"
            return answer
        return None

    source = write_input(tmp_path / "in.csv", new_phones(3))
    summary = await run(emulator, source, tmp_path / "r.csv", Spy(emulator, license_blocked))
    assert summary.counts == {"updated": 3} and summary.rate_limited == 1
    assert len(times[LICENSE]) == 2
    assert min(times[UPDATE]) - times[LICENSE][0] >= 30  # the pool waited out the pause


# -- logs carry no personal data ---------------------------------------------------------------


def personal(events: list[dict[str, Any]], rows: list[tuple[str, str]]) -> list[str]:
    """Every login id or phone (as sent, or in the emulator's users) found in ``events``."""
    text = json.dumps(events, default=str)
    words = [login for login, _ in rows] + [phone for _, phone in rows]
    words += [f"+1415555{i:04d}" for i in range(len(rows))]
    return [word for word in words if word in text]


async def test_logs_carry_no_login_id_or_phone(tmp_path: Path) -> None:
    rows = new_phones(30)
    source = write_input(tmp_path / "in.csv", rows, ["true"] * 30)

    async def echoing(request: httpx.Request) -> httpx.Response | None:
        # the API's text echoes what it was sent: none of it may reach a log line
        body = json.loads(request.content) if request.content else {}
        if request.url.path in (UPDATE, PATCH_BATCH):
            return json_answer(400, {"errorCode": "E011002", "errorMessage": json.dumps(body)})
        return None

    with structlog.testing.capture_logs() as events:
        canary = make_emulator(phone_users(30))
        canary.set_faults(Faults(ignore_update=1.0))  # a canary mismatch
        first = await run_job(canary, "run", source, tmp_path / "a.csv", job={"canary": 3})
        broken = make_emulator(phone_users(30))
        circuit = await run_job(  # rejected rows, then the circuit opens
            broken, "run", source, tmp_path / "b.csv", transport=Spy(broken, echoing)
        )
        batches = make_emulator(phone_users(30))
        batch = await run_job(  # a batch failing as a whole, then each row on its own
            batches,
            "run",
            source,
            tmp_path / "c.csv",
            transport=Spy(batches, echoing),
            job={"api": "batch"},
        )
    assert first.counts["failed"] == 3 and first.stopped_reason is not None
    assert circuit.exit_code == 3 and batch.counts.get("updated", 0) == 0
    assert {"canary_failed", "circuit_open", "batch_failed", "row_failed"} <= {
        e["event"] for e in events
    }
    assert all(e["log_level"] == "warning" for e in events if e["event"] == "row_failed")
    assert personal(events, rows) == []
    assert "user0@example.com" in (tmp_path / "b.csv").read_text()  # the result file has it


# -- errors inside the pool keep their contract --------------------------------------------------


async def test_a_damaged_results_file_met_by_the_pool_raises_one_input_error(
    tmp_path: Path,
) -> None:
    # JSONL: the reader checks the first lines before the run, so the damage is met mid-stream
    results = tmp_path / "results.jsonl"
    lines = [
        json.dumps(
            {
                "row": i,
                "loginId": f"user{i}@example.com",
                "phone": f"+1415666{i:04d}",
                "status": "updated",
                "phone_before": f"+1415555{i:04d}",
                "verified_before": "true",
            }
        )
        for i in range(1, 12001)
    ]
    lines[7999] = lines[7999][:-1]  # not valid JSON at row 8000
    results.write_text("\n".join(lines) + "\n")
    emulator = make_emulator(phone_users(10), rate_limit=100_000, rate_window=1.0)
    with pytest.raises(InputError) as caught:
        await run(emulator, results, tmp_path / "undo.csv", command="undo")
    assert "line 8000: is not valid JSON" in caught.value.message


@pytest.mark.parametrize("reads", [True, False], ids=["reads", "no-lookup"])
async def test_every_row_result_is_journaled_by_the_one_consumer_task(
    samples: Path,
    sample_users: list[dict[str, Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    reads: bool,
) -> None:
    """Rows settled without a call (invalid, duplicate, unchanged, not found) take the same way
    as sent rows: the pool's consumer is the only writer of row results."""
    writers: dict[int, set[int]] = {}
    append = Journal.append

    def spy(self: Journal, result: RowResult, **kwargs: Any) -> None:
        writers.setdefault(anyio.get_current_task().id, set()).add(result.row)
        append(self, result, **kwargs)

    monkeypatch.setattr(Journal, "append", spy)
    out = tmp_path / "r.csv"
    summary = await run(
        make_emulator(sample_users), samples / "phones.csv", out, no_lookup=not reads
    )
    assert summary.counts["invalid"] == 10 and summary.counts["duplicate"] == 1
    assert len(writers) == 1, f"row results journaled from {len(writers)} tasks"
    assert sorted(next(iter(writers.values()))) == list(range(1, 25))


async def test_every_file_gives_the_row_number_the_sheet_shows(tmp_path: Path) -> None:
    """A header on Excel's row 3 and a blank row 5: the plan, the result, its journal, the undo
    and validate's report all give Excel's row numbers in ``line``; ``row`` stays the key."""
    import xlsxwriter

    emulator = make_emulator(phone_users(3))
    source = tmp_path / "fix.xlsx"
    workbook = xlsxwriter.Workbook(source)
    sheet = workbook.add_worksheet("Users")
    sheet.write_row(2, 0, ["loginId", "phone"])
    sheet.write_row(3, 0, ["user0@example.com", "+14156660000"])  # Excel row 4
    sheet.write_row(5, 0, ["user1@example.com", "not a phone"])  # row 6
    sheet.write_row(6, 0, ["user2@example.com", "+14156660002"])  # row 7
    workbook.close()

    def numbers(path: Path) -> list[tuple[str, str]]:
        return [(r["row"], r["line"]) for r in read(path)]

    expected = [("1", "4"), ("2", "6"), ("3", "7")]
    await run_job(emulator, "validate", source, tmp_path / "report.csv")
    await run_job(emulator, "plan", source, tmp_path / "plan.csv")
    assert numbers(tmp_path / "report.csv") == numbers(tmp_path / "plan.csv") == expected
    out = tmp_path / "run.csv"
    await run_job(emulator, "run", source, out)
    assert numbers(out) == expected
    journaled = {record["row"]: record.get("line") for record in iter_records(journal_path(out))}
    assert journaled == {1: 4, 2: 6, 3: 7}
    undone = tmp_path / "undo.csv"
    await run_job(emulator, "undo", out, undone)  # RESULTS is a CSV: its lines
    assert numbers(undone) == [("1", "2"), ("2", "3"), ("3", "4")]


async def test_a_sheet_named_in_another_way_resumes_the_same_run(tmp_path: Path) -> None:
    """``--sheet`` takes a name in any case or a number: every spelling of the sheet a run read
    resumes that run (its journal names the sheet as the workbook does), another sheet does not."""
    import xlsxwriter

    emulator = make_emulator(phone_users(2))
    source = tmp_path / "fix.xlsx"
    workbook = xlsxwriter.Workbook(source)
    notes = workbook.add_worksheet("Notes")
    notes.write_row(0, 0, ["loginId", "phone"])
    notes.write_row(1, 0, ["user0@example.com", "+14156660009"])
    sheet = workbook.add_worksheet("Users")
    sheet.write_row(0, 0, ["loginId", "phone"])
    sheet.write_row(1, 0, ["user0@example.com", "+14156660000"])
    sheet.write_row(2, 0, ["user1@example.com", "+14156660001"])
    workbook.close()
    out = tmp_path / "done.csv"
    first = await run_job(emulator, "run", source, out, sheet="users")
    assert first.counts == {"updated": 2}
    for spelling in ("Users", "USERS", "2"):
        again = await run_job(emulator, "run", source, out, sheet=spelling)
        assert again.resumed_rows == 2 and again.sent_now == 0, spelling
    # a journal of an older batchphone holds --sheet as it was typed: it still resumes
    lines = journal_path(out).read_bytes().split(b"\n", 1)
    header = json.loads(lines[0])
    assert header["identity"]["sheet"] == "Users"
    header["identity"]["sheet"] = "2"
    journal_path(out).write_bytes(json.dumps(header).encode() + b"\n" + lines[1])
    again = await run_job(emulator, "run", source, out, sheet="users")
    assert again.resumed_rows == 2 and again.sent_now == 0
    with pytest.raises(ResumeError, match="option sheet changed"):
        await run_job(emulator, "run", source, out, sheet="Notes")


async def test_the_summary_names_the_short_sheet_it_wrote(tmp_path: Path) -> None:
    """``--columns`` writes ``<name>.short<ext>`` beside the result file: the summary (and its
    table, and --summary-json) says where, so a support person finds the sheet to send back."""
    from batchphone.render import summary_lines

    emulator = make_emulator(phone_users(2))
    source = write_input(tmp_path / "in.csv", new_phones(2))
    out = tmp_path / "done.xlsx"
    summary = await run_job(emulator, "run", source, out, columns=("loginId", "status"))
    short = tmp_path / "done.short.xlsx"
    assert short.exists() and summary.short_path == str(short)
    assert summary.to_json()["short_path"] == str(short)
    assert f"  short sheet: {short}" in summary_lines(summary, "run", "500/60")
    named = tmp_path / "check-short.csv"
    report = await run_job(emulator, "validate", source, tmp_path / "check.csv", short_out=named)
    assert named.exists() and report.short_path == str(named)
    plain = await run_job(emulator, "run", source, tmp_path / "plain.csv")
    assert plain.short_path is None and "short_path" not in plain.to_json()
