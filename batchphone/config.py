"""Settings: defaults < ``config.toml`` < environment < flags, validated once, frozen.

Which settings there are, and how each value is checked, is declared once in
``options.OPTIONS``; this module merges the sources by that declaration. An error can always name
the option and the source of the bad value; a library error names an option as ``name=VALUE``
(``restart=True``), which the command line shows as its flag.
The management key is special: it is read only from ``DESCOPE_MANAGEMENT_KEY`` or from a file,
never from ``config.toml`` or a flag value (flags show in ``ps`` and shell history).
A leaf: it imports only the other leaves (``errors``, ``options``).
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from batchphone.errors import UsageError
from batchphone.options import (
    OPTION,
    OPTIONS,
    BudgetStore,
    Goes,
    LogFormat,
    _non_negative_float,
    _positive_float,
    _positive_int,
)

__all__ = [
    "Endpoint",
    "Secret",
    "Settings",
    "check_key",
    "check_plain_http",
    "load_settings",
    "parse_options",
]

CONFIG_SECTION = "batchphone"
DEFAULT_CONFIG = Path("config.toml")


class Secret:
    """A string that does not show itself: repr, str and format all mask it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The real value, for the one place that needs it (the Authorization header)."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """The project a run calls: its id, the API's base URL and the management key.

    Resolved once per run (from the settings, a ``batchphone.Target`` or the embedded
    emulator) and handed down to the call stack. The key stays a ``Secret`` until the one line
    that builds the Authorization header (``client.py``), and no repr shows it.
    """

    project_id: str
    base_url: str
    management_key: Secret = field(repr=False)
    #: an emulated project: its state file (resolved path), or ``"memory"``; ``None``: a real one
    emulated: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.management_key, Secret):
            # never the value in the message: it may be the key itself
            raise TypeError("Endpoint: management_key must be a batchphone.Secret")
        if not _one_line(self.management_key.reveal()):
            # the HTTP library's error for such a header would quote the key
            raise UsageError(
                f"Endpoint: the management key {_NOT_ONE_LINE}", setting="management_key"
            )


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a run needs to know, from all sources, checked."""

    project_id: str | None = None
    base_url: str | None = None
    management_key: Secret | None = None
    login_id_column: str = "loginId"
    phone_column: str = "phone"
    default_region: str | None = None
    verified: bool | None = None
    allow_merge: bool = False
    allow_remove: bool = False
    #: allow a plain http:// base URL to a host that is not this machine (the key crosses the
    #: network unencrypted)
    allow_insecure_http: bool = False
    #: send without reading the users first: no unchanged rows, no before-images, no undo
    no_lookup: bool = False
    rate_calls: int = 500
    rate_period: float = 60.0
    #: clock skew against the server, as a fraction of the period (ratelimit.DEFAULT_MARGIN)
    rate_margin: float = 0.0005
    #: where runs on one project share its budget: "file", "none" or "redis://host:port/db"
    budget_store: BudgetStore | str = BudgetStore.FILE
    #: the folder of the ``file`` budget store (``None``: the user's state folder, platformdirs)
    state_dir: Path | None = None
    concurrency: int = 8
    timeout: float = 30.0
    max_attempts: int = 5
    #: backoff before the 2nd attempt, and its cap (library callers and tests tune these)
    retry_wait_initial: float = 0.5
    retry_wait_max: float = 30.0
    max_error_rate: float = 0.5
    dry_run: bool = False
    limit: int | None = None
    log_format: LogFormat = LogFormat.AUTO
    quiet: bool = False
    summary_json: Path | None = None
    emulator: bool = False
    emulator_users: Path | None = None
    emulator_state: Path | None = None
    sheet: str | None = None
    #: CSV/TSV input: the delimiter (``None``: the one that splits the header into the columns)
    delimiter: str | None = None
    restart: bool = False
    retry_failed: bool = False
    debug: bool = False
    #: columns of the short sheet, in this order (``None``: no short sheet, or its default set);
    #: the result file always has every column
    columns: tuple[str, ...] | None = None
    #: the short sheet's file (``None``: ``<out>.short<ext>`` when ``columns`` is set, else none)
    short_out: Path | None = None

    def __post_init__(self) -> None:
        # A library caller builds Settings directly: check (and normalize) every field with the
        # parsers load_settings uses, so Settings(concurrency=0) fails here, not mid-run.
        for name, parse in _FIELD_PARSERS.items():
            value = getattr(self, name)
            if value is None and name in _OPTIONAL:
                continue
            try:
                checked = parse(value)
            except (ValueError, TypeError, UsageError) as exc:
                shown = repr(value)  # a Secret's repr masks it; a str must not show at all
                if name == "management_key" and not isinstance(value, Secret):
                    shown = "a non-Secret value"
                raise UsageError(
                    f"Settings({name}=...): bad value {shown}: {exc}", setting=name
                ) from None
            if checked is not value:
                object.__setattr__(self, name, checked)


def _loopback(host: str) -> bool:
    """Whether ``host`` names this machine without a lookup (a name could resolve anywhere)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_plain_http(base_url: str, *, allowed: bool) -> None:
    """Refuse (``UsageError``) a plain ``http://`` base URL to a host that is not loopback.

    The management key goes in a header of every call: over plain http to another machine
    anyone on the way reads it. ``allowed`` is ``--allow-insecure-http``. Nothing is resolved
    or connected: the host is judged as written (127.0.0.0/8, ::1, ``localhost``).
    """
    parts = urllib.parse.urlsplit(base_url)
    if allowed or parts.scheme.lower() != "http":
        return
    host = parts.hostname or ""
    if _loopback(host):
        return
    where = parts.netloc.rpartition("@")[2]  # never a user:password written into the URL
    raise UsageError(
        f"base URL http://{where} is plain http to another machine: the management key would "
        "cross the network unencrypted; use https://, or add allow_insecure_http=True if you "
        "must",
        setting="base_url",
    )


def check_key(key: str, source: str) -> Secret:
    """The management key from ``source``, without whitespace at its ends, as a ``Secret``.

    ``UsageError`` when it is empty, or holds anything but visible ASCII inside (a space, a
    line break, a control character: a key file of two lines, say). Such a key cannot go in
    an HTTP header, and the HTTP library's error would quote it. The message names ``source``
    and never any part of the key.
    """
    key = key.strip()
    if not key:
        raise UsageError(f"the management key ({source}) is empty", setting="management_key")
    if not _one_line(key):
        raise UsageError(f"the management key ({source}) {_NOT_ONE_LINE}", setting="management_key")
    return Secret(key)


_NOT_ONE_LINE = (
    "holds a space, a line break, a control character or a character that is not ASCII inside "
    "it: a key is one line of visible characters"
)


def _one_line(key: str) -> bool:
    return all("!" <= char <= "~" for char in key)


def _secret(value: Any) -> Secret:
    if not isinstance(value, Secret):
        # the message never shows the value: it may be the key itself
        raise TypeError("expected a Secret (batchphone.Secret(key))")
    key = value.reveal().strip()
    if not key:
        raise ValueError("the key is empty")
    if not _one_line(key):
        raise ValueError(f"the key {_NOT_ONE_LINE}")
    return value if key == value.reveal() else Secret(key)


def _same_if_equal(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``parse``, but returning ``value`` itself when parsing does not change it."""

    def checked(value: Any) -> Any:
        result = parse(value)
        return value if type(result) is type(value) and result == value else result

    return checked


#: Keys an older config.toml may hold, and why they are refused now.
_REMOVED = {
    "skip_unchanged": "was removed: every run reads the users first now "
    "(no_lookup = true turns that off)",
}
#: What config.toml and the environment may set: each setting with an environment variable.
_STORED = {option.name: option for option in OPTIONS if option.env}
_SETTINGS_FIELDS = {f.name for f in fields(Settings)}
#: Settings fields that may be ``None`` (unset).
_OPTIONAL = {f.name for f in fields(Settings) if f.default is None}
#: How each Settings field is checked: by its option, or (no option) here.
_FIELD_PARSERS: dict[str, Callable[[Any], Any]] = {
    name: _same_if_equal(parse)
    for name, parse in {
        **{o.name: o.check for o in OPTIONS if o.name in _SETTINGS_FIELDS},
        "management_key": _secret,
        "rate_calls": _positive_int,
        "rate_period": _positive_float,
        "retry_wait_initial": _non_negative_float,
        "retry_wait_max": _non_negative_float,
    }.items()
}


def parse_options(options: Mapping[str, Any], *, source: str) -> dict[str, Any]:
    """Settings values from named options (``rate="500/60"``, ``columns="row,status"``), checked.

    Names are those of ``OPTIONS``; ``None`` values are left out. ``source`` says where they came
    from in an error (``"keyword"`` -> ``keyword rate=``).
    """
    values: dict[str, Any] = {}
    for name, value in options.items():
        if value is not None:
            values[name] = _parsed(name, value, f"{source} {name}=")
    if "rate" in values:
        values["rate_calls"], values["rate_period"] = values.pop("rate")
    return values


def _parsed(name: str, value: Any, where: str) -> Any:
    """The option ``name``'s value checked, or a one-line ``UsageError`` naming the option and
    where the value came from."""
    option = OPTION.get(name)
    if option is None or option.goes is not Goes.SETTINGS:
        raise UsageError(f"unknown setting {name!r} ({where})", setting=name, source=where)
    try:
        return option.check(value)
    except (ValueError, TypeError, UsageError) as exc:
        raise UsageError(
            f"{name}: bad value {str(value)!r} ({where}): {exc}", setting=name, source=where
        ) from None


def _read_config(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except OSError as exc:
        raise UsageError(
            f"cannot read config file {path}: {exc.strerror}", setting="config", source=str(path)
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(
            f"config file {path} is not valid TOML: {exc}", setting="config", source=str(path)
        ) from None
    section = document.get(CONFIG_SECTION, document)
    if not isinstance(section, dict):
        raise UsageError(f"config file {path}: [{CONFIG_SECTION}] must be a table")
    if "management_key" in section:
        raise UsageError(
            f"config file {path}: management_key must not be stored in a config file; "
            "set DESCOPE_MANAGEMENT_KEY or use management_key_file",
            setting="management_key",
            source=str(path),
        )
    for name, why in _REMOVED.items():
        if name in section:
            raise UsageError(f"config file {path}: {name} {why}", setting=name, source=str(path))
    unknown = sorted(set(section) - set(_STORED))
    if unknown:
        known = ", ".join(sorted(_STORED))
        raise UsageError(
            f"config file {path}: unknown setting {unknown[0]!r} (known: {known})",
            setting=unknown[0],
            source=str(path),
        )
    return dict(section)


def _read_key_file(path_text: str, source: str) -> Secret:
    path = Path(path_text).expanduser()
    try:
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise UsageError(
            f"management key file {path} ({source}): cannot read it: {reason}",
            setting="management_key_file",
            source=source,
        ) from None
    if not key:
        raise UsageError(
            f"management key file {path} ({source}) is empty",
            setting="management_key_file",
            source=source,
        )
    return check_key(key, f"management key file {path}")


def load_settings(
    flags: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    config_path: Path | None = None,
) -> Settings:
    """Merge defaults < config file < environment < flags into one checked ``Settings``.

    ``flags`` holds only what the user gave on the command line (``None`` values are ignored).
    ``config_path`` is the ``--config`` value; without it ``./config.toml`` is read when present.
    """
    env = os.environ if env is None else env
    raw: dict[str, tuple[Any, str]] = {}
    path = config_path if config_path is not None else DEFAULT_CONFIG
    if config_path is not None or path.is_file():
        for name, value in _read_config(path).items():
            raw[name] = (value, f"{path}")
    for name, option in _STORED.items():
        if option.env and env.get(option.env, "").strip():
            raw[name] = (env[option.env], f"environment variable {option.env}")
    for name, value in (flags or {}).items():
        if value is not None:
            raw[name] = (value, f"flag {name}=...")
    values = {name: _parsed(name, value, source) for name, (value, source) in raw.items()}
    if "rate" in values:
        values["rate_calls"], values["rate_period"] = values.pop("rate")
    key_file = values.pop("management_key_file", None)
    if key_file is not None:
        values["management_key"] = _read_key_file(key_file, raw["management_key_file"][1])
    elif env.get("DESCOPE_MANAGEMENT_KEY", "").strip():
        key = env["DESCOPE_MANAGEMENT_KEY"]
        values["management_key"] = check_key(key, "environment variable DESCOPE_MANAGEMENT_KEY")
    return Settings(**values)
