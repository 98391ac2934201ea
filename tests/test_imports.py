"""Module hygiene: no import cycle in fedprune/, and plugins import the core only.

Every import statement is read from the source, lazy ones inside functions included (they
still form a cycle when they run); imports under ``if TYPE_CHECKING:`` never run and are left
out.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"fedprune": ROOT / "fedprune", "fedprune_plugins": ROOT / "plugins"}


def _modules() -> dict[str, Path]:
    out = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(name: str, path: Path) -> set[str]:
    """The project modules ``name`` imports (``from a import b``: a.b if a module, else a)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if _type_checking(node):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:  # a submodule, else an attribute of the module ``base``
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def test_there_is_no_import_cycle():
    """Tarjan's strongly connected components: any of more than one module is a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(GRAPH[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            connect(node)
    assert not cycles, f"import cycles: {cycles}"


def test_a_plugin_imports_the_core_only():
    for name, targets in GRAPH.items():
        if name.startswith("fedprune_plugins"):
            others = sorted(t for t in targets if t.startswith("fedprune_plugins"))
            assert not others, f"{name} imports {others}; plugins import the core only"


def test_the_core_never_imports_a_plugin():
    for name, targets in GRAPH.items():
        if name.startswith("fedprune.") or name == "fedprune":
            assert not [t for t in targets if t.startswith("fedprune_plugins")], name


def test_the_graph_sees_lazy_imports():
    assert "fedprune.ops.layers" in GRAPH["fedprune.contracts"]  # imported inside a method
