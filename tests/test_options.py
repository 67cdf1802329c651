"""Each option is declared once (``options.OPTIONS``): the CLI, the API's signatures, config.toml,
the environment, ``Settings`` and ``Job`` agree with that declaration."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import click
import pytest

import batchphone
from batchphone.cli import main
from batchphone.config import Settings, load_settings
from batchphone.errors import UsageError
from batchphone.modes.job import Job
from batchphone.options import (
    API_COMMANDS,
    OPTION,
    OPTIONS,
    BudgetStore,
    Goes,
    LogFormat,
    Sending,
    flagged,
    parse_rate,
)

#: Keywords of the API functions that are no option of a command.
CALL_KEYWORDS = {"target", "settings", "progress", "handle_signals"}


@pytest.mark.parametrize("command", API_COMMANDS)
def test_each_api_signature_is_the_declared_keywords_with_their_types(command: str) -> None:
    function = getattr(batchphone, command)
    parameters = inspect.signature(function).parameters
    keywords = {n: p for n, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    declared = {o.name: o for o in OPTIONS if command in o.commands and o.keyword}
    extra = CALL_KEYWORDS - ({"target"} if command == "validate" else set())
    assert set(keywords) == set(declared) | extra
    for name, option in declared.items():
        parameter = keywords[name]
        if command in option.required:
            assert (parameter.annotation, parameter.default) == (option.python, parameter.empty)
        else:
            assert (parameter.annotation, parameter.default) == (f"{option.python} | None", None)


def test_what_is_no_keyword_says_where_it_went() -> None:
    from batchphone.api import OTHER_OPTIONS

    for option in OPTIONS:
        if set(option.commands) & set(API_COMMANDS) and not option.refused:
            assert option.keyword or option.name in OTHER_OPTIONS, option.name


def test_settings_and_job_defaults_are_the_declared_ones() -> None:
    settings = Settings()
    for option in OPTIONS:
        if option.goes is Goes.SETTINGS and option.name in Settings.__slots__:
            assert getattr(settings, option.name) == option.default, option.name
    assert (settings.rate_calls, settings.rate_period) == parse_rate(OPTION["rate"].default)
    job_defaults = {f.name: f.default for f in dataclasses.fields(Job)}
    for option in OPTIONS:
        if option.goes is Goes.JOB:
            assert job_defaults[option.name] == option.default, option.name


@pytest.mark.parametrize("command", sorted({c for o in OPTIONS for c in o.commands}))
def test_each_command_takes_exactly_its_declared_options(command: str) -> None:
    params = main.commands[command].params
    taken = {p.name: p for p in params if isinstance(p, click.Option)}
    declared = {o.name: o for o in OPTIONS if command in o.commands}
    assert set(taken) == set(declared)
    for name, option in declared.items():
        assert taken[name].opts[0] == option.flags.partition("/")[0]
        assert taken[name].help == option.help_for(command)
        assert taken[name].hidden == bool(option.refused)


def test_every_stored_option_is_read_from_the_environment_and_config_toml(tmp_path: Path) -> None:
    stored = [o for o in OPTIONS if o.env and o.default is not None]
    assert len({o.env for o in stored}) == len(stored)
    for option in stored:
        text = str(option.default)
        from_env = load_settings({}, env={option.env or "": text}, config_path=None)
        config = tmp_path / "config.toml"
        config.write_text(f'[batchphone]\n{option.name} = "{text}"\n', encoding="utf-8")
        from_file = load_settings({}, env={}, config_path=config)
        assert from_env == from_file == Settings(), option.name


def test_sending_budget_store_and_log_format_are_enums_checked_once() -> None:
    settings = load_settings({"budget_store": "NONE", "log_format": "JSON"}, env={})
    assert settings.budget_store is BudgetStore.NONE and settings.log_format is LogFormat.JSON
    assert Settings(log_format="console").log_format is LogFormat.CONSOLE  # type: ignore[arg-type]
    assert OPTION["api"].check("Batch") is Sending.BATCH
    assert load_settings({"budget_store": "redis://h:6379/0"}, env={}).budget_store == (
        "redis://h:6379/0"
    )
    with pytest.raises(UsageError, match="log_format: bad value 'xml'"):
        load_settings({"log_format": "xml"}, env={})


@pytest.mark.parametrize(
    ("library", "shown"),
    [
        ("run with restart=True to start over", "run with --restart to start over"),
        ("use delimiter=';'", "use --delimiter ';'"),
        ("limit=5: give limit=7 or more", "--limit 5: give --limit 7 or more"),
        ("(flag rate=...): expected N/SECONDS", "(flag --rate): expected N/SECONDS"),
        ("pick one with sheet=NAME|NUMBER)", "pick one with --sheet NAME|NUMBER)"),
        ("(no_lookup=True turns that off)", "(--no-lookup turns that off)"),
        ("Target(project_id=...)", "Target(project_id=...)"),  # a call written out: kept
        ("the limit is 5; api_key=x", "the limit is 5; api_key=x"),  # no option's name=
    ],
)
def test_the_cli_shows_an_option_a_library_error_names_as_its_flag(
    library: str, shown: str
) -> None:
    assert flagged(library) == shown


def test_library_errors_name_options_not_flags() -> None:
    with pytest.raises(UsageError) as caught:
        load_settings({"concurrency": "0"}, env={})
    assert "(flag concurrency=...)" in caught.value.message and "--" not in caught.value.message
