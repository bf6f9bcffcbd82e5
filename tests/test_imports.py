"""The package's import graph, read from the source with `ast` (imports at the top of a
module and inside functions alike; those under ``if TYPE_CHECKING:`` never run): the
compile side (`tcspec.spec`, `tcspec.plan`) reaches nothing of the run side, and no
module imports itself through others."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import tcspec

PACKAGE = Path(tcspec.__file__).resolve().parent
COMPILE = ("tcspec.spec", "tcspec.plan")
RUN = ("tcspec.tasks", "tcspec.training", "tcspec.evaluation", "tcspec.features", "tcspec.circuits")
"""What runs the tasks: the stage modules and the libraries only they drive."""


def modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imported(node: ast.AST, package: str, known: dict) -> set[str]:
    """The package's modules an import statement loads: ``from P import name`` loads the
    module P.name when there is one, else P."""

    def owner(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    if isinstance(node, ast.Import):
        found = {owner(a.name) for a in node.names}
    else:
        base = node.module or ""
        if node.level:
            parent = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*parent, base] if base else parent)
        found = {f"{base}.{a.name}" if f"{base}.{a.name}" in known else owner(base)
                 for a in node.names}  # fmt: skip
    return {m for m in found if m is not None}


@functools.cache
def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (anywhere in it); read once."""
    known = modules()
    graph = {}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        todo = [ast.parse(path.read_text())]
        while todo:
            for node in ast.iter_child_nodes(todo.pop()):
                if _type_checking(node):
                    todo += node.orelse  # only the else branch runs
                elif isinstance(node, (ast.Import, ast.ImportFrom)):
                    edges |= _imported(node, package, known)
                else:
                    todo.append(node)
        graph[name] = edges - {name}
    return graph


def reached(graph: dict[str, set[str]], start: str) -> dict[str, str]:
    """Module -> the module that first imports it, for everything ``start`` loads."""
    via, todo = {start: ""}, [start]
    while todo:
        m = todo.pop()
        for n in sorted(graph[m]):
            if n not in via:
                via[n] = m
                todo.append(n)
    return via


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on.discard(component[-1])
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_every_kind_of_import():
    """The graph holds a top-level import, a relative-free `from P import module`, an
    import inside a function, and leaves out one under TYPE_CHECKING."""
    graph = import_graph()
    assert "tcspec.plan.stages" in graph["tcspec.plan.task"]  # top level
    assert "tcspec.tasks.integrity" in graph["tcspec.tasks"]  # from tcspec.tasks import integrity
    assert "tcspec.dictionaries.clt" in graph["tcspec.plan.configs"]  # in a method
    assert "tcspec.plan.resources" not in graph["tcspec.plan.task"]  # TYPE_CHECKING


def test_the_compile_side_imports_nothing_of_the_run_side():
    """Nothing `tcspec.spec` or `tcspec.plan` imports, directly or through other modules,
    is a stage module or a library only the stages drive (the path is in the message)."""
    graph = import_graph()
    found = []
    for start in [m for m in graph if m.startswith(COMPILE)]:
        via = reached(graph, start)
        for m in [m for m in via if m.startswith(RUN)]:
            path = [m]
            while via[path[-1]]:
                path.append(via[path[-1]])
            found.append(" <- ".join(path))
    assert found == []


def test_no_import_cycle():
    """No module of the package imports itself through others."""
    assert cycles(import_graph()) == []
