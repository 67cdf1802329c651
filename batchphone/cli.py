"""The command line: parse, build settings, call one library function, map to an exit code.

Only this module imports click and tqdm, prints, and exits.
"""

from __future__ import annotations

import importlib
import json
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import click

from batchphone import __version__
from batchphone.errors import BatchphoneError
from batchphone.models import RowResult, Status, Summary

EXIT_USAGE = 2
F = TypeVar("F", bound=Callable[..., Any])


class _TqdmProgress:
    """A tqdm bar on stderr: rows done, counts by status, and an ETA the budget can keep."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._counts: Counter[str] = Counter()
        self._calls = 0
        self._finished = 0
        self._calls_per_second: float | None = None
        self._paused_until = 0.0
        self._last_refresh = 0.0

    def start(self, total: int, *, done: int, calls_per_second: float | None) -> None:
        from tqdm import tqdm

        self._calls_per_second = calls_per_second
        self._bar = tqdm(
            total=total,
            initial=done,
            unit="row",
            file=sys.stderr,
            dynamic_ncols=True,
            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]",
        )

    def advance(self, result: RowResult) -> None:
        self._counts[result.status.value] += 1
        self._finished += 1
        self._calls += 1 if result.attempts else 0
        if self._bar is None:
            return
        self._bar.update(1)
        now = time.monotonic()
        if now - self._last_refresh > 0.5:
            self._last_refresh = now
            self._bar.set_postfix_str(self._postfix(), refresh=False)

    def paused(self, seconds: float) -> None:
        self._paused_until = time.monotonic() + seconds
        if self._bar is not None:
            self._bar.set_postfix_str(self._postfix())

    def close(self) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(self._postfix(), refresh=False)
            self._bar.close()
            self._bar = None

    def _postfix(self) -> str:
        parts = [f"{status} {n}" for status, n in self._counts.most_common(4)]
        remaining = self._bar.total - self._bar.n if self._bar is not None else 0
        if self._calls_per_second and self._finished and remaining > 0:
            # the budget, not the observed rate, bounds the rest: a run that started with a
            # burst of local rows would otherwise promise far too early an end
            calls_left = remaining * self._calls / self._finished
            seconds = calls_left / self._calls_per_second
            parts.append(f"budget ETA {_duration(seconds)}")
        pause = self._paused_until - time.monotonic()
        if pause > 0:
            parts.append(f"PAUSED by API 429: {pause:.0f}s")
        return ", ".join(parts)


def _duration(seconds: float) -> str:
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{sec:02d}s"


class _TqdmStream:
    """A file for structlog that writes through tqdm, so log lines do not garble the bar."""

    def write(self, text: str) -> int:
        from tqdm import tqdm

        if text.strip():
            tqdm.write(text.rstrip("\n"), file=sys.stderr)
        return len(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _configure_logging(log_format: str, quiet: bool) -> None:
    import logging

    import structlog

    json_logs = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_logs
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.WARNING if quiet else logging.INFO
        ),
        logger_factory=structlog.PrintLoggerFactory(file=_TqdmStream()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )


def _fail(message: str, code: int) -> None:
    click.echo(f"batchphone: error: {message}", err=True)
    sys.exit(code)


def _print_summary(summary: Summary, command: str, budget: str) -> None:
    order = [status.value for status in Status]
    lines = [f"{command}: {summary.input_rows} rows in {summary.elapsed_s:.1f}s"]
    for status in order:
        if summary.counts.get(status):
            lines.append(f"  {status:<14} {summary.counts[status]:>9}")
    if command != "validate":
        lines.append(f"  {'API calls':<14} {summary.requests:>9}")
        if summary.rate_limited:
            lines.append(f"  {'rate limited':<14} {summary.rate_limited:>9}")
    if summary.planned_calls is not None:
        who = "a run with --skip-unchanged" if command == "plan" else f"the {command}"
        lines.append(
            f"  {who} needs about {summary.planned_calls} API calls: "
            f"at least {_duration(summary.planned_s or 0.0)} at a budget of {budget}"
        )
    if summary.result_path:
        lines.append(f"  results: {summary.result_path}")
    if summary.stopped_reason:
        lines.append(f"  stopped: {summary.stopped_reason}")
    if summary.exit_code in (3, 130):
        lines.append("  rerun the same command to resume: rows already final are not sent again")
    click.echo("\n".join(lines), err=True)


def _options(options: list[Callable[[Any], Any]]) -> Callable[[F], F]:
    def decorate(func: F) -> F:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


_ROW_OPTIONS = [
    click.option("--login-id-column", help="Column of login ids (default loginId)."),
    click.option("--phone-column", help="Column of phones (default phone)."),
    click.option("--default-region", help="ISO country for national numbers, e.g. US."),
    click.option(
        "--verified/--no-verified",
        default=None,
        help="verified for rows without their own value (unset: null is sent).",
    ),
]
_REMOVE_AND_LIMIT = [
    click.option(
        "--allow-remove",
        is_flag=True,
        default=None,
        help="An empty phone cell removes the user's phone (otherwise EMPTY_PHONE).",
    ),
    click.option("--limit", type=int, help="Process only the first N rows."),
]
_OUTPUT_OPTIONS = [
    click.option(
        "--config",
        "config_path",
        type=click.Path(path_type=Path),
        help="Config file (default ./config.toml when present).",
    ),
    click.option("--log-format", help="console, json or auto (json when not a terminal)."),
    click.option("--quiet", is_flag=True, default=None, help="No progress bar, warnings only."),
    click.option(
        "--summary-json",
        type=click.Path(path_type=Path),
        help="Write the run's summary here, for schedulers.",
    ),
    click.option("--debug", is_flag=True, default=None, help="Show tracebacks."),
]
_common_options = _options(_ROW_OPTIONS + _REMOVE_AND_LIMIT + _OUTPUT_OPTIONS)
_API_OPTIONS = [
    click.option("--project-id", help="Descope project id (or DESCOPE_PROJECT_ID)."),
    click.option(
        "--base-url", help="API base URL (or DESCOPE_BASE_URI; default from the project id)."
    ),
    click.option(
        "--management-key-file",
        type=click.Path(path_type=Path),
        help="File holding the management key (or set DESCOPE_MANAGEMENT_KEY).",
    ),
    click.option("--management-key", hidden=True, help="Refused: the key would show in ps."),
    click.option("--rate", help="Budget as N/SECONDS (default 500/60)."),
    click.option(
        "--budget-store",
        help="Where runs on one project share its budget: file (default), none, "
        "or redis://host:6379/0 for several machines.",
    ),
    click.option("--concurrency", type=int, help="Calls in flight at once (default 8)."),
    click.option("--timeout", type=float, help="Seconds to wait for one answer (default 30)."),
    click.option("--max-attempts", type=int, help="Attempts per row on 5xx/timeouts (default 5)."),
    click.option("--max-error-rate", type=float, help="Stop when this share of calls fails (0.5)."),
]
_api_options = _options(_API_OPTIONS)
_EMULATOR_OPTIONS = [
    click.option(
        "--emulator", is_flag=True, default=None, help="Rehearse on the embedded emulator."
    ),
    click.option(
        "--emulator-users",
        type=click.Path(path_type=Path),
        help="Seed file for --emulator (default users.csv beside INPUT, else the input's ids).",
    ),
]
_RESTART = click.option(
    "--restart", is_flag=True, default=None, help="Discard the journal; start over."
)
_RETRY_FAILED = click.option(
    "--retry-failed", is_flag=True, default=None, help="Resend rows that failed."
)
_SENDING_OPTIONS = [
    click.option(
        "--api",
        type=click.Choice(["update", "batch"]),
        help="update: a call per row (default); batch: up to --batch-size rows per patch call.",
    ),
    click.option(
        "--batch-size",
        type=click.IntRange(1, 100),
        help="Rows per patch call with --api batch (default 100).",
    ),
]
#: Flags that describe the job (``runner.Job``), not settings.
_JOB_FLAGS = ("skip_unchanged", "api", "batch_size", "canary")


def _refuse_key(management_key: str | None) -> None:
    if management_key is not None:
        _fail(
            "--management-key is not accepted: a key on the command line shows in ps and shell "
            "history; set DESCOPE_MANAGEMENT_KEY or use --management-key-file",
            EXIT_USAGE,
        )


def _execute(command: str, input_path: Path, out: Path, flags: dict[str, Any]) -> None:
    from batchphone.config import load_settings
    from batchphone.runner import Job, run_sync

    config_path = flags.pop("config_path", None)
    debug = bool(flags.get("debug"))
    job_flags = {name: flags.pop(name) for name in _JOB_FLAGS if flags.get(name) is not None}
    try:
        job = Job(command=command, input_path=input_path, out_path=out, **job_flags)
        settings = load_settings(flags, config_path=config_path)
        _configure_logging(settings.log_format, settings.quiet)
        transport_factory, target = None, None
        if settings.emulator:
            from batchphone.rehearsal import embedded_target

            transport_factory, target = embedded_target(input_path, settings.emulator_users)
        quiet = settings.quiet or not sys.stderr.isatty()
        summary = run_sync(
            job,
            settings,
            progress=None if quiet else _TqdmProgress(),
            transport_factory=transport_factory,
            target=target,
        )
    except BatchphoneError as exc:
        if debug:
            traceback.print_exc()
        _fail(exc.message, exc.exit_code)
        return
    except KeyboardInterrupt:
        click.echo("batchphone: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        if debug:
            raise
        _fail(f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for details)", 1)
        return
    if settings.summary_json is not None:
        _write_summary(settings.summary_json, summary)
    if not settings.quiet:
        _print_summary(summary, command, f"{settings.rate_calls}/{settings.rate_period:g}")
    sys.exit(summary.exit_code)


def _write_summary(path: Path, summary: Summary) -> None:
    try:
        path.write_text(json.dumps(summary.to_json(), indent=2) + "\n", encoding="utf-8")
    except OSError as exc:
        _fail(f"cannot write --summary-json {path}: {exc.strerror}", 1)


class _LazyGroup(click.Group):
    """A group whose heavy subcommands are imported only when called (``--help`` stays fast)."""

    lazy: ClassVar[dict[str, tuple[str, str, str]]] = {
        "emulator": (
            "batchphone.emulator.cli",
            "emulator_command",
            "Serve a local Descope management API emulator (loopback only).",
        )
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            module, attr, _ = self.lazy[cmd_name]
            command: click.Command = getattr(importlib.import_module(module), attr)
            return command
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [
            (name, self.commands[name].get_short_help_str(formatter.width))
            for name in super().list_commands(ctx)
        ]
        rows += [(name, short) for name, (_, _, short) in self.lazy.items()]
        with formatter.section("Commands"):
            formatter.write_dl(sorted(rows))


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="batchphone")
def main() -> None:
    """Update the phone numbers of many Descope users at once.

    Reads CSV, TSV, Parquet, JSONL or Excel files of loginId/phone rows, normalizes every
    phone to E.164 and calls Descope's management API within the project's rate budget.
    """


@main.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Result file.")
@_common_options
@_api_options
@click.option(
    "--allow-merge",
    is_flag=True,
    default=None,
    help="Send failOnConflict=false: Descope may MERGE and DELETE users. Dangerous.",
)
@click.option("--dry-run", is_flag=True, default=None, help="Everything but the update calls.")
@_RESTART
@_RETRY_FAILED
@_options(_EMULATOR_OPTIONS)
@click.option(
    "--skip-unchanged",
    is_flag=True,
    default=None,
    help="Read the users first (a call per 100 rows); send only rows that change.",
)
@_options(_SENDING_OPTIONS)
@click.option(
    "--canary",
    type=click.IntRange(min=1),
    help="Send the first N updates, read them back, go on only if all stuck.",
)
def run(input_path: Path, out: Path, management_key: str | None, **flags: Any) -> None:
    """Update the phones of the users in INPUT; write one result row per input row to --out.

    Rerunning the same command resumes: rows already final are not sent again.
    """
    _refuse_key(management_key)
    _execute("run", input_path, out, flags)


@main.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Plan file.")
@_common_options
@_api_options
@_RESTART
@_options(_EMULATOR_OPTIONS)
@_options(_SENDING_OPTIONS)
def plan(input_path: Path, out: Path, management_key: str | None, **flags: Any) -> None:
    """Show what run would change, and what it would cost; update nothing.

    Reads the users (a call per 100 rows). Each row ends change (phone_before -> phone),
    unchanged, not_found, conflict (the phone is another user's login id), invalid or
    duplicate; the summary says how many calls and how long a run with --skip-unchanged
    needs at the budget.
    """
    _refuse_key(management_key)
    _execute("plan", input_path, out, flags)


@main.command()
@click.argument("results", metavar="RESULTS", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Undo result file.")
@_options(_REMOVE_AND_LIMIT)
@_options(_OUTPUT_OPTIONS)
@_api_options
@click.option("--dry-run", is_flag=True, default=None, help="Read the users; change nothing.")
@_RESTART
@_RETRY_FAILED
@_options(_SENDING_OPTIONS)
def undo(results: Path, out: Path, management_key: str | None, **flags: Any) -> None:
    """Restore the phones a run updated, from its result file RESULTS.

    Needs the phone_before/verified_before columns (a run with --skip-unchanged writes them).
    A user whose phone is no longer the one the run set is skipped (CHANGED_SINCE); restoring
    an empty phone needs --allow-remove. Rerunning the same command resumes.
    """
    _refuse_key(management_key)
    _execute("undo", results, out, flags)


@main.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Report file (same columns as run).")
@_common_options
def validate(input_path: Path, out: Path | None, **flags: Any) -> None:
    """Normalize INPUT only and report what run would send. Never calls the API."""
    if out is not None:
        _execute("validate", input_path, out, flags)
        return
    with tempfile.TemporaryDirectory(prefix="batchphone-") as tmp:
        _execute("validate", input_path, Path(tmp) / "report.csv", flags)
