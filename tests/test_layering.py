"""The package's import structure: no import cycles, and the library never imports the CLI.

Every module under ``src/cpd`` is parsed (not imported) with :mod:`ast`, so imports inside
functions count as much as those at the top of a file: a cycle hidden in a function still
ties the two modules together and can still fail at run time, depending on which is imported
first.

Edges point at the most specific cpd module an import names: ``from cpd.data import datasets``
is an edge to ``cpd.data.datasets`` when that is a module, ``from cpd.data import collate`` one
to the package ``cpd.data`` (its ``__init__``). Importing a submodule also runs its package's
``__init__``, but that implied edge is not added: a package ``__init__`` that re-exports its
submodules would otherwise form a cycle with every one of them. A submodule that imports its
own package's ``__init__`` while that ``__init__`` imports it is still a cycle, and is reported.

Imports under ``if TYPE_CHECKING:`` never run, so they are left out of the cycle check; they
still count for the layering rule.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "cpd"

#: The command line: ``cpd.cli``, the ``cpd.commands`` package and ``python -m cpd``.
CLI_MODULES = ("cpd.cli", "cpd.commands", "cpd.__main__")

#: Import edges ``(importer, imported)`` still left in cycles, left out of the cycle check until
#: the cycle is broken; then the entry goes (``test_known_cycle_edges_still_close_a_cycle`` says when).
KNOWN_CYCLE_EDGES: frozenset[tuple[str, str]] = frozenset()


def module_name(path: Path) -> str:
    """``src/cpd/data/x.py`` -> ``cpd.data.x``; ``src/cpd/data/__init__.py`` -> ``cpd.data``."""
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def find_modules() -> dict[str, Path]:
    """Every cpd module by name."""
    return {module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, type_checking: bool = False) -> Iterator[tuple[ast.AST, bool]]:
    """Every node below ``node``, with whether it sits under ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield stmt, True
                yield from _walk(stmt, True)
            for stmt in child.orelse:
                yield stmt, type_checking
                yield from _walk(stmt, type_checking)
            continue
        yield child, type_checking
        yield from _walk(child, type_checking)


def _resolve(target: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of the dotted ``target`` that is a cpd module."""
    parts = target.split(".")
    while parts:
        name = ".".join(parts)
        if name in modules:
            return name
        parts.pop()
    return None


def imports_of(name: str, modules: dict[str, Path]) -> Iterator[tuple[str, int, bool]]:
    """``(imported cpd module, line, under TYPE_CHECKING)`` for every import in module ``name``."""
    path = modules[name]
    tree = ast.parse(path.read_text(), filename=str(path))
    # the package a relative import starts from: a package's own name, a module's parent
    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node, type_checking in _walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            # ``from pkg import sub`` names the submodule when there is one
            targets = [
                f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in modules else origin
                for alias in node.names
            ]
        for target in targets:
            resolved = _resolve(target, modules) if target.split(".")[0] == PACKAGE else None
            if resolved is not None and resolved != name:
                yield resolved, node.lineno, type_checking


def import_graph(runtime_only: bool) -> dict[str, dict[str, int]]:
    """``{module: {imported module: first line}}`` over all cpd modules."""
    modules = find_modules()
    graph: dict[str, dict[str, int]] = {name: {} for name in modules}
    for name in modules:
        for target, line, type_checking in imports_of(name, modules):
            if runtime_only and type_checking:
                continue
            graph[name].setdefault(target, line)
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
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
                    components.append(sorted(component))
    return components


def cycle_through(start: str, members: set[str], graph: dict[str, dict[str, int]]) -> list[str]:
    """A shortest cycle from ``start`` back to itself inside one component."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child not in members:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"{start} is in no cycle")


def _describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    steps = [f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:], strict=False)]
    return " -> ".join([*steps, cycle[-1]])


def _is_cli(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in CLI_MODULES)


def test_the_parser_sees_every_kind_of_import():
    modules = find_modules()
    # a module-level import, a function-level one and a relative one, from known modules
    assert "cpd" in modules and "cpd.commands" in modules and "cpd.cli" in modules
    graph = import_graph(runtime_only=False)
    assert graph["cpd.cli"], "cpd.cli imports cpd modules"
    assert any(targets for name, targets in graph.items() if name.startswith("cpd.commands."))


def test_no_import_cycles():
    graph = import_graph(runtime_only=True)
    for importer, imported in KNOWN_CYCLE_EDGES:
        graph[importer].pop(imported, None)
    cycles = []
    for component in strongly_connected(graph):
        cycle = cycle_through(component[0], set(component), graph)
        tied = (
            f" (tied together: {', '.join(component)})" if len(component) > len(cycle) - 1 else ""
        )
        cycles.append(_describe(cycle, graph) + tied)
    assert not cycles, "import cycles among cpd modules:\n" + "\n".join(cycles)


def _unit(name: str) -> str:
    """The part of the package a module belongs to: ``cpd.data.manifests.x`` -> ``cpd.data``."""
    return ".".join(name.split(".")[:2])


def test_no_import_cycles_between_the_packages():
    """``cpd.data``, ``cpd.eval``, ``cpd.train``, ... and the top-level modules form layers:
    modules may import each other within one, but no two of them import each other, even
    through different modules."""
    graph = import_graph(runtime_only=True)
    for importer, imported in KNOWN_CYCLE_EDGES:
        graph[importer].pop(imported, None)
    units: dict[str, dict[str, int]] = {_unit(name): {} for name in graph}
    example: dict[tuple[str, str], str] = {}
    for name, targets in graph.items():
        for target, line in targets.items():
            a, b = _unit(name), _unit(target)
            if a != b and (a, b) not in example:
                units[a][b] = line
                example[a, b] = f"{name} (line {line}) imports {target}"
    cycles = []
    for component in strongly_connected(units):
        cycle = cycle_through(component[0], set(component), units)
        steps = [example[a, b] for a, b in zip(cycle, cycle[1:], strict=False)]
        cycles.append(" -> ".join(cycle) + ": " + "; ".join(steps))
    assert not cycles, "import cycles between cpd packages:\n" + "\n".join(cycles)


def test_known_cycle_edges_still_close_a_cycle():
    graph = import_graph(runtime_only=True)
    together = [set(component) for component in strongly_connected(graph)]
    stale = sorted(
        (importer, imported)
        for importer, imported in KNOWN_CYCLE_EDGES
        if imported not in graph.get(importer, {})
        or not any({importer, imported} <= component for component in together)
    )
    assert not stale, f"remove from KNOWN_CYCLE_EDGES, these close no cycle any more: {stale}"


def test_the_library_does_not_import_the_command_line():
    graph = import_graph(runtime_only=False)
    upward = [
        f"{name} (line {line}) imports {target}"
        for name, targets in sorted(graph.items())
        if not _is_cli(name)
        for target, line in sorted(targets.items())
        if _is_cli(target)
    ]
    assert not upward, "library modules importing the command line:\n" + "\n".join(upward)


def test_cycle_detection_reports_the_path():
    graph = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
    components = strongly_connected(graph)
    assert components == [["a", "b", "c"]]
    cycle = cycle_through("a", set(components[0]), graph)
    assert _describe(cycle, graph) == "a (line 1) -> b (line 2) -> c (line 3) -> a"
