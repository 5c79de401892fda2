"""Report import cycles among the modules of ``harness/`` and ``plugins/`` (installed as ``harness_plugins``).

Every import statement counts, wherever it is: at module level, inside a function (a deferred import still ties
the two modules together) and under ``if TYPE_CHECKING``. ``from pkg import name`` counts as importing the submodule
``pkg.name`` when there is one, else ``pkg`` itself. The implicit import of a module's parent packages does not
count (every submodule would otherwise form a cycle with a package ``__init__`` that re-exports it).

    python scripts/check_imports.py             # prints each cycle; exit code 1 if there is one
    python scripts/check_imports.py --edges     # also prints every internal import edge

Also reports, as a rule of the layering, any module of ``harness`` that imports ``harness_plugins``.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Source directory -> the top-level package it is installed as (pyproject.toml's package-dir).
PACKAGES = {"harness": ROOT / "harness", "harness_plugins": ROOT / "plugins"}


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the packages."""
    modules: dict[str, Path] = {}
    for package, directory in PACKAGES.items():
        for path in sorted(directory.rglob("*.py")):
            parts = list(path.relative_to(directory).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join([package, *parts])] = path
    return modules


def _base(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names."""
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The internal modules that ``module`` imports (anywhere in its file)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _base(module, path, node)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in known else base)
        for target in targets:
            # `import a.b.c` imports a.b.c; a name outside the packages (torch, ...) is not followed
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != module:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {module: imports_of(module, path, known) for module, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each group of modules that import each other (see :func:`components`)."""
    return [_cycle_through(graph, component) for component in components(graph)]


def components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted: the import circles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(root: str) -> None:  # iterative: no recursion limit on long chains
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(found)


def _cycle_through(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One concrete cycle inside a strongly connected component, from its first module back to it (BFS)."""
    members = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if child not in previous:
                    previous[child] = node
                    nxt.append(child)
        frontier = nxt
    return component


def core_imports_of_plugins(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(core module, plugin module) for every import of ``harness_plugins`` from ``harness``."""
    return sorted((m, t) for m, targets in graph.items() if m.split(".")[0] == "harness"
                  for t in targets if t.split(".")[0] == "harness_plugins")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", action="store_true", help="print every internal import edge")
    args = parser.parse_args(argv)
    graph = import_graph()
    if args.edges:
        for module in sorted(graph):
            for target in sorted(graph[module]):
                print(f"{module} -> {target}")
    found = cycles(graph)
    for cycle in found:
        print("import cycle: " + " -> ".join(cycle))
    layering = core_imports_of_plugins(graph)
    for core, plugin in layering:
        print(f"core module imports a plugin: {core} -> {plugin}")
    edges = sum(len(t) for t in graph.values())
    print(f"{len(graph)} modules, {edges} internal imports: {len(found)} cycle(s), "
          f"{len(layering)} core import(s) of harness_plugins")
    return 1 if found or layering else 0


if __name__ == "__main__":
    sys.exit(main())
