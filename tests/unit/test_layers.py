"""The layout's rule, checked: a module imports only its own layer or lower ones, and no
import cycle exists between packages (README, "Code")."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "pytest_madengine"

# lowest first; a module's layer is that of the longest prefix naming it
LAYERS: list[tuple[str, ...]] = [
    ("errors", "literals", "process", "masking"),
    ("context", "models", "gpus", "workspace", "data"),
    ("results", "output"),
    ("executors", "multinode"),
    ("session", "verdict"),
    ("plugins", "plugin", "hookspecs", "cli", "__init__"),
]


def layer_of(module: str) -> int:
    top = module.split(".")[1] if module.count(".") else "__init__"
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module}: not in any layer of tests/unit/test_layers.py")


def modules() -> list[tuple[str, Path]]:
    out = []
    for f in sorted(PKG.rglob("*.py")):
        rel = f.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1] if len(parts) > 1 else parts
        out.append((".".join(parts), f))
    return out


def imports(path: Path) -> list[tuple[str, int]]:
    """Modules imported (absolute, ours), with the line, outside ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text())
    found: list[tuple[str, int]] = []
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pytest_madengine"):
            found.append((node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("pytest_madengine")]
    return found


@pytest.mark.parametrize(("module", "path"), modules(), ids=[m for m, _ in modules()])
def test_no_import_from_a_higher_layer(module: str, path: Path) -> None:
    mine = layer_of(module) if module != "pytest_madengine" else len(LAYERS) - 1
    for target, line in imports(path):
        if target == "pytest_madengine":
            continue
        assert layer_of(target) <= mine, (f"{path.relative_to(PKG.parent)}:{line} imports {target} "
                                          f"(layer {layer_of(target)}) from layer {mine}")


def test_no_import_cycle_between_packages() -> None:
    def unit(module: str) -> str:
        parts = module.split(".")
        return ".".join(parts[:3]) if len(parts) > 2 and parts[1] == "executors" else ".".join(parts[:2])

    graph: dict[str, set[str]] = {}
    for module, path in modules():
        for target, _ in imports(path):
            if unit(target) != unit(module):
                graph.setdefault(unit(module), set()).add(unit(target))
    seen: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if seen.get(nxt) == 1:
                raise AssertionError(f"import cycle: {' -> '.join([*stack[stack.index(nxt):], nxt])}")
            if nxt not in seen:
                visit(nxt, [*stack, nxt])
        seen[node] = 2

    for start in sorted(graph):
        if start not in seen:
            visit(start, [start])
