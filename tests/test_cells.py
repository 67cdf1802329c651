"""One vocabulary for true/false cells and settings, and the leaves that hold it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from batchphone.cells import FALSE_WORDS, TRUE_WORDS, check_region, parse_flag
from batchphone.config import load_settings
from batchphone.emulator.users import load_users
from batchphone.errors import UsageError
from batchphone.files import results
from batchphone.models import InputRow, RowResult, UpdateRequest
from batchphone.modes.reverse import _undo_row
from batchphone.rows.prepare import Preparer, RowRules

PACKAGE = Path(__file__).resolve().parents[1] / "batchphone"
WORDS = sorted(TRUE_WORDS | FALSE_WORDS)


def spellings(word: str) -> list[str]:
    return [word, word.upper(), word.capitalize(), f"  {word}\t"]


def test_the_two_sets_are_disjoint_and_hold_every_word_any_part_accepted_before() -> None:
    assert not TRUE_WORDS & FALSE_WORDS
    # prepare: true/1/yes/y/t; config: on/off besides; undo and the result rows: true/1/yes
    assert {"true", "1", "yes", "y", "t", "on"} <= TRUE_WORDS
    assert {"false", "0", "no", "n", "f", "off"} <= FALSE_WORDS


@pytest.mark.parametrize("word", WORDS)
def test_parse_flag_reads_every_spelling(word: str) -> None:
    for text in spellings(word):
        assert parse_flag(text) is (word in TRUE_WORDS)


@pytest.mark.parametrize("text", ["", "  ", "maybe", "2", "truee", "verified", "ja"])
def test_parse_flag_knows_nothing_else(text: str) -> None:
    assert parse_flag(text) is None


@pytest.mark.parametrize("word", WORDS)
def test_every_reader_of_a_flag_agrees(word: str, tmp_path: Path) -> None:
    """The verified column, undo's verified_before, a setting, the writer and a seed file."""
    expected = word in TRUE_WORDS
    for text in spellings(word):
        row = InputRow(row=1, login_id="a", phone_raw="+14155550132", verified_raw=text)
        [request] = Preparer(RowRules()).prepare([row])
        assert isinstance(request, UpdateRequest) and request.verified is expected
        back = _undo_row(1, "a", "+1", "updated", "+14155550132", text, allow_remove=False)
        assert isinstance(back, UpdateRequest) and back.verified is expected
        settings = load_settings({"no_lookup": text}, env={"BATCHPHONE_VERIFIED": text})
        assert settings.verified is expected and settings.no_lookup is expected
        assert results._to_bool(text) is expected
    seeds = tmp_path / "users.csv"
    seeds.write_text(f"loginId,verifiedPhone\na@x.com,{word}\n")
    assert load_users(seeds)[0]["verifiedPhone"] is expected


def test_a_word_outside_the_vocabulary_is_refused_or_unknown_everywhere(tmp_path: Path) -> None:
    row = InputRow(row=1, login_id="a", phone_raw="+14155550132", verified_raw="maybe")
    [judged] = Preparer(RowRules()).prepare([row])
    assert isinstance(judged, RowResult) and judged.reason == "INVALID_VERIFIED"
    back = _undo_row(1, "a", "+1", "updated", "+14155550132", "maybe", allow_remove=False)
    assert isinstance(back, RowResult) and back.reason == "NO_BEFORE_IMAGE"
    with pytest.raises(UsageError, match="expected true or false"):
        load_settings({"allow_merge": "maybe"}, env={})
    assert results._to_bool("maybe") is None  # unknown, not false


def test_check_region() -> None:
    assert check_region(" gb ") == "GB"
    with pytest.raises(UsageError, match='did you mean "GB"'):
        check_region("UK")


def _batchphone_imports(module: Path) -> set[str]:
    """Every batchphone module ``module`` imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.split(".")[0] == "batchphone"}


@pytest.mark.parametrize(
    ("leaf", "allowed"),
    [
        ("config", {"batchphone.errors", "batchphone.options"}),
        ("options", {"batchphone.cells", "batchphone.models"}),
        ("cells", {"batchphone.errors"}),
        ("models", set()),
        ("errors", set()),
    ],
)
def test_leaves_import_only_leaves(leaf: str, allowed: set[str]) -> None:
    assert _batchphone_imports(PACKAGE / f"{leaf}.py") <= allowed
