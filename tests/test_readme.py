"""The README and the pages of docs/: the module map, the runnable blocks, the opening commands,
and a README short enough for users."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
#: The page that holds the module map (the README links to it).
DEVELOPMENT = ROOT / "docs" / "development.md"
#: What users read: the README and every page of docs/ (the CHANGELOG and bench/results.md may
#: name issues and bench scenarios; these do not).
USER_DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]

#: The two commands the README opens with, exactly: a fresh machine's install and demo, and the
#: install and tests.
OPENING = (
    "python3 -m venv .venv && . .venv/bin/activate && pip install . && "
    "batchphone run samples/phones.csv --emulator --out results.csv",
    "python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]' && "
    "python -m pytest -q",
)


def _map_modules() -> list[str]:
    """Every module the map names, as `folder/module` (`module` for the leaves and the surface)."""
    page = DEVELOPMENT.read_text(encoding="utf-8")
    table = page[page.index("| folder | module |") :]
    table = table[: table.index("\n\n")]
    named = []
    for line in table.splitlines()[2:]:
        folder, modules = line.split("|")[1:3]
        prefix = "".join(re.findall(r"`(\w+/)`", folder))
        named += [prefix + name for name in re.findall(r"`(\w+)`", modules)]
    return named


def test_the_module_map_names_each_module_once() -> None:
    package = ROOT / "batchphone"
    modules = [
        "/".join(p.relative_to(package).with_suffix("").parts)
        for p in package.rglob("*.py")
        if p.stem not in {"__init__", "__main__"}
    ]
    named = _map_modules()
    assert sorted(named) == sorted(modules)


def test_the_readme_opens_with_the_two_commands_and_links_the_module_map() -> None:
    text = README.read_text(encoding="utf-8")
    first_block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line for line in first_block.splitlines() if line and not line.startswith("#")]
    assert tuple(commands) == OPENING
    assert "(docs/development.md)" in text and "| stage | module |" not in text


def test_the_readme_is_short_and_user_docs_name_no_issue_or_scenario() -> None:
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 260
    pattern = re.compile(r"#\d+|\bissue \d+|\bscenario \d+", re.IGNORECASE)
    for page in USER_DOCS:
        found = pattern.findall(page.read_text(encoding="utf-8"))
        assert found == [], f"{page.relative_to(ROOT)} names {found}"


def test_every_relative_link_of_the_user_docs_exists() -> None:
    for page in USER_DOCS:
        for target in re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)}: {target}"


#: The line before a ```python block that the docs promise runs as copied.
RUNNABLE = "<!-- runnable -->\n```python\n"


def _runnable_blocks() -> list[tuple[str, str]]:
    blocks = []
    for page in USER_DOCS:
        for part in page.read_text(encoding="utf-8").split(RUNNABLE)[1:]:
            blocks.append((page.name, part[: part.index("\n```")] + "\n"))
    return blocks


@pytest.mark.parametrize(
    "number", range(len(_runnable_blocks())), ids=[name for name, _ in _runnable_blocks()]
)
def test_each_runnable_block_runs_as_copied(number: int, tmp_path: Path) -> None:
    """In a fresh folder holding the samples, as the repository's folder does: the block
    runs to its end in a new interpreter (no DESCOPE_* to lean on)."""
    shutil.copytree(ROOT / "samples", tmp_path / "samples")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DESCOPE_", "BATCHPHONE_"))}
    env["BATCHPHONE_STATE_DIR"] = os.environ["BATCHPHONE_STATE_DIR"]
    done = subprocess.run(
        [sys.executable, "-c", _runnable_blocks()[number][1]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_the_docs_have_runnable_blocks() -> None:
    assert _runnable_blocks()  # a marker typo would silently test nothing
