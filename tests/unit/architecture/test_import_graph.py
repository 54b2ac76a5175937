"""The library's import graph: no module imports the command line, and no two modules import each other.

Every `import` statement counts, also those inside functions (a lazy import still ties two modules together);
`from package import name` counts as an import of `package.name` when that is a module. The parent package
that Python runs before a submodule is not an edge of its own: only the modules a file names are.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pruning_core

REPO = Path(__file__).resolve().parents[3]
CORE = Path(pruning_core.__file__).parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def imports_of(path: Path, package: str | None = None) -> set[str]:
    """The modules one file imports (absolute names; relative imports resolved against `package`)."""
    if package is None:
        package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                names.add(full if full.startswith(("pruning_core", "app")) and _is_module(full) else base)
    return names


def _graph(roots: list[Path]) -> dict[str, set[str]]:
    files = [p for root in roots for p in root.rglob("*.py")]
    known = {_module_name(p) for p in files}
    # A self-import (a `__main__` block importing its own module by name) is not a circle between modules.
    return {_module_name(p): {m for m in imports_of(p) if m in known} - {_module_name(p)} for p in files}


def test_nothing_outside_the_command_line_imports_it():
    graph = _graph([CORE, REPO / "app", REPO / "pages"])
    offenders = {module: sorted(m for m in targets if m == "pruning_core.cli" or m.startswith("pruning_core.cli."))
                 for module, targets in graph.items() if not module.startswith("pruning_core.cli")}
    assert not {k: v for k, v in offenders.items() if v}, offenders


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Circles of a directed graph (node -> the nodes it points to), each as [a, b, ..., a]; one per back edge
    met by a depth-first walk, so an empty list means the graph has none."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                found.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def test_the_library_has_no_import_circle():
    assert [" -> ".join(circle) for circle in circles(_graph([CORE]))] == []


def test_the_walker_sees_lazy_imports(tmp_path):
    # A file whose only import sits inside a function still counts (so the circle test cannot miss one).
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from pruning_core.models import loading\n")
    assert "pruning_core.models.loading" in imports_of(source, package="")


def _package(module: str) -> str:
    """The package a module belongs to: the folder (or single module) right below `pruning_core` or `app`."""
    parts = module.split(".")
    return ".".join(parts[:2])


def package_loops(graph: dict[str, set[str]]) -> list[str]:
    """Loops between packages, each as 'a (m imports n) -> b (...) -> a' naming a module edge for every step."""
    edges: dict[str, dict[str, tuple[str, str]]] = {}
    for module, targets in graph.items():
        for target in targets:
            a, b = _package(module), _package(target)
            if a != b:
                edges.setdefault(a, {}).setdefault(b, (module, target))
    return [" -> ".join(f"{a} ({edges[a][b][0]} imports {edges[a][b][1]})" for a, b in zip(circle, circle[1:]))
            for circle in circles({a: set(targets) for a, targets in edges.items()})]


def test_no_loop_between_packages():
    # Lazy imports count: a capability that imports the report renderer while the renderer imports that
    # capability's figures is a loop even when neither import runs at module load.
    assert package_loops(_graph([CORE, REPO / "app"])) == []


def test_the_package_loop_finder_sees_a_loop_through_a_lazy_import():
    graph = {"pruning_core.a.x": {"pruning_core.b.y"}, "pruning_core.b.y": {"pruning_core.a.z"}, "pruning_core.a.z": set()}
    assert package_loops(graph) and "pruning_core.a" in package_loops(graph)[0]


def test_no_core_module_imports_the_dashboard():
    graph = _graph([CORE])
    offenders = {m: sorted(t for t in imports_of_any(m) if t.split(".")[0] in ("app", "pages", "streamlit", "plotly"))
                 for m in graph}
    allowed = {"pruning_core.cli.ui": ["app.launch"]}  # `prunescope ui` starts the dashboard: the one way up
    assert {m: v for m, v in offenders.items() if v and allowed.get(m) != v} == {}


def imports_of_any(module: str) -> set[str]:
    """Every module name a core module imports (also those outside the repo), lazy imports included."""
    path = CORE.parent / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = CORE.parent / module.replace(".", "/") / "__init__.py"
    return imports_of(path)
