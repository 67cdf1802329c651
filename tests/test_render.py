"""render.py: the bar and its ETA, the summary table, JSON lines, and no key in any of them.

tqdm writes into pytest's captured stderr (``capsys``), never a terminal; the bar's clock
(``render.time.monotonic``) is a fake the tests move by hand, so nothing sleeps.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
import structlog

from batchphone import render
from batchphone.config import Secret, Settings
from batchphone.logs import get_logger
from batchphone.models import NotValidRow, RowResult, Status, Summary
from batchphone.render import (
    Output,
    TqdmProgress,
    configure_logging,
    duration,
    error_document,
    json_logs,
    summary_lines,
    write_summary_json,
)

KEY = "K2-super-secret-management-key-0123456789"


class FakeClock:
    """``time.monotonic`` for the bar: moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(render, "time", SimpleNamespace(monotonic=fake.monotonic))
    return fake


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """configure_logging changes structlog's global state: undo it for the next test."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def _row(n: int, status: Status = Status.UPDATED, attempts: int = 1, **kw: object) -> RowResult:
    return RowResult(
        row=n, login_id=None, phone_input=None, phone=None, status=status, attempts=attempts, **kw
    )  # type: ignore[arg-type]


def _last_postfix(text: str) -> str:
    """The postfix of the last bar line tqdm drew (lines are separated by carriage returns)."""
    drawn = [line for line in re.split(r"[\r\n]", text) if line.strip()]
    assert drawn, "the bar drew nothing"
    last = drawn[-1]
    return last[last.index("[") :]


def _eta(text: str) -> str | None:
    match = re.search(r"budget ETA (\S+?)[,\]]", _last_postfix(text))
    return match.group(1) if match else None


# -- the ETA ------------------------------------------------------------------------------


def test_eta_is_the_rows_left_times_calls_per_row_over_the_budget(
    clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    """100 rows done of 600, half of them needed a call: 500 rows left need about 250 calls,
    at 5 calls/s that is 50 s, whatever the observed rate was (the local rows went fast)."""
    bar = TqdmProgress()
    bar.start(600, done=0, calls_per_second=5.0)
    for n in range(100):
        bar.advance(_row(n, Status.UPDATED if n % 2 else Status.INVALID, attempts=n % 2))
    bar.close()
    assert _eta(capsys.readouterr().err) == "0m50s"


def test_eta_of_a_resumed_run_counts_only_the_rows_left_and_this_run_s_rows(
    clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    """400 rows were final before the restart (no call now): they are neither rows left nor
    rows that tell how many calls a row needs."""
    bar = TqdmProgress()
    bar.start(1000, done=400, calls_per_second=5.0)
    for n in range(100):
        bar.advance(_row(401 + n, attempts=n % 2))
    bar.close()
    err = capsys.readouterr().err
    assert "500/1000" in err  # the 400 count as done: the bar starts there
    # 500 left x 50/100 calls per row / 5 per s
    assert _eta(err) == "0m50s"


def test_no_eta_without_a_budget_or_before_the_first_row(
    clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    validate = TqdmProgress()
    validate.start(10, done=0, calls_per_second=None)  # validate: no API, no budget
    validate.advance(_row(1, Status.VALID, attempts=0))
    validate.close()
    assert "ETA" not in capsys.readouterr().err
    fresh = TqdmProgress()
    fresh.start(10, done=0, calls_per_second=5.0)
    fresh.paused(3)  # refreshes the bar before any row is final
    fresh.close()
    assert "ETA" not in capsys.readouterr().err


def test_a_429_pause_shows_counts_down_and_goes(
    clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    bar = TqdmProgress()
    bar.start(100, done=0, calls_per_second=5.0)
    bar.advance(_row(1))
    bar.paused(60)
    assert "PAUSED by API 429: 60s" in _last_postfix(capsys.readouterr().err)
    clock.now += 20
    bar.paused(40)  # another answer of the same block: the bar shows the later end
    assert "PAUSED by API 429: 40s" in _last_postfix(capsys.readouterr().err)
    clock.now += 41
    bar.advance(_row(2))
    bar.close()
    assert "PAUSED" not in _last_postfix(capsys.readouterr().err)


def test_the_pause_counts_down_while_no_row_moves(
    clock: FakeClock, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """During a block nothing advances: the bar must still count down, then drop the pause
    (it showed the first figure until the next row, found by this test)."""
    import threading
    import time as real_time

    monkeypatch.setattr(TqdmProgress, "TICK", 0.01, raising=False)
    bar = TqdmProgress()
    bar.start(100, done=0, calls_per_second=5.0)
    bar.advance(_row(1))
    bar.paused(60)
    assert "PAUSED by API 429: 60s" in _last_postfix(capsys.readouterr().err)
    ticker = next(t for t in threading.enumerate() if t.name == "batchphone-progress")

    def shown_after(seconds: float) -> str:
        clock.now += seconds
        deadline = real_time.monotonic() + 5
        err = ""
        while real_time.monotonic() < deadline:
            real_time.sleep(0.02)
            err += capsys.readouterr().err
            if err:
                return _last_postfix(err)
        return ""

    assert "PAUSED by API 429: 35s" in shown_after(25)
    assert "PAUSED" not in shown_after(40)  # over: drawn once more, without it
    ticker.join(5)  # and the thread ends with the pause, not with the run
    assert not ticker.is_alive()
    bar.close()


def test_the_eta_includes_the_pause_left(
    clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    """No call starts while the API blocks us: the earliest end is the pause left plus the
    calls left at the budget (found by this test: the ETA ignored the pause)."""
    bar = TqdmProgress()
    bar.start(600, done=0, calls_per_second=5.0)
    for n in range(100):
        bar.advance(_row(n, attempts=n % 2))
    bar.paused(120)
    assert _eta(capsys.readouterr().err) == "2m50s"  # 120 s + 250 calls / 5 per s
    clock.now += 60
    bar.close()
    assert _eta(capsys.readouterr().err) == "1m50s"


class _FrozenClock:
    def now(self) -> float:
        return 0.0

    async def sleep(self, seconds: float) -> None:
        raise AssertionError("nothing sleeps here")


def test_after_a_429_the_eta_uses_the_lowered_budget(
    clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    from batchphone.remote.calls import SlowDown
    from batchphone.remote.ratelimit import RateLimiter

    limiter = RateLimiter(100, 20.0, clock=_FrozenClock())  # 5 calls/s
    bar = TqdmProgress()
    bar.start(600, done=0, calls_per_second=limiter.log.calls / limiter.period)
    for n in range(100):
        bar.advance(_row(n, attempts=n % 2))
    SlowDown(limiter, bar)(0.0)  # a 429 (no wait, to keep the pause out of the sum)
    assert limiter.log.calls == 90
    bar.close()
    assert _eta(capsys.readouterr().err) == "0m55s"  # 250 calls at 4.5 per s


def test_duration() -> None:
    assert [duration(s) for s in (0, 59.9, 75, 3599, 3700)] == [
        "0m00s",
        "0m59s",
        "1m15s",
        "59m59s",
        "1h01m",
    ]


# -- the summary ----------------------------------------------------------------------------


def _summary(**kw: object) -> Summary:
    fields: dict[str, object] = {
        "input_rows": 200,
        "counts": {"updated": 150, "failed": 7, "unchanged": 43},
        "requests": 181,
        "rate_limited": 4,
        "elapsed_s": 12.34,
        "exit_code": 1,
        "result_path": "/tmp/results.csv",
    }
    return Summary(**{**fields, **kw})  # type: ignore[arg-type]


def test_the_summary_table_lists_counts_calls_and_where_the_results_are() -> None:
    lines = summary_lines(_summary(), "run", "500/60s")
    table = "\n".join(lines)
    assert lines[0] == "run: 200 rows in 12.3s"
    for name, n in [("updated", 150), ("unchanged", 43), ("failed", 7)]:
        assert re.search(rf"^  {name} +{n}$", table, re.M), name
    assert re.search(r"^  API calls +181$", table, re.M)
    assert re.search(r"^  rate limited +4$", table, re.M)
    assert "results: /tmp/results.csv" in table
    assert render.RESUME_HINT not in table  # exit 1: nothing to resume
    assert "API calls" not in "\n".join(summary_lines(_summary(), "validate", "500/60s"))


@pytest.mark.parametrize("exit_code", [3, 130])
def test_a_stopped_run_s_table_says_why_and_how_to_resume(exit_code: int) -> None:
    summary = _summary(
        exit_code=exit_code,
        stopped_reason="circuit open",
        resumed_rows=120,
        sent_now=1,
        next_step=render.RESUME_HINT,
    )
    table = "\n".join(summary_lines(summary, "run", "500/60s"))
    assert "stopped: circuit open" in table and f"next: {render.RESUME_HINT}" in table
    assert "resumed: 120 rows already final; 1 sent now; API calls this time: 181" in table


def test_a_plan_says_how_long_a_run_takes_at_least() -> None:
    summary = _summary(planned_calls=1000, planned_s=120.0, exit_code=0)
    table = "\n".join(summary_lines(summary, "plan", "500/60s"))
    assert "a run needs about 1000 API calls: at least 2m00s at a budget of 500/60s" in table


def _json_lines(err: str) -> list[dict[str, object]]:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines
    events = [json.loads(line) for line in lines]  # each line is one JSON document
    for event in events:
        assert {"event", "level", "timestamp"} <= event.keys(), event
        datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00"))
    return events


def test_json_mode_writes_only_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", quiet=False)
    get_logger().info("row_done", row=3)
    output = Output(json_mode=True)
    output.note("emulator", "emulator: 3 users", users=3)
    summary = _summary(
        exit_code=3,
        stopped_reason="canary: user u1 has +15551234567",
        next_step=render.RESUME_HINT,
    )
    output.summary(summary, "run", "500/60s")
    output.error("the input has no phone column", 2)
    events = _json_lines(capsys.readouterr().err)
    assert [(e["event"], e["level"]) for e in events] == [
        ("row_done", "info"),
        ("emulator", "info"),
        ("summary", "info"),
        ("error", "error"),
    ]
    summary_event, error_event = events[2], events[3]
    assert summary_event["exit_code"] == 3 and summary_event["requests"] == 181
    assert summary_event["counts"] == {"failed": 7, "unchanged": 43, "updated": 150}
    assert summary_event["hint"] == render.RESUME_HINT
    assert "stopped_reason" not in summary_event  # it may quote a row: not in logs
    assert error_event["exit_code"] == 2 and error_event["message"]


def test_debug_keeps_the_stop_reason_and_quiet_drops_the_summary(
    capsys: pytest.CaptureFixture[str],
) -> None:
    summary = _summary(exit_code=3, stopped_reason="HTTP 401")
    Output(json_mode=True, debug=True).summary(summary, "run", "500/60s")
    assert _json_lines(capsys.readouterr().err)[0]["stopped_reason"] == "HTTP 401"
    Output(json_mode=True, quiet=True).summary(summary, "run", "500/60s")
    Output(json_mode=False, quiet=True).summary(summary, "run", "500/60s")
    assert capsys.readouterr().err == ""


def test_text_mode_error_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    Output(json_mode=False).error("no such file: in.csv", 2)
    assert capsys.readouterr().err == "batchphone: error: no such file: in.csv\n"


def test_quiet_logging_keeps_warnings_and_hide_drops_fields(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("json", quiet=True, hide=("result_path",))
    log = get_logger()
    log.info("run_started", rows=3)
    log.warning("row_failed", row=2, result_path="/tmp/x/report.csv")
    (event,) = _json_lines(capsys.readouterr().err)
    assert event["event"] == "row_failed" and event["level"] == "warning"
    assert "result_path" not in event and event["row"] == 2


def test_json_logs_follows_the_choice_and_auto_the_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for tty in (True, False):
        monkeypatch.setattr("sys.stderr", SimpleNamespace(isatty=lambda tty=tty: tty))
        assert json_logs("json") and not json_logs("console")
        assert json_logs("auto") is (not tty)


def test_documents_for_schedulers(tmp_path: Path) -> None:
    shown = NotValidRow(4, "invalid", "MISSING_REGION", "add a region")
    document = _summary(result_path=None, exit_code=1, not_valid=(shown,)).to_json()
    assert document["sent_now"] == 0 and document["exit_code"] == 1
    assert document["not_valid"][0]["row"] == 4
    assert error_document("bad --rate", 2) == {
        "input_rows": None,
        "counts": {},
        "requests": None,
        "rate_limited": None,
        "elapsed_s": None,
        "exit_code": 2,
        "result_path": None,
        "error": "bad --rate",
    }
    path = tmp_path / "summary.json"
    write_summary_json(path, document)
    assert json.loads(path.read_text()) == document
    assert path.stat().st_mode & 0o777 == 0o600


# -- the management key ---------------------------------------------------------------------


def test_nothing_rendered_shows_the_management_key(
    clock: FakeClock, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A Settings holding the key passes through every way render.py writes: logs (both
    renderers), notes, summaries, documents, the bar. The key appears in none of them."""
    settings = Settings(project_id="P2abc", management_key=Secret(KEY), base_url="http://x")
    secret = settings.management_key
    rendered: list[str] = []
    for log_format, json_mode in [("json", True), ("console", False)]:
        configure_logging(log_format, quiet=False)
        get_logger().warning("settings_loaded", settings=settings, key=secret)
        output = Output(json_mode=json_mode, debug=True)
        output.note("emulator", f"target {settings}", settings=settings, key=secret)
        summary = _summary(exit_code=3, stopped_reason=f"HTTP 401 for {settings}")
        output.summary(summary, "run", "500/60s")
        output.error(f"refused: {secret}", 3)
        rendered.append("\n".join(summary_lines(summary, "run", "500/60s")))
    bar = TqdmProgress()
    bar.start(2, done=0, calls_per_second=1.0)
    bar.advance(_row(1, error_message=str(secret)))
    bar.close()
    path = tmp_path / "s.json"
    write_summary_json(path, {**_summary().to_json(), "settings": str(settings)})
    rendered += [capsys.readouterr().err, path.read_text()]
    assert "Secret('********')" in rendered[-2]  # the key was there to leak, masked
    for text in rendered:
        assert KEY not in text


@pytest.mark.parametrize(
    ("log_format", "debug", "shown"),
    [("console", False, False), ("console", True, True), ("json", False, True)],
)
def test_console_logs_leave_the_table_events_to_the_table(
    capsys: pytest.CaptureFixture[str], log_format: str, debug: bool, shown: bool
) -> None:
    configure_logging(log_format, quiet=False, debug=debug)
    log = get_logger()
    log.info("run_started", rows=3)
    log.warning("row_failed", row=2)
    log.info("run_finished", exit_code=0)
    log.info("emulator_users", users=3)  # the CLI's own note says it, once
    err = capsys.readouterr().err
    assert "row_failed" in err and "emulator_users" not in err
    assert ("run_started" in err) is shown and ("run_finished" in err) is shown
