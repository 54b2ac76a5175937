"""Dependencies run one way: pages -> app -> pruning_core; the core never imports streamlit or plotly."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pruning_core

REPO = Path(__file__).resolve().parents[3]


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_pages_import_only_app_never_the_core():
    for page in (REPO / "pages").glob("*.py"):
        offenders = {m for m in _imported_modules(page) if m.split(".")[0] == "pruning_core"}
        assert not offenders, f"{page.name} imports {offenders}; go through the app.services modules"


def test_core_source_never_mentions_streamlit_or_plotly_imports():
    for path in Path(pruning_core.__file__).parent.rglob("*.py"):
        bad = {m for m in _imported_modules(path) if m.split(".")[0] in ("streamlit", "plotly", "app", "pages")}
        assert not bad or path.name == "ui.py" and path.parent.name == "cli" and bad == {"app.launch"}, \
            f"{path} imports {bad}"


def test_importing_every_core_module_loads_no_ui_library():
    modules = [m.name for m in pkgutil.walk_packages(pruning_core.__path__, "pruning_core.")]
    code = ("import importlib, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "bad = [m for m in ('streamlit', 'plotly') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
