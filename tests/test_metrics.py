"""metrics.py and --metrics-file: Prometheus text for node_exporter, at every exit."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner, Result
from prometheus_client.parser import text_string_to_metric_families

from batchphone.cli import main
from batchphone.files.metrics import LAST_SUCCESS, write_metrics
from batchphone.models import Summary


def values(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the file, read back with prometheus-client's own parser."""
    text = path.read_text(encoding="utf-8")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def one(path: Path, name: str, **labels: str) -> float | None:
    wanted = tuple(sorted({"command": "run", **labels}.items()))
    return values(path).get((name, wanted))


def summary(exit_code: int, finished_ts: float, **kw: object) -> Summary:
    fields: dict[str, object] = {
        "input_rows": 10,
        "counts": {"updated": 7, "not_found": 2, "invalid": 1},
        "requests": 12,
        "rate_limited": 3,
        "elapsed_s": 4.5,
        "exit_code": exit_code,
        "finished_ts": finished_ts,
    }
    return Summary(**{**fields, **kw})  # type: ignore[arg-type]


def test_the_figures_of_a_run(tmp_path: Path) -> None:
    path = tmp_path / "sync.prom"
    write_metrics(path, summary(1, 1_800_000_000.0), command="run")
    assert one(path, "batchphone_rows", status="updated") == 7
    assert one(path, "batchphone_rows", status="not_found") == 2
    assert one(path, "batchphone_rows", status="failed") == 0  # every status, zeros too
    assert one(path, "batchphone_api_calls") == 12
    assert one(path, "batchphone_rate_limited_calls") == 3
    assert one(path, "batchphone_elapsed_seconds") == 4.5
    assert one(path, "batchphone_exit_code") == 1
    assert one(path, "batchphone_input_rows") == 10
    assert one(path, LAST_SUCCESS) == 1_800_000_000.0  # exit 1 went through to the end
    assert one(path, "batchphone_last_run_timestamp_seconds") == 1_800_000_000.0
    # node_exporter runs as another user: readable by all, written by the owner only
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["sync.prom"]  # no temp file left


@pytest.mark.parametrize("failed", [3, 130, 2])
def test_a_failed_run_keeps_the_last_success_of_the_file_before(
    tmp_path: Path, failed: int
) -> None:
    path = tmp_path / "sync.prom"
    write_metrics(path, summary(0, 1_800_000_000.0), command="run")
    later = summary(failed, 1_800_090_000.0) if failed != 2 else None
    write_metrics(path, later, command="run", exit_code=failed, now=1_800_090_000.0)
    assert one(path, LAST_SUCCESS) == 1_800_000_000.0
    assert one(path, "batchphone_exit_code") == failed
    assert one(path, "batchphone_last_run_timestamp_seconds") == 1_800_090_000.0
    if later is None:  # no run, no figures: an absent series is not a zero
        assert one(path, "batchphone_api_calls") is None


def test_no_success_yet_and_a_damaged_file_are_no_last_success(tmp_path: Path) -> None:
    path = tmp_path / "sync.prom"
    write_metrics(path, summary(3, 1_800_000_000.0), command="run")
    assert one(path, LAST_SUCCESS) is None
    path.write_text("not { prometheus\n")
    write_metrics(path, summary(3, 1_800_000_000.0), command="run")
    assert one(path, LAST_SUCCESS) is None and one(path, "batchphone_exit_code") == 3


def test_a_failed_write_leaves_the_old_file_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "sync.prom"
    write_metrics(path, summary(0, 1_800_000_000.0), command="run")
    before = path.read_bytes()

    def broken(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError):
        write_metrics(path, summary(3, 1_800_000_500.0), command="run")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["sync.prom"]


def test_the_summary_holds_the_same_figures(samples: Path, tmp_path: Path) -> None:
    import batchphone

    done = batchphone.run(
        samples / "phones.csv", out=tmp_path / "r.csv", target=batchphone.Target.emulator()
    )
    path = tmp_path / "sync.prom"
    write_metrics(path, done, command="run")
    assert done.completed and done.finished_ts > 0
    assert one(path, LAST_SUCCESS) == pytest.approx(done.finished_ts)
    assert one(path, "batchphone_api_calls") == done.calls
    for status, n in done.counts.items():
        assert one(path, "batchphone_rows", status=status) == n


# -- the CLI: every exit --------------------------------------------------------------------


def invoke(args: list[str]) -> Result:
    env = {"DESCOPE_PROJECT_ID": "", "DESCOPE_MANAGEMENT_KEY": "", "DESCOPE_BASE_URI": ""}
    return CliRunner().invoke(main, args, env=env, catch_exceptions=False)


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def test_every_exit_writes_the_file(
    samples: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prom = tmp_path / "sync.prom"
    good = tmp_path / "good.csv"
    pl.DataFrame({"loginId": ["a@x.io"], "phone": ["+14155550100"]}).write_csv(good)
    flag = ["--metrics-file", str(prom)]

    def exit_code_of(args: list[str]) -> float | None:
        result = invoke([*args, *flag])
        assert str(result.exit_code) in {"0", "1", "2", "3", "130"}, result.output
        written = values(prom)
        command = args[0]
        code = written[("batchphone_exit_code", (("command", command),))]
        assert code == result.exit_code
        return written.get((LAST_SUCCESS, (("command", command),)))

    first = exit_code_of(["validate", str(good)])  # 0
    assert first is not None
    assert exit_code_of(["validate", str(samples / "phones.csv")]) is not None  # 1
    second = values(prom)[(LAST_SUCCESS, (("command", "validate"),))]
    assert second >= first
    assert exit_code_of(["validate", str(tmp_path / "missing.csv")]) == second  # 2
    # a command line click cannot parse: exit 2 all the same, the file too
    assert exit_code_of(["validate", str(good), "--limit", "many"]) == second

    # 130: Ctrl-C while the command starts
    from batchphone import api

    def interrupted(*args: object, **kwargs: object) -> Summary:
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "validate", interrupted)
    assert exit_code_of(["validate", str(good)]) == second

    # 3: the key refused (a real socket, the emulator behind it)
    from batchphone.emulator import Emulator, ProjectSettings
    from batchphone.emulator.server import ServerThread

    emulator = Emulator(projects=[ProjectSettings("P2metricsProject", "K2-right", users=[])])
    with ServerThread(emulator, port=0) as base_url:
        result = CliRunner().invoke(
            main,
            ["run", str(good), "--out", str(tmp_path / "r.csv"), *flag],
            env={
                "DESCOPE_PROJECT_ID": "P2metricsProject",
                "DESCOPE_MANAGEMENT_KEY": "K2-wrong",
                "DESCOPE_BASE_URI": base_url,
            },
        )
    assert result.exit_code == 3, result.output
    assert one(prom, "batchphone_exit_code") == 3
    assert one(prom, LAST_SUCCESS) is None  # a run never succeeded here (validates did)
    assert one(prom, "batchphone_rows", status="not_attempted") == 1


def test_an_unwritable_metrics_file_is_an_error_exit(samples: Path, tmp_path: Path) -> None:
    document = tmp_path / "summary.json"
    result = invoke(
        [
            "validate",
            str(samples / "phones.csv"),
            "--metrics-file",
            str(tmp_path / "no" / "such" / "sync.prom"),
            "--summary-json",
            str(document),
        ]
    )
    assert result.exit_code == 1
    assert "cannot write --metrics-file" in result.stderr
    assert json.loads(document.read_text())["exit_code"] == 1  # the other file is still written
