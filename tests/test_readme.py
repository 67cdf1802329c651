"""The README's module map names every module of the package, and only modules that exist."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _map_modules() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("| stage | module |") :]
    table = table[: table.index("\n\n")]
    # the module column only: `| stage | modules | what it does |`
    cells = [line.split("|")[2] for line in table.splitlines()[2:]]
    return [name for cell in cells for name in re.findall(r"`(\w+)`", cell)]


def test_the_module_map_names_each_module_once() -> None:
    modules = {p.stem for p in (ROOT / "batchphone").glob("*.py")} - {"__init__", "__main__"}
    named = _map_modules()
    assert sorted(named) == sorted(modules)


#: The line before a ```python block that the README promises runs as copied.
RUNNABLE = "<!-- runnable -->\n```python\n"


def _runnable_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = []
    for part in readme.split(RUNNABLE)[1:]:
        blocks.append(part[: part.index("\n```")] + "\n")
    return blocks


@pytest.mark.parametrize("number", range(len(_runnable_blocks())))
def test_each_runnable_readme_block_runs_as_copied(number: int, tmp_path: Path) -> None:
    """In a fresh folder holding the samples, as the repository's folder does: the block
    runs to its end in a new interpreter (no DESCOPE_* to lean on)."""
    shutil.copytree(ROOT / "samples", tmp_path / "samples")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DESCOPE_", "BATCHPHONE_"))}
    env["BATCHPHONE_STATE_DIR"] = os.environ["BATCHPHONE_STATE_DIR"]
    done = subprocess.run(
        [sys.executable, "-c", _runnable_blocks()[number]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_the_readme_has_runnable_blocks() -> None:
    assert _runnable_blocks()  # a marker typo would silently test nothing
