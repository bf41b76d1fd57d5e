"""The project's import graph has no cycle: no module imports another that imports it back.

The graph is read from the source with `ast` (module-level and function-level imports, relative ones
resolved), so it needs none of the project's dependencies and covers code that only runs later.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("backbones", "nepa_eval")


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """{dotted module name: file} of every module in the project's packages."""
    mods = {}
    for pkg in PACKAGES:
        for f in sorted((root / pkg).rglob("*.py")):
            parts = f.relative_to(root).with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


def _is_type_checking(test: ast.expr) -> bool:
    """`if TYPE_CHECKING:` or `if typing.TYPE_CHECKING:`."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that `name` imports anywhere in its file (a package's __init__ for `from pkg import x`
    when x is not a submodule). Imports under ``if TYPE_CHECKING:`` never run, so they are not edges."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    tree = ast.parse(path.read_text(), str(path))
    type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node.test)
                 for stmt in node.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # `import a.b.c` of a name inside a module: the module
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """{module: the project modules it imports}."""
    modules = project_modules(root)
    return {m: imported_modules(m, f, modules) for m, f in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path a -> ... -> a) per strongly connected component that has one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(graph, comp) for comp in components]


def _cycle_in(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first inside the component)."""
    start = min(comp)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & comp):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle in {comp}")  # a strongly connected component always has one


def format_cycles(cycles: list[list[str]]) -> str:
    return "\n".join(" -> ".join(c) for c in cycles)


def test_cycle_finder_reports_a_cycle_and_passes_a_tree(tmp_path):
    """The checker itself: a two-module cycle through a relative import and a function-level import is found,
    a package __init__ that imports its submodules is not a cycle."""
    pkg = tmp_path / "nepa_eval"
    (pkg / "data").mkdir(parents=True)
    (tmp_path / "backbones").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("from .a import f\nfrom . import b\n")
    (pkg / "data" / "a.py").write_text("import os\nfrom .errors import E\n\ndef f():\n    from nepa_eval.data.b import g\n")
    (pkg / "data" / "b.py").write_text("from nepa_eval.data import errors\n")
    (pkg / "data" / "errors.py").write_text("class E(Exception): ...\n")
    graph = import_graph(tmp_path)
    assert graph["nepa_eval.data"] == {"nepa_eval.data.a", "nepa_eval.data.b"}
    assert graph["nepa_eval.data.a"] == {"nepa_eval.data.errors", "nepa_eval.data.b"}
    assert graph["nepa_eval.data.b"] == {"nepa_eval.data.errors"}
    assert find_cycles(graph) == []
    (pkg / "data" / "errors.py").write_text("def h():\n    from ..data.a import f\n")  # now errors -> a -> errors
    cycles = find_cycles(import_graph(tmp_path))
    assert cycles == [["nepa_eval.data.a", "nepa_eval.data.errors", "nepa_eval.data.a"]]
    # an import for type names only never runs: not an edge
    (pkg / "data" / "errors.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                            "    from ..data.a import f\n")
    assert find_cycles(import_graph(tmp_path)) == []


def test_data_package_is_in_no_cycle():
    """nepa_eval.data and its modules take part in no import cycle (and import nothing outside the package
    except backbones, which never imports nepa_eval)."""
    graph = import_graph()
    data = {m for m in graph if m == "nepa_eval.data" or m.startswith("nepa_eval.data.")}
    assert data, "nepa_eval/data/ not found"
    cycles = [c for c in find_cycles(graph) if set(c) & data]
    assert not cycles, "import cycles through nepa_eval.data:\n" + format_cycles(cycles)
    outside = {t for m in data for t in graph[m] if t not in data}
    assert all(t.startswith("backbones") for t in outside), outside


def test_no_import_cycles():
    """No module of backbones/ or nepa_eval/ imports another that imports it back (at any depth)."""
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles (a -> b: a imports b):\n" + format_cycles(cycles)


@pytest.mark.parametrize("pkg", PACKAGES)
def test_graph_sees_the_packages(pkg):
    """Sanity: the graph covers every module file and records the known edges (so an empty graph cannot pass)."""
    graph = import_graph()
    assert pkg in graph and len([m for m in graph if m.startswith(pkg)]) > 3
    assert "backbones.nepa.model" in graph["backbones.nepa"]  # from .model import ...
