"""Every option of every command, declared once: ``OPTIONS``.

Each ``Option`` holds an option's help, type, default, parser, environment variable and config
key, the commands that take it and its flag. The click options (``cli.py``), the config.toml and
environment parsing (``config.load_settings``) and docs/options.md (``docs.py``) are derived from
it; tests/test_options.py checks the API's keyword-only signatures and the ``Settings`` and
``Job`` defaults against it. The parsers here check a value from any source (a flag, a keyword,
config.toml, the environment) and say what was expected in a ``ValueError``.
A leaf: it imports only the other leaves (``cells``, ``models``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from batchphone.cells import check_region, parse_flag
from batchphone.models import LOOKUP_COLUMNS, PLAN_COLUMNS, RESULT_COLUMNS

__all__ = [
    "API_COMMANDS",
    "OPTION",
    "OPTIONS",
    "BudgetStore",
    "Goes",
    "Kind",
    "LogFormat",
    "Option",
    "Sending",
    "flagged",
    "parse_rate",
]


class Sending(StrEnum):
    """How a run sends its updates (``api``)."""

    #: a call per row
    UPDATE = "update"
    #: up to ``batch_size`` rows per patch call
    BATCH = "batch"


class BudgetStore(StrEnum):
    """Where runs on one project share its budget (``budget_store``), besides a
    ``redis://host:port/db`` URL (kept as that text)."""

    #: a file in the state folder: runs on this machine
    FILE = "file"
    #: no sharing: this run alone
    NONE = "none"


class LogFormat(StrEnum):
    """The command line's log lines on stderr (``log_format``)."""

    #: JSON off a terminal, else console
    AUTO = "auto"
    CONSOLE = "console"
    JSON = "json"


def parse_rate(text: str) -> tuple[int, float]:
    """``"500/60"`` -> ``(500, 60.0)``: N calls per SECONDS, both positive."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)\s*(?:s)?\s*", text)
    if not match:
        raise ValueError("expected N/SECONDS, e.g. 500/60")
    calls, period = int(match.group(1)), float(match.group(2))
    if calls < 1 or period <= 0:
        raise ValueError("N and SECONDS must be positive")
    return calls, period


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    flag = parse_flag(str(value))
    if flag is None:
        raise ValueError("expected true or false")
    return flag


def _positive_int(value: Any) -> int:
    number = int(str(value).strip()) if not isinstance(value, int) else value
    if isinstance(value, bool) or number < 1:
        raise ValueError("expected a whole number >= 1")
    return number


def _positive_float(value: Any) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError("expected a number > 0")
    return number


def _fraction(value: Any) -> float:
    number = float(value)
    if not 0 < number <= 1:
        raise ValueError("expected a fraction in (0, 1]")
    return number


def _margin(value: Any) -> float:
    number = float(value)
    if not 0 <= number < 1:
        raise ValueError("expected a fraction in [0, 1)")
    return number


def _budget_store(value: Any) -> BudgetStore | str:
    text = _text(value)
    if text.lower() in tuple(BudgetStore):
        return BudgetStore(text.lower())
    if not re.match(r"^(rediss?|unix)://", text):
        raise ValueError("expected file, none or redis://host:port/db")
    return text


def _region(value: Any) -> str:
    return check_region(str(value))


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return text

    return parse


def _text(value: Any) -> str:
    text = str(value).strip()
    if not text:
        raise ValueError("must not be empty")
    return text


def _columns(value: Any) -> tuple[str, ...]:
    names = value if isinstance(value, list | tuple) else str(value).split(",")
    columns = tuple(str(name).strip() for name in names if str(name).strip())
    valid = RESULT_COLUMNS + LOOKUP_COLUMNS + PLAN_COLUMNS
    unknown = [name for name in columns if name not in valid]
    if unknown or not columns:
        what = f"unknown column {unknown[0]!r}" if unknown else "no column named"
        raise ValueError(f"{what}; valid: {','.join(valid)}")
    repeated = [name for name in columns if columns.count(name) > 1]
    if repeated:
        raise ValueError(f"column {repeated[0]!r} is named twice")
    return columns


def _delimiter(value: Any) -> str:
    text = str(value)
    named = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}
    text = named.get(text.strip().lower(), text if text == "\t" else text.strip())
    if len(text) != 1 or text in '"\r\n' or text.isalnum():
        raise ValueError("expected one character such as , ; | or the word tab")
    return text


def _url(value: Any) -> str:
    text = _text(value).rstrip("/")
    if not re.match(r"^https?://[^\s/]+", text):
        raise ValueError("expected an http(s):// URL")
    return text


def _non_negative_float(value: Any) -> float:
    number = float(value)
    if not number >= 0:
        raise ValueError("expected a number >= 0")
    return number


def _path(value: Any) -> Path:
    if not isinstance(value, str | os.PathLike) or not str(value).strip():
        raise ValueError("expected a path")
    return Path(value)


class Kind(StrEnum):
    """How the command line reads an option's value (click's type, in ``cli.py``)."""

    TEXT = "text"
    INT = "int"
    FLOAT = "float"
    #: ``--name`` alone, true when given
    FLAG = "flag"
    #: ``--name/--no-name``: true, false, or unset
    SWITCH = "switch"
    CHOICE = "choice"
    PATH = "path"
    #: a path that must not be a folder
    FILE = "file"
    #: a path that must not be a file
    FOLDER = "folder"


class Goes(StrEnum):
    """Where an option's value goes."""

    #: a ``Settings`` field, read from flags, ``config.toml`` and the environment
    SETTINGS = "settings"
    #: a field of the job (``Job``): how this one command sends
    JOB = "job"
    #: the command line's own (output files, the page's server): no setting
    CLI = "cli"


#: The commands, as the command line names them.
RUN, PLAN, UNDO, VALIDATE, STATUS, UI = "run", "plan", "undo", "validate", "status", "ui"
#: The commands that are functions of the library API (``batchphone.run``, ...).
API_COMMANDS = (RUN, PLAN, UNDO, VALIDATE)
_ROWS = (RUN, PLAN, VALIDATE)
_FILES = (RUN, PLAN, UNDO, VALIDATE)
_CALLS = (RUN, PLAN, UNDO, UI)
_SENDS = (RUN, PLAN, UNDO)
#: Where an option that is no keyword of the API functions went instead.
_TARGET = "target=Target({}=...)"
_OUTPUT = "the CLI's output: {}"


@dataclass(frozen=True, slots=True)
class Option:
    """One option, declared once: the command line, ``config.toml``, the environment, the API's
    keywords and docs/options.md are derived from it (or checked against it by a test).

    ``name`` is the ``Settings`` (or ``Job``) field, the API's keyword and the config.toml key;
    a library error names an option as ``name=VALUE`` (``restart=True``), which the command line
    shows as its flag (``--restart``). ``env`` is the environment variable of a setting that
    ``config.toml`` and the environment may set (``None``: only a flag or a keyword sets it).
    """

    name: str
    help: str
    commands: tuple[str, ...]
    kind: Kind = Kind.TEXT
    #: checks and converts a value from any source (``None``: what ``kind`` implies)
    parse: Callable[[Any], Any] | None = None
    #: what the option means when nothing sets it (``None``: unset)
    default: Any = None
    env: str | None = None
    goes: Goes = Goes.SETTINGS
    #: the keyword's type in the API's signatures (with ``| None``, its default)
    python: str = "str"
    #: not a keyword of the API functions: where it went instead (``OTHER_OPTIONS``)
    library: str = ""
    #: the command line's flag, when it is not ``--name-with-dashes``
    flag: str = ""
    metavar: str | None = None
    choices: tuple[str, ...] = ()
    #: the bounds of an ``int`` the command line takes (``None``: open)
    low: int | None = None
    high: int | None = None
    #: another help text for these commands: ``((command, help), ...)``
    helps: tuple[tuple[str, str], ...] = ()
    #: the commands that need it (click's ``required``; no default in the API's signature)
    required: tuple[str, ...] = ()
    #: kept only to refuse it, with this message (a hidden flag: removed, or unsafe)
    refused: str = ""

    @property
    def flags(self) -> str:
        """The flag as ``--help`` shows it (``--verified/--no-verified``)."""
        flag = self.flag or "--" + self.name.replace("_", "-")
        return f"{flag}/--no-{flag[2:]}" if self.kind is Kind.SWITCH else flag

    @property
    def keyword(self) -> bool:
        """Whether the API functions of its commands take it as a keyword of its name: ``out``,
        and every setting or job option that ``library`` does not send elsewhere."""
        if self.library or self.refused:
            return False
        return self.goes is not Goes.CLI or self.name == "out"

    def help_for(self, command: str) -> str:
        """The help text ``command``'s ``--help`` shows."""
        return dict(self.helps).get(command, self.help)

    def check(self, value: Any) -> Any:
        """``value`` checked and converted (``ValueError``/``TypeError``/``UsageError`` if bad)."""
        parse = self.parse or _KIND_PARSERS[self.kind]
        return parse(value)


def _sending(value: Any) -> Sending:
    return Sending(_choice(*Sending)(value))


def _log_format(value: Any) -> LogFormat:
    return LogFormat(_choice(*LogFormat)(value))


_KIND_PARSERS: dict[Kind, Callable[[Any], Any]] = {
    Kind.TEXT: _text,
    Kind.INT: _positive_int,
    Kind.FLOAT: _positive_float,
    Kind.FLAG: _parse_bool,
    Kind.SWITCH: _parse_bool,
    Kind.CHOICE: _text,
    Kind.PATH: _path,
    Kind.FILE: _path,
    Kind.FOLDER: _path,
}

_P = Option
OPTIONS: tuple[Option, ...] = (
    # -- the files
    _P("out", "Result file.", _FILES, Kind.PATH, goes=Goes.CLI, python="PathLike",
       required=(RUN, PLAN, UNDO),
       helps=((PLAN, "Plan file."), (UNDO, "Undo result file."),
              (VALIDATE, "Report file, same columns as run (optional: without it no file is "
               "written, and the counts and the first 20 rows that are not valid are printed).")),
    ),
    # -- the rows
    _P("login_id_column", "Column of login ids (default loginId).", _ROWS, default="loginId",
       env="BATCHPHONE_LOGIN_ID_COLUMN"),
    _P("phone_column", "Column of phones (default phone).", _ROWS, default="phone",
       env="BATCHPHONE_PHONE_COLUMN"),
    _P("default_region", "ISO country for national numbers, e.g. US.", _ROWS, parse=_region,
       env="BATCHPHONE_DEFAULT_REGION"),
    _P("verified", "verified for rows without their own value (unset: the user's flag is kept "
       "when the phone is the same; a new phone is sent unverified).", _ROWS, Kind.SWITCH,
       env="BATCHPHONE_VERIFIED", python="bool"),
    _P("sheet", "Excel input: the sheet to read, by name (any case) or number (default 1).",
       _ROWS, python="str | int"),
    _P("delimiter", "CSV/TSV input: , ; | or tab (default: the one that splits the header into "
       "the login id and phone columns).", _ROWS, parse=_delimiter, env="BATCHPHONE_DELIMITER"),
    _P("allow_remove", "An empty phone cell removes the user's phone (otherwise EMPTY_PHONE).",
       _FILES, Kind.FLAG, default=False, env="BATCHPHONE_ALLOW_REMOVE", python="bool",
       helps=((UNDO, "Restore 'no phone' for users who had none before the run: removes the "
               "phone the run set (otherwise those rows end skipped/EMPTY_PHONE)."),)),
    _P("limit", "Process only the first N rows.", _FILES, Kind.INT, python="int",
       helps=((UNDO, "Restore only the first N rows of RESULTS."),)),
    # -- the output
    _P("config_path", "Config file (default ./config.toml when present).",
       (*_FILES, STATUS, UI), Kind.PATH, goes=Goes.CLI, flag="--config",
       library="settings=batchphone.load_settings(config_path=...)"),
    _P("log_format", "json: only JSON lines on stderr (no bar); auto (default): json off a "
       "terminal.", _FILES, Kind.CHOICE, parse=_log_format, default=LogFormat.AUTO,
       env="BATCHPHONE_LOG_FORMAT", choices=tuple(LogFormat),
       library=_OUTPUT.format("a library call configures no logging")),
    _P("quiet", "No progress bar, warnings only.", _FILES, Kind.FLAG, default=False,
       library=_OUTPUT.format("a library call prints nothing")),
    _P("summary_json", "Write the summary here on every exit (JSON, mode 0600), for "
       "schedulers.", _FILES, Kind.PATH,
       library=_OUTPUT.format("write summary.to_json() yourself")),
    _P("metrics_file", "Write Prometheus metrics here on every exit (mode 0644), for "
       "node_exporter's textfile collector: name it *.prom in its folder.", _FILES, Kind.FILE,
       goes=Goes.CLI,
       library=_OUTPUT.format("batchphone.files.metrics.write_metrics(PATH, summary, ...)")),
    _P("debug", "Show tracebacks.", _FILES, Kind.FLAG, default=False,
       library=_OUTPUT.format("a library call raises, with its traceback")),
    _P("columns", "Columns of a short sheet, in order, e.g. row,line,loginId,phone,status,"
       "reason: written beside the result as NAME.short.EXT (the result keeps every column).",
       (RUN, PLAN, UNDO, VALIDATE), parse=_columns, env="BATCHPHONE_COLUMNS", metavar="LIST",
       python="str | Sequence[str]"),
    _P("short_out", "Also write the rows, with --columns (default row,line,loginId,phone,"
       "status,reason,error_message), to this file (any result format).", _FILES, Kind.PATH,
       python="PathLike"),
    # -- the project and its budget
    _P("project_id", "Descope project id (or DESCOPE_PROJECT_ID).", _CALLS,
       env="DESCOPE_PROJECT_ID", library=_TARGET.format("project_id")),
    _P("base_url", "API base URL (or DESCOPE_BASE_URI; default from the project id).", _CALLS,
       parse=_url, env="DESCOPE_BASE_URI", library=_TARGET.format("base_url")),
    _P("allow_insecure_http", "Allow a plain http:// --base-url to a host that is not this "
       "machine (the key crosses the network unencrypted).", _CALLS, Kind.FLAG, default=False,
       env="BATCHPHONE_ALLOW_INSECURE_HTTP",
       library="target=Target(allow_insecure_http=True)"),
    _P("management_key_file", "File holding the management key (or set "
       "DESCOPE_MANAGEMENT_KEY).", _CALLS, Kind.PATH, parse=_text,
       env="BATCHPHONE_MANAGEMENT_KEY_FILE",
       library="target=Target(management_key=Secret(...))"),
    _P("management_key", "Refused: the key would show in ps.", _CALLS,
       refused="management_key=... is not accepted: a key on the command line shows in ps and "
       "shell history; set DESCOPE_MANAGEMENT_KEY or use management_key_file=PATH"),
    _P("rate", "Budget as N/SECONDS (default 500/60).", (*_CALLS, STATUS), parse=parse_rate,
       default="500/60", env="BATCHPHONE_RATE",
       helps=((STATUS, "Budget of the ETA as N/SECONDS (default: the run's own, else the "
               "settings', 500/60)."),)),
    _P("rate_margin", "Clock skew against the server, as a fraction of the period.", (),
       parse=_margin, default=0.0005, env="BATCHPHONE_RATE_MARGIN"),
    _P("budget_store", "Where runs on one project share its budget: file (default), none, or "
       "redis://host:6379/0 for several machines.", _CALLS, parse=_budget_store,
       default=BudgetStore.FILE, env="BATCHPHONE_BUDGET_STORE"),
    _P("state_dir", "Folder of the file budget store (default: the user's state folder, "
       "platformdirs).", (), Kind.FOLDER, env="BATCHPHONE_STATE_DIR"),
    _P("concurrency", "Calls in flight at once (default 8).", _CALLS, Kind.INT, default=8,
       env="BATCHPHONE_CONCURRENCY", python="int"),
    _P("timeout", "Seconds to wait for one answer (default 30).", _CALLS, Kind.FLOAT,
       default=30.0, env="BATCHPHONE_TIMEOUT", python="float"),
    _P("max_attempts", "Attempts per row on 5xx/timeouts (default 5).", _CALLS, Kind.INT,
       default=5, env="BATCHPHONE_MAX_ATTEMPTS", python="int"),
    _P("max_error_rate", "Stop when this share of calls fails (0.5).", _CALLS, Kind.FLOAT,
       parse=_fraction, default=0.5, env="BATCHPHONE_MAX_ERROR_RATE", python="float"),
    # -- the command
    _P("allow_merge", "Send failOnConflict=false: Descope may MERGE and DELETE users. "
       "Dangerous.", (RUN,), Kind.FLAG, default=False, env="BATCHPHONE_ALLOW_MERGE",
       python="bool"),
    _P("dry_run", "No API call: sendable rows end would_update (plan shows what the reads "
       "decide).", (RUN, UNDO), Kind.FLAG, default=False, python="bool",
       helps=((UNDO, "Read the users; change nothing."),)),
    _P("restart", "Start over: moves the previous result and journal aside (a journal of a "
       "command that changed no user is replaced).", _SENDS, Kind.FLAG, default=False,
       python="bool"),
    _P("retry_failed", "Resend rows that failed.", (RUN, UNDO), Kind.FLAG, default=False,
       python="bool"),
    _P("emulator", "Rehearse on the embedded emulator.", _CALLS, Kind.FLAG, default=False,
       library="target=Target.emulator()"),
    _P("emulator_users", "Seed file for --emulator (default users.csv beside INPUT, else the "
       "input's ids).", _CALLS, Kind.PATH, library="target=Target.emulator(users=...)",
       helps=((UNDO, "Seed file for --emulator: the users as they are now (default users.csv "
               "beside RESULTS, else each user the run updated, with the phone the run "
               "set)."),)),
    _P("emulator_state", "Implies --emulator: its users are read from FILE if it exists (else "
       "seeded), and written back at exit, so plan, run and undo see one project.", _CALLS,
       Kind.FILE, library="target=Target.emulator(state=...)"),
    _P("skip_unchanged", "Removed.", (RUN,), Kind.FLAG,
       refused="skip_unchanged=... was removed: every run reads the users first now "
       "(no_lookup=True turns that off)"),
    _P("no_lookup", "Do not read the users first: send every row (no unchanged rows, no undo "
       "data).", (RUN,), Kind.FLAG, default=False, env="BATCHPHONE_NO_LOOKUP", python="bool"),
    _P("api", "update: a call per row (default); batch: up to --batch-size rows per patch "
       "call.", _SENDS, Kind.CHOICE, parse=_sending, default=Sending.UPDATE, goes=Goes.JOB,
       choices=tuple(Sending)),
    _P("batch_size", "Rows per patch call with --api batch (default 100).", _SENDS, Kind.INT,
       default=100, goes=Goes.JOB, python="int", low=1, high=100),
    _P("canary", "Send the first N updates, read them back, go on only if all stuck.", (RUN,),
       Kind.INT, default=0, goes=Goes.JOB, python="int", low=1),
    # -- status
    _P("as_json", "One JSON document on stdout, for scripts.", (STATUS,), Kind.FLAG,
       default=False, goes=Goes.CLI, flag="--json"),
    _P("input_path", "The run's input, to count its rows for the ETA (default: the journal's "
       "input name beside OUT or here, when its content matches).", (STATUS,), Kind.FILE,
       goes=Goes.CLI, flag="--input"),
    # -- the page
    _P("work_dir", "Folder for uploads, results and journals.", (UI,), Kind.FOLDER,
       default=Path("."), goes=Goes.CLI),
    _P("port", "Port (default: any free).", (UI,), Kind.INT, default=0, goes=Goes.CLI, low=0,
       high=65535),
    _P("no_browser", "Print the URL; do not open a browser.", (UI,), Kind.FLAG, default=False,
       goes=Goes.CLI),
    _P("upload_limit", "Largest upload, in MB.", (UI,), Kind.INT, default=200, goes=Goes.CLI,
       low=1),
)  # fmt: skip
#: Each option by its name.
OPTION: Mapping[str, Option] = {option.name: option for option in OPTIONS}


def flagged(message: str) -> str:
    """A library message with each option it names (``restart=True``, ``limit=5``, ``sheet=...``)
    written as the command line's flag (``--restart``, ``--limit 5``, ``--sheet``): for a front
    end that shows the library's errors to people who type flags (the CLI, the page)."""
    return _NAMED.sub(_as_flag, message)


def _as_flag(match: re.Match[str]) -> str:
    flag = OPTION[match.group(1)].flags.partition("/")[0]
    value_follows = match.group(2) is None and match.string[match.end() : match.end() + 1]
    if value_follows and value_follows not in " ,;:)]":
        return flag + " "
    return flag


#: An option named in a library message: ``name=True``, ``name=...`` or ``name=VALUE`` (not a
#: keyword of a call written out, ``Target(project_id=...)``).
_NAMED = re.compile(
    r"(?<![\w.-])(?<!\w\()("
    + "|".join(sorted(OPTION, key=len, reverse=True))
    + r")=(True\b|\.\.\.)?"
)
