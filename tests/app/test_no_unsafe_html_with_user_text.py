"""No user text reaches HTML unescaped: every `unsafe_allow_html=True` call in the dashboard draws a constant, or
an f-string whose every interpolated value is escaped (`escape(...)`) or a formatted number (`{x:.0%}`)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: Names allowed unescaped, with why: each is page text written in the source, never user input.
TRUSTED = {
    "lead": "widgets.intro's lead: every page passes a sentence written in its own source",
    "body": "pages/home.py's page cards: the CARD_TEXT table in that file",
    "CSS": "app/theme.py's style sheet",
}


def _unsafe_values(node: ast.AST) -> list[str]:
    """The interpolated values of an HTML argument that are neither escaped, numbers nor trusted names."""
    if isinstance(node, ast.Constant):
        return []
    if isinstance(node, ast.BinOp):
        return _unsafe_values(node.left) + _unsafe_values(node.right)
    if isinstance(node, ast.Name):
        return [] if node.id in TRUSTED else [node.id]
    if isinstance(node, ast.JoinedStr):
        bad = []
        for part in node.values:
            if isinstance(part, ast.FormattedValue):
                value = part.value
                escaped = isinstance(value, ast.Call) and getattr(value.func, "id", getattr(value.func, "attr", "")) \
                    == "escape"
                number = part.format_spec is not None and any(
                    isinstance(v, ast.Constant) and v.value[-1:] in "%fdge" for v in part.format_spec.values)
                if not (escaped or number or (isinstance(value, ast.Name) and value.id in TRUSTED)):
                    bad.append(ast.unparse(value))
        return bad
    return [ast.unparse(node)]


def unsafe_html_calls(path: Path, root: Path = REPO) -> list[str]:
    """'file:line: value' for each unescaped value drawn with unsafe_allow_html=True in `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and any(k.arg == "unsafe_allow_html" and getattr(k.value, "value", None) is True
                                              for k in node.keywords):
            for value in _unsafe_values(node.args[0]) if node.args else ["<no argument>"]:
                found.append(f"{path.relative_to(root)}:{node.lineno}: {value}")
    return found


def test_no_user_text_reaches_html_unescaped():
    offenders = [line for folder in ("app", "pages") for path in (REPO / folder).rglob("*.py")
                 for line in unsafe_html_calls(path)]
    assert offenders == []


def test_the_check_sees_an_unescaped_value(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("st.markdown(f'<b>{corpus}</b> {escape(name)} {x:.0%}', unsafe_allow_html=True)\n")
    assert [line.split(": ", 1)[1] for line in unsafe_html_calls(probe, tmp_path)] == ["corpus"]
