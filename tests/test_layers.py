"""The package's shape: imports only point down, there is no cycle, and nothing grows too long.

Built on the AST of every module, so an import inside a function or under ``TYPE_CHECKING``
counts as much as one at the top: a function-level import is how a cycle hides.

The layers, from the bottom (docs/development.md draws them): the leaves, then ``files/`` and
``rows/``, then ``remote/`` and ``emulator/``, then ``modes/``, then ``api`` and ``render``,
then the package root, then ``ui/``, then ``cli``, then ``__main__`` and ``docs``. A module may
import its own folder or any lower layer; a folder beside it (the same layer) is sideways.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "batchphone"

#: Each group (a folder of the package, or one module at its top) and its layer.
LAYERS: dict[str, int] = {
    "leaves": 0,
    "files": 1,
    "rows": 1,
    "remote": 2,
    "emulator": 2,
    "modes": 3,
    "api": 4,
    "render": 4,
    "batchphone": 5,
    "ui": 6,
    "cli": 7,
    "__main__": 8,
    "docs": 8,
}
LEAVES = {"errors", "models", "cells", "config", "options", "logs", "progress", "version"}

#: How long a function or a class may grow, in lines (decorators and docstrings included).
MAX_FUNCTION_LINES = 60
MAX_CLASS_LINES = 150


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ["batchphone", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _group(module: str) -> str:
    parts = module.split(".")[1:]
    if not parts:
        return "batchphone"
    if parts[0] in LEAVES:
        return "leaves"
    return parts[0]


def _imports(module: str, path: Path) -> set[str]:
    """Every module of the package that `module` imports, anywhere in its text."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            # `from X import y` imports the module X.y when there is one, else X itself
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                for alias in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in MODULES:  # `import batchphone.files.reader.x` -> module
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


@functools.cache
def _graph() -> dict[str, set[str]]:
    """Each module's imports (parsed when a test first asks: not in every worker's collection)."""
    return {module: _imports(module, path) for module, path in MODULES.items()}


def _wrong_way() -> list[str]:
    wrong = []
    for module, targets in _graph().items():
        own = _group(module)
        for target in sorted(targets):
            theirs = _group(target)
            if theirs == own or LAYERS[theirs] < LAYERS[own]:
                continue
            way = "up" if LAYERS[theirs] > LAYERS[own] else "sideways"
            wrong.append(f"{module} -> {target} ({way})")
    return wrong


def _cycles() -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in _graph()[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(_graph()):
        if node not in index:
            visit(node)
    return components


def test_every_module_has_a_layer() -> None:
    assert {_group(module) for module in MODULES} <= set(LAYERS)


def test_imports_only_point_down() -> None:
    assert _wrong_way() == []


def test_there_is_no_import_cycle() -> None:
    assert _cycles() == []


def test_the_checks_see_an_import_inside_a_function(tmp_path: Path) -> None:
    # the test of the tests: a function-level import back up is found
    source = "def f():\n    from batchphone.modes import runner\n"
    (tmp_path / "probe.py").write_text(source)
    found = _imports("batchphone.files.probe", tmp_path / "probe.py")
    assert found == {"batchphone.modes.runner"}
    _graph()["batchphone.files.probe"] = found
    try:
        assert _wrong_way() == ["batchphone.files.probe -> batchphone.modes.runner (up)"]
    finally:
        del _graph()["batchphone.files.probe"]


def _too_long() -> list[str]:
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                limit = MAX_FUNCTION_LINES
            elif isinstance(node, ast.ClassDef):
                limit = MAX_CLASS_LINES
            else:
                continue
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            lines = (node.end_lineno or node.lineno) - first + 1
            if lines > limit:
                long.append(f"{module}:{node.lineno} {node.name} ({lines} lines > {limit})")
    return long


def test_no_function_or_class_is_too_long() -> None:
    assert _too_long() == []


@pytest.mark.parametrize("group", sorted(LAYERS))
def test_each_layer_has_modules(group: str) -> None:
    assert any(_group(module) == group for module in MODULES)
