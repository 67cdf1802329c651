"""The README's module map names every module of the package, and only modules that exist."""

from __future__ import annotations

import re
from pathlib import Path

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
