"""The public API: run/validate/plan/undo on a Target, quiet, explicit, and safe to call."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import anyio
import polars as pl
import pytest
import structlog

import batchphone
from batchphone import Command, InputError, Secret, Settings, Target, UsageError
from batchphone.emulator import Emulator, ProjectSettings, load_users
from batchphone.emulator.server import ServerThread
from batchphone.modes.job import Job
from batchphone.modes.rehearsal import EMULATOR_BASE_URL, EMULATOR_PROJECT_ID

PROJECT = "P2batchphoneApiProject0000000000"
KEY = "K2-api-management-key-never-shown-7"
FAST = "10000/1"  # a budget the tests never reach


@pytest.fixture
def served(samples: Path) -> Iterator[tuple[Emulator, str]]:
    """The emulator on a loopback socket: a real target, as a scheduled job would have."""
    users = load_users(samples / "users.csv")
    emulator = Emulator(projects=[ProjectSettings(PROJECT, KEY, users=users)])
    with ServerThread(emulator, port=0) as base_url:
        yield emulator, base_url


@pytest.fixture(autouse=True)
def _unconfigured_logging(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Each test starts as a fresh Python process would: structlog not configured (other
    tests' CLI calls configure it), and no ./config.toml."""
    monkeypatch.chdir(tmp_path)
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def calls(emulator: Emulator) -> int:
    return sum(emulator.stats(PROJECT).requests.values())


def target(base_url: str) -> Target:
    return Target(project_id=PROJECT, management_key=Secret(KEY), base_url=base_url)


def test_a_run_against_the_emulator_over_a_socket(
    served: tuple[Emulator, str], samples: Path, tmp_path: Path
) -> None:
    emulator, base_url = served
    out = tmp_path / "results.csv"
    summary = batchphone.run(
        samples / "phones.csv", out=out, target=target(base_url), rate=FAST, concurrency=4
    )
    assert summary.exit_code == 1  # the samples have invalid rows
    assert summary.counts["updated"] == 10
    assert summary.result_path == str(out)
    assert summary.calls == summary.requests == calls(emulator) > 0
    assert len(pl.read_csv(out, infer_schema=False)) == summary.input_rows == 24
    assert emulator.users(PROJECT)[0]["phone"] == "+14155550132"  # alice's row was sent


def test_a_typod_keyword_is_a_type_error_and_no_call(
    served: tuple[Emulator, str], samples: Path, tmp_path: Path
) -> None:
    emulator, base_url = served
    with pytest.raises(TypeError, match="no_lookups"):
        batchphone.run(  # type: ignore[call-arg]
            samples / "phones.csv", out=tmp_path / "r.csv", target=target(base_url), no_lookups=True
        )
    with pytest.raises(TypeError, match="skip_unchanged"):  # removed: reads are the default
        batchphone.run(  # type: ignore[call-arg]
            samples / "phones.csv",
            out=tmp_path / "r.csv",
            target=target(base_url),
            skip_unchanged=True,
        )
    with pytest.raises(TypeError, match="canary"):  # plan has no --canary
        batchphone.plan(samples / "phones.csv", out=tmp_path / "p.csv", canary=2)  # type: ignore[call-arg]
    assert calls(emulator) == 0
    assert not (tmp_path / "r.csv").exists()


@pytest.mark.parametrize(
    ("keyword", "value", "message"),
    [
        ("rate", "fast", "rate: bad value 'fast' (keyword rate=): expected N/SECONDS"),
        ("concurrency", 0, "concurrency: bad value '0' (keyword concurrency=)"),
        ("default_region", "UK", 'did you mean "GB"'),
        ("columns", "row,nope", "unknown column 'nope'"),
        ("api", "bulk", "expected one of update, batch"),
        ("canary", -1, "canary: bad value '-1'"),
    ],
)
def test_a_bad_value_is_a_usage_error_before_any_call(
    served: tuple[Emulator, str],
    samples: Path,
    tmp_path: Path,
    keyword: str,
    value: object,
    message: str,
) -> None:
    emulator, base_url = served
    with pytest.raises(UsageError) as caught:
        batchphone.run(
            samples / "phones.csv",
            out=tmp_path / "r.csv",
            target=target(base_url),
            **{keyword: value},  # type: ignore[arg-type]
        )
    assert message in caught.value.message
    assert calls(emulator) == 0
    assert list(tmp_path.iterdir()) == []


def test_target_emulator_never_reaches_descope_base_uri(
    served: tuple[Emulator, str], samples: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator, base_url = served
    # the environment names a live project: the emulator must not even look at it
    monkeypatch.setenv("DESCOPE_BASE_URI", base_url)
    monkeypatch.setenv("DESCOPE_PROJECT_ID", PROJECT)
    monkeypatch.setenv("DESCOPE_MANAGEMENT_KEY", KEY)
    rehearsal = Target.emulator()
    assert rehearsal.is_emulator and rehearsal.base_url == EMULATOR_BASE_URL
    assert rehearsal.project_id == EMULATOR_PROJECT_ID
    summary = batchphone.run(samples / "phones.csv", out=tmp_path / "r.csv", target=rehearsal)
    assert summary.counts["updated"] > 0 and summary.calls > 0
    assert calls(emulator) == 0


def test_one_emulator_target_is_one_project_across_calls(samples: Path, tmp_path: Path) -> None:
    users = [{"loginId": "alice@example.com", "phone": "+14155550000"}]
    source = tmp_path / "in.csv"
    source.write_text("loginId,phone\nalice@example.com,+14155550132\n")
    rehearsal = Target.emulator(users=users, state=tmp_path / "state.json")
    ran = batchphone.run(source, out=tmp_path / "r.csv", target=rehearsal)
    assert ran.counts == {"updated": 1}
    undone = batchphone.undo(tmp_path / "r.csv", out=tmp_path / "u.csv", target=rehearsal)
    assert undone.counts == {"updated": 1}  # it saw the run's phone, and restored the old one
    state = (tmp_path / "state.json").read_text()
    assert "+14155550000" in state and "+14155550132" not in state


def test_a_damaged_input_raises_input_error(served: tuple[Emulator, str], tmp_path: Path) -> None:
    emulator, base_url = served
    source = tmp_path / "in.parquet"
    pl.DataFrame({"loginId": ["alice@example.com"], "phone": ["+14155550100"]}).write_parquet(
        source
    )
    source.write_bytes(source.read_bytes()[:-40])  # truncated: the footer is gone
    with pytest.raises(InputError) as caught:
        batchphone.run(source, out=tmp_path / "r.csv", target=target(base_url), rate=FAST)
    assert not isinstance(caught.value, BaseExceptionGroup)
    assert "in.parquet" in caught.value.message
    assert calls(emulator) == 0
    with pytest.raises(InputError):
        batchphone.validate(source)


def test_the_sigint_handler_is_unchanged_after_a_call(
    served: tuple[Emulator, str], samples: Path, tmp_path: Path
) -> None:
    _, base_url = served

    def mine(signum: int, frame: FrameType | None) -> None:
        """The caller's own handler (Airflow's, a cron script's)."""

    before = signal.signal(signal.SIGINT, mine)
    try:
        batchphone.run(
            samples / "phones.csv", out=tmp_path / "r.csv", target=target(base_url), rate=FAST
        )
        assert signal.getsignal(signal.SIGINT) is mine
        batchphone.plan(samples / "phones.csv", out=tmp_path / "p.csv", target=Target.emulator())
        assert signal.getsignal(signal.SIGINT) is mine
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.skipif(not hasattr(signal, "SIGTERM"), reason="no SIGTERM on Windows")
def test_the_callers_handlers_are_back_after_a_call_that_handled_signals(
    samples: Path, tmp_path: Path
) -> None:
    def mine(signum: int, frame: FrameType | None) -> None:
        """A scheduler's own SIGTERM handler, around the library call."""

    before = signal.signal(signal.SIGTERM, mine)
    # whatever SIGINT was (a background job inherits SIG_IGN), it is that again afterwards
    interrupt = signal.getsignal(signal.SIGINT)
    try:
        batchphone.run(
            samples / "phones.csv",
            out=tmp_path / "r.csv",
            target=Target.emulator(),
            handle_signals=True,
        )
        # the event loop resets what it handled to the defaults: SIGTERM would kill the caller
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGINT) is interrupt
    finally:
        signal.signal(signal.SIGTERM, before)


def test_stdout_and_stderr_stay_empty(
    served: tuple[Emulator, str],
    samples: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    _, base_url = served
    # --no-lookup without --verified logs a warning; the invalid rows, a failed read, ...
    summary = batchphone.run(
        samples / "phones.csv",
        out=tmp_path / "r.csv",
        target=target(base_url),
        rate=FAST,
        no_lookup=True,
    )
    batchphone.validate(samples / "phones.csv", default_region="US")
    batchphone.plan(samples / "phones.csv", out=tmp_path / "p.csv", target=Target.emulator())
    with pytest.raises(UsageError):
        batchphone.run(samples / "phones.csv", out=tmp_path / "r2.csv", target=None)
    assert summary.exit_code == 1
    assert capfd.readouterr() == ("", "")


def test_library_events_go_to_stdlib_logging_when_the_caller_set_it_up(
    samples: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="batchphone"):
        batchphone.run(samples / "phones.csv", out=tmp_path / "r.csv", target=Target.emulator())
    events = [record.getMessage() for record in caplog.records if record.name == "batchphone"]
    assert any(message.startswith("event='run_finished'") for message in events)
    assert not any("example.com" in message for message in events)  # no personal data


def test_validate_needs_no_target_and_keeps_no_file_without_out(
    samples: Path, tmp_path: Path
) -> None:
    summary = batchphone.validate(samples / "phones.csv", default_region="US")
    assert summary.result_path is None and summary.calls == 0
    assert summary.counts["valid"] > 0
    assert list(tmp_path.iterdir()) == []
    report = batchphone.validate(samples / "phones.csv", out=tmp_path / "v.csv", sheet=None)
    assert report.result_path == str(tmp_path / "v.csv")


def test_a_typo_in_a_command_is_refused(samples: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="did you mean 'validate'"):
        Job(command="Validate", input_path=samples / "phones.csv", out_path=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="unknown command 'update'"):
        Job(command="update", input_path=samples / "phones.csv", out_path=tmp_path)  # type: ignore[arg-type]
    job = Job(command="plan", input_path=samples / "phones.csv", out_path=tmp_path)  # type: ignore[arg-type]
    assert job.command is Command.PLAN


def test_a_plan_takes_its_target_as_an_endpoint_only(samples: Path, tmp_path: Path) -> None:
    from batchphone.modes.command import decide

    job = Job(command=Command.RUN, input_path=samples / "phones.csv", out_path=tmp_path / "r.csv")
    # a dict: refused before anything is opened, the key never shown
    plain = {"project_id": PROJECT, "base_url": "http://127.0.0.1:9", "management_key": KEY}
    with pytest.raises(
        UsageError, match=r"target: expected a batchphone\.config\.Endpoint"
    ) as caught:
        decide(job, Settings(), plain)  # type: ignore[arg-type]
    assert KEY not in str(caught.value)
    assert not (tmp_path / "r.csv.lock").exists()  # not even the lock was taken


def test_emulator_settings_never_reach_the_settings_project(
    served: tuple[Emulator, str], samples: Path, tmp_path: Path
) -> None:
    emulator, base_url = served
    settings = Settings(
        project_id=PROJECT, management_key=Secret(KEY), base_url=base_url, emulator=True
    )
    # honoured: the run goes to an embedded emulator
    summary = batchphone.run(samples / "phones.csv", out=tmp_path / "r.csv", settings=settings)
    assert summary.counts["updated"] > 0
    # refused: a real target with settings that ask for a rehearsal
    with pytest.raises(UsageError, match="ask for the emulator"):
        batchphone.run(
            samples / "phones.csv",
            out=tmp_path / "r2.csv",
            settings=settings,
            target=target(base_url),
        )
    assert calls(emulator) == 0


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("concurrency", 0, "Settings(concurrency=...): bad value 0: expected a whole number >= 1"),
        ("rate_period", -1.0, "Settings(rate_period=...): bad value -1.0: expected a number > 0"),
        ("max_error_rate", 2.0, "expected a fraction in (0, 1]"),
        ("management_key", KEY, "bad value a non-Secret value: expected a Secret"),
        ("log_format", "xml", "expected one of auto, console, json"),
        ("limit", 0, "Settings(limit=...)"),
        ("columns", ("row", "nope"), "unknown column 'nope'"),
    ],
)
def test_settings_built_directly_are_checked(field: str, value: object, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        Settings(**{field: value})  # type: ignore[arg-type]
    assert message in caught.value.message
    assert KEY not in caught.value.message


def test_settings_normalize_like_load_settings() -> None:
    settings = Settings(dry_run="false", default_region="us", columns="row,status")  # type: ignore[arg-type]
    assert settings.dry_run is False
    assert settings.default_region == "US"
    assert settings.columns == ("row", "status")


def test_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    derived = Target(project_id="Puse1" + "x" * 27, management_key=Secret(KEY))
    assert derived.base_url == "https://api.use1.descope.com"  # as the SDKs derive it
    assert KEY not in repr(derived)
    env = {"DESCOPE_PROJECT_ID": PROJECT, "DESCOPE_MANAGEMENT_KEY": KEY}
    from_env = Target.from_env({**env, "DESCOPE_BASE_URI": "http://127.0.0.1:9/"})
    assert from_env == target("http://127.0.0.1:9")
    with pytest.raises(UsageError, match="DESCOPE_MANAGEMENT_KEY is not set"):
        Target.from_env({"DESCOPE_PROJECT_ID": PROJECT})
    with pytest.raises(UsageError, match=r"non-empty batchphone\.Secret"):
        Target(project_id=PROJECT, management_key=KEY)  # type: ignore[arg-type]


def test_the_api_is_exported_and_sorted() -> None:
    assert batchphone.__all__ == sorted(batchphone.__all__)
    for name in ("run", "validate", "plan", "undo", "Target", "Secret", "Summary", "Command"):
        assert name in batchphone.__all__ and getattr(batchphone, name) is not None
    for internal in ("Job", "execute", "run_sync"):  # the runner's: not the pinned API
        assert internal not in batchphone.__all__ and not hasattr(batchphone, internal)


@pytest.mark.anyio
async def test_a_call_from_a_worker_thread_leaves_the_loop_alone(
    samples: Path, tmp_path: Path
) -> None:
    # an async caller (Dagster, a FastAPI job) runs the sync API in a worker thread
    summary = await anyio.to_thread.run_sync(
        lambda: batchphone.validate(samples / "phones.csv", default_region="US")
    )
    assert summary.exit_code == 1


def test_a_dry_run_needs_no_project_or_key(tmp_path: Path, samples: Path) -> None:
    """A dry run calls nothing, so it runs with no project id and no key (the memory bench
    and offline checks rely on it), and reports every sendable row as would_update."""
    out = tmp_path / "dry.csv"
    summary = batchphone.run(samples / "phones.csv", out=out, dry_run=True, settings=Settings())
    assert summary.calls == 0 and summary.counts.get("would_update", 0) > 0
    assert out.is_file()


def test_the_api_functions_share_no_name_with_a_module_of_the_package() -> None:
    """``import batchphone.<module>`` binds the module on the package: a module named like an
    API function (plan.py, undo.py, as before) would replace the function for every caller."""
    import importlib
    import pkgutil

    names = [module.name for module in pkgutil.iter_modules(batchphone.__path__)]
    for name in names:
        importlib.import_module(f"batchphone.{name}")
    assert {"run", "validate", "plan", "undo"}.isdisjoint(names)
    assert all(callable(getattr(batchphone, name)) for name in ("run", "validate", "plan", "undo"))
    assert batchphone.plan.__module__ == batchphone.undo.__module__ == "batchphone.api"


def test_the_summary_and_the_log_say_where_the_emulator_users_came_from(
    samples: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = Target.emulator()
    with caplog.at_level(logging.INFO, logger="batchphone"):
        summary = batchphone.run(samples / "phones.csv", out=tmp_path / "r.csv", target=target)
        again = batchphone.plan(samples / "phones.csv", out=tmp_path / "p.csv", target=target)
    where = f"22 users from {samples / 'users.csv'}"
    assert summary.emulator_users == where and again.emulator_users == where
    assert summary.to_json()["emulator_users"] == where
    seeded = [r.getMessage() for r in caplog.records if "emulator_users" in r.getMessage()]
    assert len(seeded) == 1 and "users=22" in seeded[0]  # said once: one emulated project
    real = batchphone.validate(samples / "phones.csv")
    assert real.emulator_users is None and "emulator_users" not in real.to_json()


def test_an_input_named_users_csv_is_not_its_own_emulator_seed(
    samples: Path, tmp_path: Path
) -> None:
    """users.csv beside the input seeds the emulator; the input itself is no such file (it
    would seed every user with its row's phone, and every row would be unchanged)."""
    source = tmp_path / "users.csv"
    source.write_bytes((samples / "phones.csv").read_bytes())
    summary = batchphone.run(source, out=tmp_path / "r.csv", target=Target.emulator())
    assert summary.emulator_users == "22 users from the input's login ids (every login id exists)"
    assert summary.counts.get("updated", 0) > 10
