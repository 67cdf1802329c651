"""errors.py: the tree drawn in its docstring is the code's, exit codes, one-line messages."""

from __future__ import annotations

import re

import pytest

import batchphone.errors as errors
from batchphone.errors import (
    BatchphoneError,
    FatalRemoteError,
    InputError,
    OutputError,
    RateLimitedError,
    RemoteError,
    ResumeError,
    TransientError,
    UsageError,
)


def _drawn_tree() -> list[tuple[int, str, str]]:
    """(depth, class name, exit code column) for each line of the docstring's tree."""
    assert errors.__doc__ is not None
    drawn = []
    for line in errors.__doc__.splitlines():
        match = re.match(r"^ {4}((?:│   |    )*)(?:[├└]── )?(\w+Error) +(?:exit_code )?(\S+)", line)
        if match:
            depth = len(match.group(1)) // 4 + (1 if "──" in line else 0)
            drawn.append((depth, match.group(2), match.group(3)))
    return drawn


def test_the_drawn_tree_is_the_class_tree_with_its_exit_codes() -> None:
    drawn = _drawn_tree()
    assert sorted(name for _, name, _ in drawn) == sorted(errors.__all__)
    parents: list[str] = []
    for depth, name, code in drawn:
        del parents[depth:]
        cls = getattr(errors, name)
        if parents:
            assert cls.__bases__ == (getattr(errors, parents[-1]),), name
        else:
            assert cls.__bases__ == (Exception,)
        # "-": the parent's exit code (the CLI never ends on a retried error)
        expected = cls.__base__.exit_code if code == "-" else int(code)
        assert cls.exit_code == expected, name
        parents.append(name)


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        (BatchphoneError, 1),
        (UsageError, 2),
        (InputError, 2),
        (OutputError, 2),
        (ResumeError, 2),
        (RemoteError, 1),
        (TransientError, 1),
        (FatalRemoteError, 3),
    ],
)
def test_exit_codes(cls: type[BatchphoneError], code: int) -> None:
    assert cls("x").exit_code == code


def test_rate_limited_keeps_retry_after_and_exits_1() -> None:
    error = RateLimitedError("429", retry_after=12.5, http_status=429)
    assert (error.retry_after, error.http_status, error.exit_code) == (12.5, 429, 1)


def test_str_is_the_message_alone_whatever_the_fields() -> None:
    """The CLI prints ``str(error)`` as its one line: the fields (which may echo an API message
    that quotes a user) are for code, not for the line."""
    cases: list[BatchphoneError] = [
        UsageError("--rate must look like 500/60", setting="rate", source="--rate"),
        InputError("in.csv: no phone column", path="in.csv", row=3),
        FatalRemoteError(
            "HTTP 401: the management key was refused",
            http_status=401,
            error_code="E011003",
            error_message="user +15551234567 not allowed",
        ),
        RateLimitedError("HTTP 429", retry_after=3.0, http_status=429),
    ]
    for error in cases:
        assert str(error) == error.message == error.args[0]
        assert "\n" not in str(error)
        assert "15551234567" not in str(error)


def test_usage_and_input_errors_name_their_setting_and_source() -> None:
    usage = UsageError("bad value", setting="rate", source="BATCHPHONE_RATE")
    assert (usage.setting, usage.source) == ("rate", "BATCHPHONE_RATE")
    assert UsageError("bad").setting is None
    bad_input = InputError("cannot read", path="in.xlsx", row=7)
    assert (bad_input.path, bad_input.row) == ("in.xlsx", 7)
