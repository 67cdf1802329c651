"""The command line: parse, build settings, call one library function, map to an exit code.

Only this module imports click and tqdm, prints, and exits.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import click

from batchphone.errors import BatchphoneError
from batchphone.models import Summary
from batchphone.version import __version__

if TYPE_CHECKING:
    from batchphone.config import Settings
    from batchphone.render import Output

EXIT_USAGE = 2
#: Settings naming a file the command writes besides the result file: checked against the
#: command's own files before anything is written (``writer.check_side_paths``).
_SIDE_PATHS = ("summary_json", "emulator_state")
#: --metrics-file is not a setting (the CLI writes it), but it is checked as the others are
_METRICS_OPTION = "--metrics-file"
F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, code: int) -> None:
    """An error before the output mode is known: one line (used for flag refusals)."""
    click.echo(f"batchphone: error: {message}", err=True)
    sys.exit(code)


def _removed_flag(message: str) -> Callable[[click.Context, click.Parameter, bool], None]:
    """A click callback for a flag that was removed: an old script that passes it stops with
    one line (exit 2, as any usage error) instead of running with a meaning it no longer has."""

    def refuse(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value:
            raise click.UsageError(message, ctx=ctx)

    return refuse


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
        help="verified for rows without their own value (unset: the user's flag is kept "
        "when the phone is the same; a new phone is sent unverified).",
    ),
    click.option(
        "--sheet", help="Excel input: the sheet to read, by name (any case) or number (default 1)."
    ),
    click.option(
        "--delimiter",
        help="CSV/TSV input: , ; | or tab (default: the one that splits the header into the "
        "login id and phone columns).",
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
_UNDO_REMOVE_AND_LIMIT = [
    click.option(
        "--allow-remove",
        is_flag=True,
        default=None,
        help="Restore 'no phone' for users who had none before the run: removes the phone the "
        "run set (otherwise those rows end skipped/EMPTY_PHONE).",
    ),
    click.option("--limit", type=int, help="Restore only the first N rows of RESULTS."),
]
_OUTPUT_OPTIONS = [
    click.option(
        "--config",
        "config_path",
        type=click.Path(path_type=Path),
        help="Config file (default ./config.toml when present).",
    ),
    click.option(
        "--log-format",
        type=click.Choice(["auto", "console", "json"], case_sensitive=False),
        help="json: only JSON lines on stderr (no bar); auto (default): json off a terminal.",
    ),
    click.option("--quiet", is_flag=True, default=None, help="No progress bar, warnings only."),
    click.option(
        "--summary-json",
        type=click.Path(path_type=Path),
        help="Write the summary here on every exit (JSON, mode 0600), for schedulers.",
    ),
    click.option(
        "--metrics-file",
        type=click.Path(path_type=Path, dir_okay=False),
        help="Write Prometheus metrics here on every exit (mode 0644), for node_exporter's "
        "textfile collector: name it *.prom in its folder.",
    ),
    click.option("--debug", is_flag=True, default=None, help="Show tracebacks."),
    click.option(
        "--columns",
        metavar="LIST",
        help="Columns of a short sheet, in order, e.g. row,line,loginId,phone,status,reason: "
        "written beside the result as NAME.short.EXT (the result keeps every column).",
    ),
    click.option(
        "--short-out",
        type=click.Path(path_type=Path),
        help="Also write the rows, with --columns (default row,line,loginId,phone,status,"
        "reason,error_message), to this file (any result format).",
    ),
]
_common_options = _options(_ROW_OPTIONS + _REMOVE_AND_LIMIT + _OUTPUT_OPTIONS)
_API_OPTIONS = [
    click.option("--project-id", help="Descope project id (or DESCOPE_PROJECT_ID)."),
    click.option(
        "--base-url", help="API base URL (or DESCOPE_BASE_URI; default from the project id)."
    ),
    click.option(
        "--allow-insecure-http",
        is_flag=True,
        default=None,
        help="Allow a plain http:// --base-url to a host that is not this machine "
        "(the key crosses the network unencrypted).",
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
_EMULATOR = click.option(
    "--emulator", is_flag=True, default=None, help="Rehearse on the embedded emulator."
)
_EMULATOR_STATE = click.option(
    "--emulator-state",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Implies --emulator: its users are read from FILE if it exists (else seeded), "
    "and written back at exit, so plan, run and undo see one project.",
)
_EMULATOR_OPTIONS = [
    _EMULATOR,
    click.option(
        "--emulator-users",
        type=click.Path(path_type=Path),
        help="Seed file for --emulator (default users.csv beside INPUT, else the input's ids).",
    ),
    _EMULATOR_STATE,
]
_UNDO_EMULATOR_OPTIONS = [
    _EMULATOR,
    click.option(
        "--emulator-users",
        type=click.Path(path_type=Path),
        help="Seed file for --emulator: the users as they are now (default users.csv beside "
        "RESULTS, else each user the run updated, with the phone the run set).",
    ),
    _EMULATOR_STATE,
]
_RESTART = click.option(
    "--restart",
    is_flag=True,
    default=None,
    help="Start over: moves the previous result and journal aside (a journal of a command "
    "that changed no user is replaced).",
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
_JOB_FLAGS = ("api", "batch_size", "canary")


_EXIT_CODES: dict[int | str, str] = {
    0: "every row updated, would_update, valid, change, unchanged or duplicate",
    1: "finished, with other rows (read the result file)",
    2: "usage, config or input error: nothing was sent",
    3: "stopped by 401/403 (fix the management key or project id, then rerun to resume), "
    "by too many failures (fix the cause, then rerun to resume) or because nothing answered "
    "at the base URL (fix it, then rerun)",
    4: "a local error (full disk, input changed) after updates: see the result file; rerun",
    130: "interrupted (Ctrl-C, SIGTERM): rerun the same command to resume",
    "130-local": "interrupted (Ctrl-C, SIGTERM): nothing was sent; run it again",
}
_TARGET_ENV = "DESCOPE_PROJECT_ID, DESCOPE_MANAGEMENT_KEY, DESCOPE_BASE_URI"
_SETTINGS_ENV = "BATCHPHONE_<SETTING> for any setting (BATCHPHONE_RATE, BATCHPHONE_LOG_FORMAT, ...)"


def _epilog(examples: list[str], codes: tuple[int | str, ...], env: list[str]) -> str:
    """The end of a command's --help: examples, exit codes, environment (lines kept as is).

    A code given as ``"130-local"`` is shown as 130 with that key's text."""
    lines = ["Examples:", "", "\b", *(f"  {example}" for example in examples), ""]
    lines += ["Exit codes:", "", "\b"]
    lines += [f"  {str(code).partition('-')[0]:<4} {_EXIT_CODES[code]}" for code in codes]
    lines += ["", "Environment:", "", "\b", *(f"  {line}" for line in env)]
    return "\n".join(lines)


_API_ENV = [
    f"{_TARGET_ENV} (as the SDKs)",
    _SETTINGS_ENV,
    "./config.toml, or --config PATH, is read too (flags > environment > file)",
]


def _refuse_key(management_key: str | None) -> None:
    if management_key is not None:
        _fail(
            "--management-key is not accepted: a key on the command line shows in ps and shell "
            "history; set DESCOPE_MANAGEMENT_KEY or use --management-key-file",
            EXIT_USAGE,
        )


def _early_json(flags: dict[str, Any]) -> bool:
    """Whether errors must be JSON, before the settings are loaded (they may be what is wrong)."""
    from batchphone.render import json_logs

    chosen = flags.get("log_format") or os.environ.get("BATCHPHONE_LOG_FORMAT", "").strip()
    return json_logs((chosen or "auto").lower())


def _option_value(argv: list[str], option: str) -> str | None:
    """The last value given to ``option`` in ``argv`` (``--x V`` or ``--x=V``), read by hand:
    click could not parse the command line."""
    chosen = None
    for index, arg in enumerate(argv):
        if arg == option and index + 1 < len(argv):
            chosen = argv[index + 1]
        elif arg.startswith(option + "="):
            chosen = arg.partition("=")[2]
    return chosen


def _usage_output(argv: list[str]) -> Output:
    """The output for an error in the command line itself: JSON when ``--log-format json`` is
    among the arguments, or the environment (or ``auto`` off a terminal) says so."""
    from batchphone.render import Output

    chosen = _option_value(argv, "--log-format")
    if chosen is not None and chosen.lower() not in ("auto", "console", "json"):
        chosen = None  # the bad value may be this one: the environment or auto decides
    return Output(json_mode=_early_json({"log_format": chosen}))


def _execute(command: str, input_path: Path, out: Path | None, flags: dict[str, Any]) -> None:
    """One command, every way out: an exit code, a summary (or error), --summary-json and
    --metrics-file.

    ``out`` is ``None`` only for ``validate`` without ``--out`` (no report file is kept).
    """
    from batchphone.render import Output

    flags = dict(flags)
    ends = _Ends(command, flags.get("summary_json"), flags.pop("metrics_file", None))
    output = Output(json_mode=_early_json(flags), debug=bool(flags.get("debug")))
    with _sigterm_as_sigint():
        _finish(command, input_path, out, flags, output, ends)


def _finish(
    command: str,
    input_path: Path,
    out: Path | None,
    flags: dict[str, Any],
    output: Output,
    ends: _Ends,
) -> None:
    try:
        summary, settings = _run(command, input_path, out, flags, output, ends.metrics)
    except BatchphoneError as exc:
        if flags.get("debug"):
            traceback.print_exc()
        if getattr(exc, "setting", None) in (*_side_options(), _METRICS_OPTION):
            ends = _Ends(command, None, None)  # it may be the very file the check protects
        _end_with_error(output, ends, exc.message, exc.exit_code)
        return
    except KeyboardInterrupt:
        _end_with_error(output, ends, "interrupted", 130)
        return
    except Exception as exc:
        if flags.get("debug"):
            raise
        message = f"unexpected {type(exc).__name__}: {exc} (rerun with --debug for details)"
        _end_with_error(output, ends, message, 1)
        return
    failure = ends.write(summary)
    output.summary(summary, command, _budget(settings))
    if failure is not None:
        _end_with_error(output, _Ends(command, None, None), failure, 1)
    sys.exit(summary.exit_code)


@contextlib.contextmanager
def _sigterm_as_sigint() -> Iterator[None]:
    """SIGTERM does what SIGINT does, at every moment of a command (a scheduler's stop is a
    Ctrl-C: exit 130, the result file written); the runner handles both while it runs."""
    if not hasattr(signal, "SIGTERM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def as_sigint(signum: int, frame: FrameType | None) -> None:
        handler = signal.getsignal(signal.SIGINT)
        if callable(handler) and handler is not as_sigint:
            handler(signal.SIGINT, frame)
        else:  # SIGINT ignored or left to the OS: SIGTERM still stops the command
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, as_sigint)
    try:
        yield
    finally:
        if previous is not None:  # None: set outside Python, nothing to put back
            signal.signal(signal.SIGTERM, previous)


def _side_options() -> dict[str, str]:
    """``--option`` of each setting in ``_SIDE_PATHS``."""
    return {"--" + name.replace("_", "-"): name for name in _SIDE_PATHS}


class _Ends:
    """The files a scheduler reads after every exit: --summary-json and --metrics-file."""

    def __init__(self, command: str, summary_json: Path | None, metrics: Path | None) -> None:
        self.command = command
        self.summary_json = summary_json
        self.metrics = metrics

    def write(self, summary: Summary | None, *, error: str = "", code: int = 0) -> str | None:
        """Write both (each one that was asked for); the first failure as a message."""
        from batchphone.render import error_document, write_summary_json

        failure = None
        if self.summary_json is not None:
            document = summary.to_json() if summary else error_document(error, code)
            try:
                write_summary_json(self.summary_json, document)
            except OSError as exc:
                failure = f"cannot write --summary-json {self.summary_json}: {exc.strerror or exc}"
        if self.metrics is not None:
            from batchphone.files.metrics import write_metrics

            try:
                write_metrics(self.metrics, summary, command=self.command, exit_code=code or None)
            except OSError as exc:
                failure = failure or (
                    f"cannot write --metrics-file {self.metrics}: {exc.strerror or exc}"
                )
        return failure


def _stderr_is_terminal() -> bool:
    return sys.stderr.isatty()


def _budget(settings: Settings) -> str:
    return f"{settings.rate_calls}/{settings.rate_period:g}"


def _end_with_error(output: Output, ends: _Ends, message: str, code: int) -> None:
    failure = ends.write(None, error=message, code=code)
    if failure is not None:
        output.error(failure, code)
    output.error(message, code)
    sys.exit(code)


def _run(
    command: str,
    input_path: Path,
    out: Path | None,
    flags: dict[str, Any],
    output: Output,
    metrics: Path | None = None,
) -> tuple[Summary, Settings]:
    """Settings from config.toml < environment < flags, then one call of the library's API."""
    from batchphone import api
    from batchphone.config import load_settings
    from batchphone.render import TqdmProgress, configure_logging, json_logs

    flags = dict(flags)
    config_path = flags.pop("config_path", None)
    job_flags = {name: flags.pop(name) for name in _JOB_FLAGS if flags.get(name) is not None}
    settings = load_settings(flags, config_path=config_path)
    from batchphone.files.writer import check_side_paths

    sides = {option: getattr(settings, name) for option, name in _side_options().items()}
    sides[_METRICS_OPTION] = metrics
    check_side_paths(sides, input_path, out)
    # the short sheet against the files above (the runner checks it against its own files)
    check_side_paths({**sides, "--short-out": settings.short_out}, input_path, None)
    output.json_mode = json_logs(settings.log_format)
    output.quiet = settings.quiet
    # without --out no file is written: there is no result path to show
    hide = ("result_path",) if out is None else ()
    configure_logging(settings.log_format, settings.quiet, hide=hide, debug=settings.debug)
    target = None if command == "validate" else api.Target.from_settings(settings)
    rehearsal = api.rehearsal(target, command, input_path, settings) if target else None
    if rehearsal is not None:
        output.note("emulator", f"emulator: {rehearsal.origin}", users=rehearsal.users)
    # the bar is for people at a terminal; machines get only JSON lines
    bar = not (settings.quiet or output.json_mode or not _stderr_is_terminal())
    progress = TqdmProgress() if bar else None
    call = {"progress": progress, "handle_signals": True, "settings": settings, **job_flags}
    if command == "validate":
        return api.validate(input_path, out=out, **call), settings
    assert out is not None  # click requires --out for the others
    if command == "plan":
        return api.plan(input_path, out=out, target=target, **call), settings
    if command == "undo":
        return api.undo(input_path, out=out, target=target, **call), settings
    return api.run(input_path, out=out, target=target, **call), settings


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

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """click's own errors (an unknown option, a bad value) as every other error: one line,
        or one JSON ``error`` event when stderr is for machines; exit 2."""
        if kwargs.get("standalone_mode", True) is False:
            return super().main(*args, **kwargs)
        try:
            code = super().main(*args, **{**kwargs, "standalone_mode": False})
        except click.exceptions.NoArgsIsHelpError as exc:  # bare `batchphone`: the help
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            command = exc.ctx.command_path if exc.ctx is not None else "batchphone"
            message = f"{exc.format_message()} (see '{command} --help')"
            given = args[0] if args else kwargs.get("args")
            argv = list(given) if given is not None else sys.argv[1:]
            output = _usage_output(argv)
            metrics = _option_value(argv, "--metrics-file")
            if metrics is not None:  # every exit writes it, this one too
                # a subcommand's name; the group's own errors (a typo'd command) are batchphone's
                sub = exc.ctx is not None and exc.ctx.parent is not None
                name = exc.ctx.command.name if sub and exc.ctx is not None else None
                ends = _Ends(name or "batchphone", None, Path(metrics))
                failure = ends.write(None, error=message, code=EXIT_USAGE)
                if failure is not None:
                    output.error(failure, EXIT_USAGE)
            output.error(message, EXIT_USAGE)
            sys.exit(EXIT_USAGE)
        except click.ClickException as exc:  # e.g. a file click could not open
            exc.show()
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        except BrokenPipeError:  # `... | head` closed our output: exit quietly, as click does
            # the interpreter flushes both streams at exit: onto /dev/null, not the closed pipe
            # (what the Python docs advise for SIGPIPE)
            devnull = os.open(os.devnull, os.O_WRONLY)
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(OSError, ValueError):  # no file descriptor (tests)
                    os.dup2(devnull, stream.fileno())
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

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


@main.command(
    epilog=_epilog(
        [
            "batchphone run users.csv --out results.csv --api batch  # 100 rows per call",
            "batchphone run users.xlsx --sheet Users --out results.xlsx --canary 20",
            "batchphone run users.csv --out r.csv --emulator-state rehearsal.json  # rehearse",
        ],
        (0, 1, 2, 3, 4, 130),
        _API_ENV,
    )
)
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
@click.option(
    "--dry-run",
    is_flag=True,
    default=None,
    help="No API call: sendable rows end would_update (plan shows what the reads decide).",
)
@_RESTART
@_RETRY_FAILED
@_options(_EMULATOR_OPTIONS)
@click.option(
    "--skip-unchanged",
    is_flag=True,
    hidden=True,
    expose_value=False,
    callback=_removed_flag(
        "--skip-unchanged was removed: every run reads the users first now "
        "(--no-lookup turns that off)"
    ),
)
@click.option(
    "--no-lookup",
    is_flag=True,
    default=None,
    help="Do not read the users first: send every row (no unchanged rows, no undo data).",
)
@_options(_SENDING_OPTIONS)
@click.option(
    "--canary",
    type=click.IntRange(min=1),
    help="Send the first N updates, read them back, go on only if all stuck.",
)
def run(input_path: Path, out: Path, management_key: str | None, **flags: Any) -> None:
    """Update the phones of the users in INPUT; write one result row per input row to --out.

    Reads the users first (a call per 100 rows) and sends only the rows that change something;
    --no-lookup sends every row without reading. Rerunning the same command resumes: rows
    already final are not sent again.
    """
    _refuse_key(management_key)
    _execute("run", input_path, out, flags)


@main.command(
    epilog=_epilog(
        [
            "batchphone plan users.csv --out plan.csv",
            "batchphone plan users.xlsx --out plan.xlsx --api batch --default-region US",
            "batchphone plan users.csv --out plan.csv --emulator-state rehearsal.json",
        ],
        (0, 1, 2, 3, 130),
        _API_ENV,
    )
)
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
    duplicate; the verified column shows the flag a run would send. The summary says how
    many calls and how long a run needs at the budget.
    """
    _refuse_key(management_key)
    _execute("plan", input_path, out, flags)


@main.command(
    epilog=_epilog(
        [
            "batchphone undo results.csv --out undo-check.csv --dry-run",
            "batchphone undo results.csv --out undo.csv",
            "batchphone undo results.csv --out undo.csv --emulator-state rehearsal.json",
        ],
        (0, 1, 2, 3, 4, 130),
        _API_ENV,
    )
)
@click.argument("results", metavar="RESULTS", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Undo result file.")
@_options(_UNDO_REMOVE_AND_LIMIT)
@_options(_OUTPUT_OPTIONS)
@_api_options
@click.option("--dry-run", is_flag=True, default=None, help="Read the users; change nothing.")
@_RESTART
@_RETRY_FAILED
@_options(_UNDO_EMULATOR_OPTIONS)
@_options(_SENDING_OPTIONS)
def undo(results: Path, out: Path, management_key: str | None, **flags: Any) -> None:
    """Restore the phones a run updated, from its result file RESULTS.

    Needs the phone_before/verified_before columns (every run without --no-lookup writes them).
    A user whose phone is no longer the one the run set is skipped (CHANGED_SINCE); restoring
    an empty phone needs --allow-remove. Rerunning the same command resumes.
    """
    _refuse_key(management_key)
    _execute("undo", results, out, flags)


@main.command(
    epilog=_epilog(
        [
            "batchphone validate users.csv --default-region US",
            "batchphone validate users.xlsx --sheet 2 --out report.xlsx",
        ],
        (0, 1, 2, "130-local"),
        [
            "BATCHPHONE_DEFAULT_REGION, BATCHPHONE_LOGIN_ID_COLUMN, BATCHPHONE_PHONE_COLUMN,",
            "BATCHPHONE_LOG_FORMAT, ... (BATCHPHONE_<SETTING>); ./config.toml or --config PATH",
            "No API call: DESCOPE_* are not read.",
        ],
    )
)
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Report file, same columns as run (optional: without it no file is written, and the "
    "counts and the first 20 rows that are not valid are printed).",
)
@_common_options
def validate(input_path: Path, out: Path | None, **flags: Any) -> None:
    """Normalize INPUT only and report what run would send. Never calls the API."""
    # without --out nothing is written: the rows are judged and counted, the first 20 shown
    _execute("validate", input_path, out, flags)


@main.command(
    epilog=_epilog(
        [
            "batchphone status results.csv",
            "batchphone status results.csv --json | jq .counts",
            "batchphone status /srv/sync/results/2026-12-06.csv --input export/users.csv",
        ],
        (0, 2),
        [
            "BATCHPHONE_RATE (the budget of the ETA); ./config.toml or --config PATH",
            "No API call: DESCOPE_* are not read.",
        ],
    )
)
@click.argument("out", metavar="OUT", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout, for scripts.")
@click.option(
    "--input",
    "input_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The run's input, to count its rows for the ETA (default: the journal's input name "
    "beside OUT or here, when its content matches).",
)
@click.option(
    "--rate",
    help="Budget of the ETA as N/SECONDS (default: the run's own, else the settings', 500/60).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    help="Config file (default ./config.toml when present).",
)
def status(
    out: Path, as_json: bool, input_path: Path | None, rate: str | None, config_path: Path | None
) -> None:
    """Where the run writing OUT stands, from its journal: live or finished.

    Prints the command, input, project, rows final by status, API calls and the last one's
    time, whether a process holds the run's lock (pid and host), and the ETA at the budget.
    Reads only: it takes no lock and never changes the journal.
    """
    import json

    from batchphone.config import load_settings
    from batchphone.modes.status import count_input, read_status, with_eta
    from batchphone.render import Output, status_lines

    output = Output(json_mode=_early_json({}))
    try:
        found = read_status(out)
        # the ETA at the run's own budget (a nightly sync's --rate 300/60), unless asked
        settings = load_settings({"rate": rate or found.run_rate}, config_path=config_path)
        name = found.input_name or ""
        candidates = [input_path] if input_path is not None else []
        if name and input_path is None:
            candidates += [out.parent / name, Path(name)]
        found = with_eta(
            found, count_input(found, candidates), settings.rate_calls, settings.rate_period
        )
    except BatchphoneError as exc:
        output.error(exc.message, exc.exit_code)
        sys.exit(exc.exit_code)
    if as_json:
        click.echo(json.dumps(found.to_json(), indent=2))
    else:
        click.echo("\n".join(status_lines(found)))


@main.command(
    epilog=_epilog(
        [
            "batchphone ui --work-dir ~/phone-fixes",
            "batchphone ui --emulator-state rehearsal.json  # rehearse on an emulated project",
        ],
        (0, 2),
        _API_ENV,
    )
)
@click.option(
    "--work-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("."),
    show_default=True,
    help="Folder for uploads, results and journals.",
)
@click.option("--port", type=click.IntRange(0, 65535), default=0, help="Port (default: any free).")
@click.option("--no-browser", is_flag=True, help="Print the URL; do not open a browser.")
@click.option(
    "--upload-limit",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Largest upload, in MB.",
)
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="config.toml.")
@_api_options
@_options(_EMULATOR_OPTIONS)
def ui(
    work_dir: Path,
    port: int,
    no_browser: bool,
    upload_limit: int,
    management_key: str | None,
    **flags: Any,
) -> None:
    """A local page for support staff: drop a sheet, check, approve, watch, download, undo.

    Serves on 127.0.0.1 only; open the printed URL (its token is one-time). Runs, plans and
    undos started there are ordinary runs in --work-dir: the CLI can resume or undo them.
    """
    _refuse_key(management_key)
    from batchphone.render import configure_logging
    from batchphone.ui import UiOptions, serve

    config_path = flags.pop("config_path", None)
    configure_logging(os.environ.get("BATCHPHONE_LOG_FORMAT", "console") or "console", False)

    def ready(url: str) -> None:
        click.echo(f"batchphone ui: open {url}", err=True)
        if not no_browser:
            import webbrowser

            webbrowser.open(url)

    options = UiOptions(
        work_dir=work_dir,
        port=port,
        flags=flags,
        config_path=config_path,
        upload_limit=upload_limit * 1_000_000,
    )
    try:
        serve(options, ready=ready)
    except BatchphoneError as exc:
        _fail(exc.message, exc.exit_code)
