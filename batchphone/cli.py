"""The command line: parse, build settings, call one library function, map to an exit code.

Only this module imports click and tqdm, prints, and exits.
"""

from __future__ import annotations

import contextlib
import dataclasses
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
from batchphone.options import OPTION, OPTIONS, Goes, Kind, LogFormat, Option, flagged
from batchphone.version import __version__

if TYPE_CHECKING:
    from batchphone.config import Settings
    from batchphone.modes.status import RunStatus
    from batchphone.render import Output

EXIT_USAGE = 2
#: Settings naming a file the command writes besides the result file: checked against the
#: command's own files before anything is written (``writer.check_side_paths``).
_SIDE_PATHS = ("summary_json", "emulator_state")
#: --metrics-file is not a setting (the CLI writes it), but it is checked as the others are
_METRICS_OPTION = OPTION["metrics_file"].flags
F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, code: int) -> None:
    """An error before the output mode is known: one line (``ui``'s errors)."""
    click.echo(f"batchphone: error: {message}", err=True)
    sys.exit(code)


def _refuse(message: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    """A click callback for an option kept only to refuse it (removed, or unsafe): an old script
    that passes it stops with one line (exit 2, as any usage error)."""

    def refuse(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value:
            raise click.UsageError(flagged(message), ctx=ctx)

    return refuse


def _click_type(option: Option) -> Any:
    """click's type for the option's ``kind`` (its parser in options.py checks the value again)."""
    if option.kind is Kind.INT and (option.low, option.high) != (None, None):
        return click.IntRange(option.low, option.high)
    if option.kind is Kind.CHOICE:
        return click.Choice([str(choice) for choice in option.choices], case_sensitive=False)
    paths = {Kind.PATH: {}, Kind.FILE: {"dir_okay": False}, Kind.FOLDER: {"file_okay": False}}
    if option.kind in paths:
        return click.Path(path_type=Path, **paths[option.kind])
    return {Kind.INT: int, Kind.FLOAT: float}.get(option.kind)


def _click_option(option: Option, command: str) -> Callable[[F], F]:
    """The click option of ``option`` on ``command``: a setting's is ``None`` when not given, so
    that config.toml and the environment fill it (``load_settings``)."""
    flag = option.kind in (Kind.FLAG, Kind.SWITCH)
    own = option.goes is Goes.CLI
    settings: dict[str, Any] = {
        "help": option.help_for(command),
        "metavar": option.metavar,
        "required": command in option.required,
        "default": option.default if own else None,
        "show_default": own and not flag and option.default is not None,
    }
    if settings["required"]:  # click 8.3+ takes an explicit default=None as given
        del settings["default"]
    if option.kind is Kind.FLAG:
        settings["is_flag"] = True
    if option.refused:
        settings.update(hidden=True, expose_value=False, callback=_refuse(option.refused))
    elif not flag:
        settings["type"] = _click_type(option)
    decorate: Callable[[F], F] = click.option(option.flags, option.name, **settings)
    return decorate


def _declared(command: str) -> Callable[[F], F]:
    """Every option ``command`` takes, in the order of ``OPTIONS``."""
    options = [_click_option(option, command) for option in OPTIONS if command in option.commands]

    def decorate(func: F) -> F:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


_LOG_FORMAT_ENV = OPTION["log_format"].env or ""
#: Options of the job (``Job``): not settings.
_JOB_OPTIONS = tuple(option.name for option in OPTIONS if option.goes is Goes.JOB)


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


def _early_json(flags: dict[str, Any]) -> bool:
    """Whether errors must be JSON, before the settings are loaded (they may be what is wrong)."""
    from batchphone.render import json_logs

    chosen = flags.get("log_format") or os.environ.get(_LOG_FORMAT_ENV, "").strip()
    return json_logs((chosen or LogFormat.AUTO).lower())


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
    if chosen is not None and chosen.lower() not in tuple(LogFormat):
        chosen = None  # the bad value may be this one: the environment or auto decides
    return Output(json_mode=_early_json({"log_format": chosen}))


def _execute(command: str, input_path: Path, flags: dict[str, Any]) -> None:
    """One command, every way out: an exit code, a summary (or error), --summary-json and
    --metrics-file.

    ``--out`` is ``None`` only for ``validate`` without it (no report file is kept).
    """
    from batchphone.render import Output

    flags = dict(flags)
    out: Path | None = flags.pop("out")
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
        _end_with_error(output, ends, flagged(exc.message), exc.exit_code)
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
    # the library's reason and next step name options: show their flags
    summary = dataclasses.replace(
        summary,
        stopped_reason=summary.stopped_reason and flagged(summary.stopped_reason),
        next_step=summary.next_step and flagged(summary.next_step),
    )
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
    return {OPTION[name].flags: name for name in _SIDE_PATHS}


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
    job_flags = {name: flags.pop(name) for name in _JOB_OPTIONS if flags.get(name) is not None}
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
@_declared("run")
def run(input_path: Path, **flags: Any) -> None:
    """Update the phones of the users in INPUT; write one result row per input row to --out.

    Reads the users first (a call per 100 rows) and sends only the rows that change something;
    --no-lookup sends every row without reading. Rerunning the same command resumes: rows
    already final are not sent again.
    """
    _execute("run", input_path, flags)


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
@_declared("plan")
def plan(input_path: Path, **flags: Any) -> None:
    """Show what run would change, and what it would cost; update nothing.

    Reads the users (a call per 100 rows). Each row ends change (phone_before -> phone),
    unchanged, not_found, conflict (the phone is another user's login id), invalid or
    duplicate; the verified column shows the flag a run would send. The summary says how
    many calls and how long a run needs at the budget.
    """
    _execute("plan", input_path, flags)


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
@_declared("undo")
def undo(results: Path, **flags: Any) -> None:
    """Restore the phones a run updated, from its result file RESULTS.

    Needs the phone_before/verified_before columns (every run without --no-lookup writes them).
    A user whose phone is no longer the one the run set is skipped (CHANGED_SINCE); restoring
    an empty phone needs --allow-remove. Rerunning the same command resumes.
    """
    _execute("undo", results, flags)


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
@_declared("validate")
def validate(input_path: Path, **flags: Any) -> None:
    """Normalize INPUT only and report what run would send. Never calls the API."""
    # without --out nothing is written: the rows are judged and counted, the first 20 shown
    _execute("validate", input_path, flags)


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
@_declared("status")
def status(
    out: Path, as_json: bool, input_path: Path | None, rate: str | None, config_path: Path | None
) -> None:
    """Where the run writing OUT stands, from its journal: live or finished.

    Prints the command, input, project, rows final by status, API calls and the last one's
    time, whether a process holds the run's lock (pid and host), and the ETA at the budget.
    Reads only: it takes no lock and never changes the journal.
    """
    import json

    from batchphone.render import Output, status_lines

    output = Output(json_mode=_early_json({}))
    try:
        found = _status(out, input_path, rate, config_path)
    except BatchphoneError as exc:
        output.error(flagged(exc.message), exc.exit_code)
        sys.exit(exc.exit_code)
    if as_json:
        click.echo(json.dumps(found.to_json(), indent=2))
    else:
        click.echo("\n".join(status_lines(found)))


def _status(
    out: Path, input_path: Path | None, rate: str | None, config_path: Path | None
) -> RunStatus:
    """The status of the run writing ``out``, with its ETA at the run's own budget (a nightly
    sync's ``--rate 300/60``) unless ``rate`` says another."""
    from batchphone.config import load_settings
    from batchphone.modes.status import count_input, read_status, with_eta

    found = read_status(out)
    settings = load_settings({"rate": rate or found.run_rate}, config_path=config_path)
    name = found.input_name or ""
    candidates = [input_path] if input_path is not None else []
    if name and input_path is None:
        candidates += [out.parent / name, Path(name)]
    rows = count_input(found, candidates)
    return with_eta(found, rows, settings.rate_calls, settings.rate_period)


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
@_declared("ui")
def ui(work_dir: Path, port: int, no_browser: bool, upload_limit: int, **flags: Any) -> None:
    """A local page for support staff: drop a sheet, check, approve, watch, download, undo.

    Serves on 127.0.0.1 only; open the printed URL (its token is one-time). Runs, plans and
    undos started there are ordinary runs in --work-dir: the CLI can resume or undo them.
    """
    from batchphone.render import configure_logging
    from batchphone.ui import UiOptions, serve

    config_path = flags.pop("config_path", None)
    chosen = os.environ.get(_LOG_FORMAT_ENV, LogFormat.CONSOLE) or LogFormat.CONSOLE
    configure_logging(chosen, False)

    def ready(url: str) -> None:
        click.echo(f"batchphone ui: open {url}", err=True)
        if not no_browser:
            import webbrowser

            webbrowser.open(url)

    limit = upload_limit * 1_000_000
    options = UiOptions(work_dir, port, flags, config_path=config_path, upload_limit=limit)
    try:
        with _sigterm_as_sigint():  # a scheduler's stop is a Ctrl-C here too
            serve(options, ready=ready)
    except BatchphoneError as exc:
        _fail(flagged(exc.message), exc.exit_code)
    except KeyboardInterrupt:  # the server stopped its tasks as Ctrl-C stops a run
        click.echo("batchphone ui: stopped", err=True)
        sys.exit(130)
