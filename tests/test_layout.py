"""The house rules of the layout, checked on the source: the import graph of pipeline/, stages/ and trainer/ has no
cycle, no stage imports another stage (nor does the library or a bench import a stage), library files stay under
400 lines and stage modules under 120.

Edges are read with `ast` from every `import` statement, module level and function-local alike (a lazy import
inside a function is still a dependency). `from a.b import c` is an edge to the module `a.b.c` when that module
exists, else to `a.b`. The implicit edge from a submodule to its package's `__init__` is not counted: it is how
Python packages work, not a dependency one wrote. Run this file with `-s` to see the edge count.
"""
from __future__ import annotations

import ast
import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stages", "trainer")
LIBRARY_MAX_LINES = 400
STAGE_MAX_LINES = 120


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files(root: Path = ROOT, packages=PACKAGES) -> dict[str, Path]:
    """Module name -> file, for every .py file of the packages."""
    out = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            if "__pycache__" not in path.parts:
                out[module_name(path, root)] = path
    return out


def imports_of(path: Path, name: str, modules: set[str]) -> set[str]:
    """Modules of `modules` that the file at `path` (module `name`) imports, anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def add(target: str) -> None:
        # the longest prefix of `target` that is one of our modules (a.b.C, a class C of module a.b -> a.b)
        parts = target.split(".")
        for i in range(len(parts), 0, -1):
            candidate = ".".join(parts[:i])
            if candidate in modules:
                found.add(candidate)
                return

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                full = f"{source}.{alias.name}"
                add(full if full in modules else source)
    found.discard(name)
    return found


def import_graph(root: Path = ROOT, packages=PACKAGES) -> dict[str, set[str]]:
    files = source_files(root, packages)
    names = set(files)
    return {name: imports_of(path, name, names) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def stage_modules() -> set[str]:
    from stages import STAGES

    return {f"stages.{s}" for s in STAGES}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_cycle_finder_finds_a_cycle(tmp_path):
    """The checker itself: a two-module cycle through a function-local relative import is found."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n    return a\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    g = import_graph(tmp_path, ("pkg",))
    assert g["pkg.a"] == {"pkg.b"} and g["pkg.b"] == {"pkg.a"} and g["pkg.c"] == {"pkg.a"}
    assert cycles(g) == [["pkg.a", "pkg.b"]]


def test_no_import_cycles(graph):
    found = cycles(graph)
    assert not found, "import cycles (module-level or function-local imports): " + "; ".join(
        " <-> ".join(c) for c in found)


def test_import_edge_count(graph):
    """Records the size of the graph (printed with -s; written to $LAYOUT_REPORT when set)."""
    edges = sorted((a, b) for a, targets in graph.items() for b in targets)
    print(f"\nimport graph of {', '.join(PACKAGES)}: {len(graph)} modules, {len(edges)} import edges")
    if os.environ.get("LAYOUT_REPORT"):
        Path(os.environ["LAYOUT_REPORT"]).write_text(json.dumps(
            {"modules": len(graph), "edges": len(edges), "edge_list": edges}, indent=1) + "\n")
    assert all(b in graph for _, b in edges)
    assert len(edges) > len(graph) // 2  # the parser found the imports (an empty graph would pass the cycle test)


def test_no_stage_imports_another_stage(graph):
    stages = stage_modules()
    bad = [(a, b) for a in sorted(stages) for b in sorted(graph.get(a, ())) if b.startswith("stages")]
    assert not bad, f"stage modules import other stage modules: {bad}; move the shared code into pipeline/ or trainer/"


def test_library_never_imports_stages(graph):
    bad = [(a, b) for a, targets in sorted(graph.items()) if not a.startswith("stages")
           for b in sorted(targets) if b.startswith("stages")]
    assert not bad, f"pipeline/ or trainer/ import stages/: {bad}"


def test_benches_import_no_stage():
    names = set(source_files())
    bad = []
    for path in sorted((ROOT / "bench").glob("*.py")):
        bad += [(path.name, m) for m in sorted(imports_of(path, f"bench.{path.stem}", names)) if m.startswith("stages")]
    assert not bad, f"benches import stage modules: {bad}; import the pipeline/ function instead"


def test_file_sizes():
    over = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            limit = STAGE_MAX_LINES if pkg == "stages" else LIBRARY_MAX_LINES
            n = len(path.read_text(encoding="utf-8").splitlines())
            if n > limit:
                over.append(f"{path.relative_to(ROOT).as_posix()}: {n} lines > {limit}")
    assert not over, "files over their size limit (split them by job): " + "; ".join(over)
