"""Tests of the bench's own logic: figures, inputs, profiles, the report and the baselines' rules.

No timed assertion here (the numbers belong in results.md). The baselines are tested against
the emulator on a loopback port with a fake clock, so a 429's Retry-After costs no real time.
Run with ``pytest bench/tests``.
"""

from __future__ import annotations

import asyncio
import csv
import io
import sys
from collections.abc import Iterator
from pathlib import Path

import phonenumbers
import pytest
from descope import DescopeClient

from batchphone.emulator import Emulator, ProjectSettings, generate_users
from batchphone.emulator.server import ServerThread
from bench import data
from bench.baselines import httpx_raw, sdk_loop
from bench.harness import measure, sustained_rate
from bench.profile import package_of, summarize
from bench.report import Row, write_markdown

PROJECT = "P2benchtest0000000000000000000"
KEY = "K2benchtestkey"


def test_sustained_rate_sees_through_a_burst_staircase() -> None:
    # 50 calls at the start of each of 20 windows of 1 s: 1,000 calls, last at t=19
    staircase = [float(window) for window in range(20) for _ in range(50)]
    spaced = [i / 50 for i in range(1000)]
    assert sustained_rate(staircase) == pytest.approx(50, rel=0.01)
    assert sustained_rate(spaced) == pytest.approx(50, rel=0.001)
    # the naive (n-1)/span overrates the staircase by a whole window
    assert (len(staircase) - 1) / (staircase[-1] - staircase[0]) > 52


def test_sustained_rate_needs_a_span() -> None:
    assert sustained_rate([1.0, 2.0]) is None
    assert sustained_rate([3.0, 3.0, 3.0]) is None


def test_update_phones_are_distinct_and_valid() -> None:
    phones = [data.update_phone(i) for i in range(0, 200_000, 997)]
    assert len(set(phones)) == len(phones)
    assert all(phonenumbers.is_valid_number(phonenumbers.parse(p)) for p in phones[:200])


def test_mixed_rows_are_deterministic_and_repeat_about_thirty_percent() -> None:
    rows = list(data.mixed_rows(20_000))
    assert rows == list(data.mixed_rows(20_000))
    assert len({login for login, _, _ in rows}) == len(rows)
    # 30% of the rows repeat an earlier row's cell; fresh numbers almost never collide
    numbers = [phone for _, phone, _ in rows if phone not in data._GARBAGE]
    assert 0.29 < 1 - len(set(numbers)) / len(numbers) < 0.31
    assert any(region for _, _, region in rows)


def test_generated_csv_round_trips(tmp_path: Path) -> None:
    path = data.mixed_csv(tmp_path, 500)
    read = [(r["loginId"], r["phone"], r["region"]) for r in csv.DictReader(path.open())]
    assert read == list(data.mixed_rows(500))
    assert not list(tmp_path.glob("*.partial"))


def test_package_of_names_the_owner_of_a_frame() -> None:
    assert package_of("/v/lib/python3.11/site-packages/httpcore/_async/http11.py") == "httpcore"
    assert package_of("/work/main/batchphone/runner.py") == "batchphone"
    assert package_of("/usr/lib/python3.11/asyncio/events.py") == "stdlib"
    assert package_of("<string>") == "generated code"


def test_summarize_counts_self_and_inclusive_time() -> None:
    raw = "\n".join(
        [
            "main (/w/batchphone/cli.py:1);send (/s/site-packages/httpcore/pool.py:9) 30",
            "main (/w/batchphone/cli.py:1);norm (/w/batchphone/normalize.py:5) 10",
            "garbage line",
        ]
    )
    profile = summarize(raw)
    assert profile.samples == 40
    assert dict(profile.by_package) == {"httpcore": 0.75, "batchphone": 0.25}
    # main holds every sample: an entry point, left out of the inclusive list
    assert dict(profile.inclusive) == {"`send` (pool.py)": 0.75, "`norm` (normalize.py)": 0.25}


def test_markdown_marks_the_missed_targets(tmp_path: Path) -> None:
    rows = [
        Row("1 budget", "batchphone", "rows/s", 49.0, "rows/s", 50.0, "budget", ">= 0.97", True),
        Row("4 validate", "batchphone", "rows/s", 20.0, "rows/s", 40.0, "loop", ">= 1.0", False),
    ]
    assert rows[1].ratio == 0.5
    path = tmp_path / "results.md"
    described = {"date": "today", "cores": "2"}
    write_markdown(
        path, rows, described=described, mode="quick", command="c", elapsed_s=1, notes=["n1"]
    )
    text = path.read_text()
    assert "| 1 budget | batchphone | rows/s | 49.0 rows/s | 50.0 budget | 0.980 |" in text
    assert "| **NO** |" in text
    assert "- missed: 4 validate, batchphone, rows/s: 20.0 rows/s against >= 1.0" in text
    assert "- n1" in text


def test_measure_reports_the_childs_own_exit_and_rss(tmp_path: Path) -> None:
    code = "import sys; b = bytearray(80 * 2**20); print('hi'); sys.exit(3)"
    measured = measure([sys.executable, "-c", code], cwd=tmp_path)
    assert measured.returncode == 3
    assert measured.stdout.strip() == "hi"
    assert measured.max_rss_mb > 80


class _FakeClock:
    """The emulator's clock, moved only by the baseline's sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock() -> _FakeClock:
    return _FakeClock()


@pytest.fixture
def served(clock: _FakeClock) -> Iterator[str]:
    """An emulator of 3 calls per 5 s, 5 s block, on a loopback port, on a fake clock."""
    project = ProjectSettings(
        PROJECT, KEY, rate_limit=3, rate_window=5, penalty=5, users=generate_users(10)
    )
    with ServerThread(Emulator([project], clock=clock), port=0) as base_url:
        yield base_url


def test_sdk_loop_sleeps_the_retry_after_and_resends(
    served: str, clock: _FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bench.baselines.sdk_loop.time.sleep", clock.sleep)
    client = DescopeClient(PROJECT, management_key=KEY, base_url=served)
    results = [
        sdk_loop.update_one(client, f"user{i}@example.com", data.update_phone(i)) for i in range(4)
    ]
    # the 4th call exceeds 3 per 10 s: a 5 s block, slept once, then the row goes through
    assert results == [("updated", "", 0)] * 3 + [("updated", "", 1)]
    assert clock.slept == [5.0]
    assert sdk_loop.update_one(client, "nobody@example.com", "+14155550100")[0] == "failed"


def test_httpx_raw_posts_every_row_and_counts_the_answers(served: str) -> None:
    rows = iter(
        [{"loginId": f"user{i}@example.com", "phone": data.update_phone(i)} for i in (1, 2)]
    )
    rows_with_unknown = iter([*rows, {"loginId": "nobody@example.com", "phone": "+14155550100"}])
    counts = asyncio.run(
        httpx_raw.post_all(served, PROJECT, KEY, rows_with_unknown, 2, per_worker=True)
    )
    assert counts == {200: 2, 404: 1}


def test_sdk_loop_main_writes_one_line_per_row(
    served: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = data.update_csv(tmp_path, 3)
    out = tmp_path / "out.csv"
    monkeypatch.setenv("DESCOPE_PROJECT_ID", PROJECT)
    monkeypatch.setenv("DESCOPE_MANAGEMENT_KEY", KEY)
    monkeypatch.setenv("DESCOPE_BASE_URI", served)
    assert sdk_loop.main([str(source), "--out", str(out)]) == 0
    lines = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [line["status"] for line in lines] == ["updated"] * 3


def test_national_mix_is_mostly_national_numbers_with_their_region(tmp_path: Path) -> None:
    path = data.national_csv(tmp_path, 5_000)
    rows = [(r["phone"], r["region"]) for r in csv.DictReader(path.open())]
    assert rows == [(p, r) for _, p, r in data.mixed_rows(5_000, seed=6, mix=data.NATIONAL_MIX)]
    national = [(p, r) for p, r in rows if r and not p.startswith("+")]
    assert len(national) > 0.6 * len(rows)
    assert {"(", "0 20 7"} <= {p[:1] for p, _ in national} | {p[:6] for p, _ in national}
    assert {r for _, r in national} == {"US", "GB", "FR", "DE"}
    parsed = [phonenumbers.parse(p, r) for p, r in national[:300] if p[0] != "O"]
    assert sum(map(phonenumbers.is_valid_number, parsed)) > 0.7 * len(parsed)


def test_plot_of_a_subset_of_scenarios(tmp_path: Path) -> None:
    """``--only validate`` draws its panels and leaves the others empty (no log-scale error)."""
    from bench.report import Row, write_plot

    rows = [
        Row("4 validate 1,000 rows", "batchphone validate", "rows/s, wall", 30.0, bound=20.0),
        Row("4 validate national 1,000 rows", "batchphone validate", "rows/s, wall", 25.0),
        Row("4 validate national 1,000 rows", "batchphone validate", "peak RSS", 110.0),
    ]
    write_plot(tmp_path / "results.png", rows, title="subset")
    assert (tmp_path / "results.png").stat().st_size > 0
