"""The package's import graph, function-level imports included: no cycles, and no module below
the entry points (``raydiff.cli``, ``raydiff.bench.*``) imports click (the library reports
progress through callbacks; only the entry points print)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "raydiff"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(raydiff modules imported anywhere in the file, top-level packages imported)."""
    deps, packages = set(), set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if is_pkg else name.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for target in targets:
            packages.add(target.split(".")[0])
            while target and target not in modules:
                target = target.rpartition(".")[0]
            # A package's own submodules and the package itself are not an edge out of it.
            if target and target != name and not name.startswith(target + "."):
                deps.add(target)
    return deps, packages


def test_no_import_cycles_and_no_click_below_the_cli() -> None:
    modules = _modules()
    graph, clicky = {}, []
    for name, path in modules.items():
        graph[name], packages = _imports(name, path, modules)
        if "click" in packages and name != "raydiff.cli" and not name.startswith("raydiff.bench"):
            clicky.append(name)
    assert not clicky, f"click imported by library modules: {clicky}"
    # Tarjan's strongly connected components: any component with more than one module is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"
