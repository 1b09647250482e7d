"""The package's structure: imports run one way, no cycles, small modules and functions.

Layers, highest first (STYLE.md): ``cli -> engine -> {index, report} -> models -> data -> config
-> utils -> errors``. A module may import its own layer and any lower one, never a higher one;
``index`` and ``report`` sit side by side and do not import each other. Imports are read from the
source with :mod:`ast` (including imports inside functions), so a lazy import cannot hide a
violation.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "siamese_marrow"

#: layer of each top-level module or sub-package; larger = higher
RANK = {
    "errors": 0,
    "utils": 1,
    "config": 2,
    "data": 3,
    "models": 4,
    "index": 5,
    "report": 5,
    "engine": 6,
    "api": 7,
    "cli": 8,
}

#: module-size limits from issue 10 (data tables excepted)
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def dotted(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "siamese_marrow":
        return None
    if len(parts) == 1:
        return "api"  # the package top re-exports the public API
    return parts[1]


def imported(path: Path, name: str | None = None) -> set[str]:
    """Fully qualified siamese_marrow modules imported by ``path`` (relative imports resolved);
    ``name`` is the file's dotted module name (default: from its place in the package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    here = (name or dotted(path)).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("siamese_marrow"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("siamese_marrow"):
                continue
            if node.module is None:  # from . import x: x may be a module
                out.update(f"{mod}.{a.name}" for a in node.names)
            else:
                out.add(mod)
    return out


def test_every_module_has_a_layer() -> None:
    unknown = [dotted(p) for p in modules() if layer_of(dotted(p)) not in RANK]
    assert not unknown, f"modules outside the known layers: {unknown}; add them to RANK"


def test_no_module_imports_a_higher_layer() -> None:
    bad = []
    for path in modules():
        mine = layer_of(dotted(path))
        for target in imported(path):
            theirs = layer_of(target)
            if theirs is None or theirs == mine:
                continue
            if RANK[theirs] >= RANK[mine]:
                bad.append(f"{dotted(path)} imports {target} ({mine} -> {theirs})")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def _graph() -> dict[str, set[str]]:
    names = {dotted(p): p for p in modules()}
    graph = {}
    for name, path in names.items():
        deps = set()
        for target in imported(path):
            # "from .x import y" may name a module x.y or an attribute y of x
            while target and target not in names:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                deps.add(target)
        graph[name] = deps
    return graph


def test_no_import_cycles() -> None:
    """No cycle among modules (a package's ``__init__`` re-exporting its children excepted)."""
    graph = _graph()
    for name in graph:  # drop edges from a package __init__ into its own children
        graph[name] = {d for d in graph[name] if not d.startswith(name + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph[n]):
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d) :] + [d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    """The layering check is not vacuous: a models module importing engine and cli is caught,
    relative and absolute, at top level and inside a function."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from ..engine import train\n"
        "def f():\n    from siamese_marrow.cli import main\n"
        "from . import heads\n"
    )
    got = imported(probe, "siamese_marrow.models.probe")
    assert got == {"siamese_marrow.engine", "siamese_marrow.cli", "siamese_marrow.models.heads"}
    higher = {t for t in got if RANK[layer_of(t)] > RANK["models"]}
    assert higher == {"siamese_marrow.engine", "siamese_marrow.cli"}


def _long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            n = node.end_lineno - node.lineno + 1
            if n > MAX_FUNCTION_LINES:
                out.append(f"{dotted(path)}.{node.name}: {n} lines")
    return out


@pytest.mark.parametrize("path", modules(), ids=lambda p: dotted(p))
def test_modules_and_functions_are_small(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{dotted(path)} has {lines} lines (> {MAX_MODULE_LINES})"
    assert not _long_functions(path)
