"""The package's import graph has no cycle and data flows one way (ARCHITECTURE: rules of the house).

Every `import` statement is read from the source (module level, inside functions and under `if TYPE_CHECKING:`),
so neither a lazy import nor a type-only one can hide a cycle. `from editdecay.pkg import name` is an edge to
the submodule `pkg.name` when that is a module, else to `pkg` itself (its `__init__`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "editdecay"

# Which top-level packages each may import (ARCHITECTURE.md, "Data flows one way").
ALLOWED = {
    "models": set(),
    "data": set(),
    "editing": {"data", "models"},
    "finetuning": {"data", "models"},
    "evaluation": {"data", "models"},
    "durability": {"data", "models", "editing", "finetuning", "evaluation"},
    "experiments": {"data", "models", "editing", "finetuning", "evaluation", "durability"},
    "reporting": {"evaluation", "experiments"},
    "cli": {"data", "models", "editing", "finetuning", "evaluation", "durability", "experiments", "reporting"},
}
SHARED = {"editdecay", "editdecay.config", "editdecay.storage", "editdecay.locking"}  # leaf helpers anyone uses


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def imports_of(name: str) -> set[str]:
    path = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("editdecay"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("editdecay"):
                continue
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def test_no_import_cycle() -> None:
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(GRAPH[node]):
            if state.get(target) == 1:
                cycle = [*stack[stack.index(target) :], target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name)


def test_data_flows_one_way() -> None:
    wrong = []
    for name, targets in GRAPH.items():
        layer = name.split(".")[1] if name.count(".") >= 1 else None
        if layer not in ALLOWED:
            continue
        for target in targets:
            other = target.split(".")[1] if target.count(".") >= 1 else None
            if target in SHARED or other == layer or other is None:
                continue
            if other not in ALLOWED[layer]:
                wrong.append(f"{name} imports {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_graph_sees_lazy_imports() -> None:
    # cli modules import heavy packages inside their commands: those edges must be in the graph.
    assert any(target.startswith("editdecay.experiments") for target in GRAPH["editdecay.cli.pipeline"])
