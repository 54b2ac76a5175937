"""No file PruneScope reads may run code: every `torch.load` in the tree passes `weights_only=True`."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
TREE = ("pruning_core", "app", "pages", "benchmarks")


def _torch_loads_without_weights_only(path: Path) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
            safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                       for k in node.keywords)
            if not safe:
                lines.append(node.lineno)
    return lines


def test_every_torch_load_is_weights_only():
    offenders = {str(p.relative_to(REPO)): lines for root in TREE for p in (REPO / root).rglob("*.py")
                 if (lines := _torch_loads_without_weights_only(p))}
    assert offenders == {}


def test_the_check_sees_an_unsafe_load(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import torch\nx = torch.load('f')\ny = torch.load('f', weights_only=False)\n"
                     "z = torch.load('f', weights_only=True)\n")
    assert _torch_loads_without_weights_only(probe) == [2, 3]
